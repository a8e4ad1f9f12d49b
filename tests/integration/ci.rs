//! brokerbench in CI, as a pipeline uses it: thresholds that pass or fail a
//! run, on real brokers with the real binary.

use crate::util;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use util::read_json as read;

/// A short run with thresholds a healthy broker on this machine keeps.
const WITH_THRESHOLDS: &str = r#"
name = "gate"
description = "a short run with thresholds"
brokers = ["jetstream"]

[load]
rate = 200
duration = "2s"
warmup = "500ms"
keys = 20

[[consumers]]
group = "billing"

[thresholds]
end_to_end_p99 = "5s"
publish_p99 = "5s"
rate_ratio = 0.9
lost = 0
duplicates = 0
"#;

/// One real run at a time: two at once on a 2-core machine would each
/// measure the other, and `compare` would rightly see the difference.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `brokerbench run SCENARIO ARGS --out DIR/results`.
fn run(scenario: &Path, args: &[&str], dir: &Path) -> Output {
    util::run_command(args, dir).arg(scenario).output().unwrap()
}

/// The results file whose path the run printed (`results: PATH`).
fn results_path(output: &Output) -> PathBuf {
    let said = String::from_utf8_lossy(&output.stderr) + String::from_utf8_lossy(&output.stdout);
    util::results_path(&said)
}

fn thresholds(results: &Value) -> Vec<&Value> {
    results["brokers"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "threshold")
        .collect()
}

#[test]
fn thresholds_pass_a_healthy_run_and_fail_it_when_set_below_the_measured_value() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(dir.path(), "gate.toml", WITH_THRESHOLDS);
    // As in a GitHub job: the Markdown report goes to the job summary.
    let summary = dir.path().join("summary.md");
    let healthy = util::run_command(&[], dir.path())
        .arg(&scenario)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&healthy.stdout);
    assert_eq!(healthy.status.code(), Some(0), "{said}");
    let results = read(&results_path(&healthy));
    util::validate_results(&results);
    let checks = thresholds(&results);
    assert_eq!(checks.len(), 5, "{checks:?}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:?}");
    let p99 = checks
        .iter()
        .find(|c| c["metric"] == "end_to_end_p99")
        .unwrap()["value"]
        .as_u64()
        .unwrap();
    assert!(p99 > 0);
    let markdown = std::fs::read_to_string(&summary).unwrap();
    assert!(
        markdown.starts_with("## brokerbench: `gate` passed"),
        "{markdown}"
    );
    assert!(markdown.contains("Thresholds: 5 of 5 held."), "{markdown}");

    // The same scenario with one limit below anything a real broker can do.
    let failing = run(
        &scenario,
        &["--threshold", "end_to_end_p99=1us"],
        dir.path(),
    );
    let said = String::from_utf8_lossy(&failing.stdout);
    assert_eq!(failing.status.code(), Some(1), "{said}");
    assert!(
        said.contains("NO: end_to_end_p99 <= 1µs (billing): "),
        "the table names the threshold: {said}"
    );
    let results = read(&results_path(&failing));
    let failed: Vec<&Value> = thresholds(&results)
        .into_iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["metric"], "end_to_end_p99");
    assert_eq!(failed[0]["limit"], 1);
    assert!(failed[0]["value"].as_u64().unwrap() > 1);
}

/// Long enough for the test on per-second values (at least 5 steady seconds).
const STEADY: &str = r#"
name = "steady"
description = "compare's runs"
brokers = ["jetstream"]

[load]
rate = 100
duration = "10s"
warmup = "1s"
keys = 20

[[consumers]]
group = "billing"
concurrency = 1

# A consumer that falls behind holds back new deliveries at once.
[jetstream]
max_ack_pending = 10
"#;

/// `brokerbench compare BASELINE CURRENT` as JSON. A latency must move by
/// 5 ms to be a regression: on a shared 2-core CI machine two runs of
/// STEADY differed by 1.3 ms at p99.9 (1.5 ms against 2.8 ms, measured in a
/// clean-clone run), over the 1 ms default; the slower consumer below adds
/// seconds.
fn compare(baseline: &Path, current: &Path, dir: &Path) -> (Output, Value) {
    let out = dir.join("comparison.json");
    let output = util::brokerbench()
        .arg("compare")
        .arg(baseline)
        .arg(current)
        .args(["--min-latency-change", "5ms"])
        .args(["--format", "json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let json = std::fs::read_to_string(&out)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(Value::Null);
    (output, json)
}

#[test]
fn compare_passes_a_rerun_and_fails_a_slower_consumer() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(dir.path(), "steady.toml", STEADY);
    let run_once = |extra: &[&str]| {
        let out = run(&scenario, extra, dir.path());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        results_path(&out)
    };
    let baseline = run_once(&[]);
    let again = run_once(&[]);
    let (same, json) = compare(&baseline, &again, dir.path());
    assert_eq!(
        same.status.code(),
        Some(0),
        "the same scenario twice: {json:#}\n{}",
        String::from_utf8_lossy(&same.stderr)
    );
    assert!(json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["p_value"].is_number()));

    // The consumer now takes 15 ms per message, one at a time: it handles
    // 66 msg/s of the 100 sent, so deliveries slow down and wait longer.
    let slower_text = STEADY.replace(
        "concurrency = 1",
        "concurrency = 1\nprocessing_time = \"15ms\"",
    );
    let slower_scenario = write(dir.path(), "slower.toml", &slower_text);
    let out = run(&slower_scenario, &[], dir.path());
    let slower = results_path(&out);
    let (regressed, json) = compare(&baseline, &slower, dir.path());
    assert_eq!(regressed.status.code(), Some(1), "{json:#}");
    let e2e = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == "end_to_end_p99")
        .unwrap();
    assert_eq!(e2e["verdict"], "regression", "{e2e}");

    // Another scenario is refused, with the reason.
    let other = write(
        dir.path(),
        "other.toml",
        &STEADY.replace("rate = 100", "rate = 150"),
    );
    let out = run(&other, &[], dir.path());
    let (refused, _) = compare(&baseline, &results_path(&out), dir.path());
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("cannot compare: the scenarios differ (load)"),
        "{said}"
    );

    // Every report format from real results.
    for format in ["markdown", "junit", "bmf"] {
        let out = util::brokerbench()
            .args(["report", "--format", format])
            .arg(&baseline)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{format}");
        assert!(!out.stdout.is_empty(), "{format}");
    }
    for format in ["hlog", "github-action-benchmark"] {
        let to = dir.path().join(format);
        let out = util::brokerbench()
            .args(["report", "--format", format, "--out"])
            .arg(&to)
            .arg(baseline.parent().unwrap())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{format}");
        assert!(std::fs::read_dir(&to).unwrap().count() >= 2, "{format}");
    }
    let out = util::brokerbench()
        .args(["report", "--format", "junit"])
        .arg(dir.path().join("steady.toml"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a scenario is not a results file"
    );
}

/// Two brokers and a pause, so that the charts have two lines and a shaded fault.
const CHARTED: &str = r#"
name = "charted"
description = "a short run for the HTML report"
brokers = ["rabbitmq", "jetstream"]

[load]
rate = 200
duration = "4s"
warmup = "1s"
keys = 20

[[consumers]]
group = "billing"
[[consumers]]
group = "risk"

[[faults]]
at = "1s"
action = "pause"
duration = "500ms"
"#;

/// Headless Chromium with every host name unresolvable: a page that needed
/// the network would fail to load a part, and say so on the console.
fn chromium(args: &[&str], page: &Path) -> Output {
    let program = which_chromium();
    std::process::Command::new(program)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap()
}

fn which_chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect(
            "chromium is not installed: run scripts/install-brokers --test-tools (make test does)",
        )
}

#[test]
fn the_html_report_opens_offline_with_every_chart_drawn_from_the_results() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(dir.path(), "charted.toml", CHARTED);
    let out = run(&scenario, &[], dir.path());
    let results_file = results_path(&out);
    let results = read(&results_file);
    let page = dir.path().join("report.html");
    let made = util::brokerbench()
        .args(["report", "--format", "html", "--out"])
        .arg(&page)
        .arg(&results_file)
        .output()
        .unwrap();
    assert_eq!(
        made.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    for fetch in ["src=", "href=", "url(", "<script", "@import"] {
        assert!(!html.contains(fetch), "the page fetches something: {fetch}");
    }

    let shown = chromium(&["--dump-dom"], &page);
    assert!(shown.status.success());
    let dom = String::from_utf8_lossy(&shown.stdout);
    let log = String::from_utf8_lossy(&shown.stderr);
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("net::ERR"))
        .collect();
    assert!(complaints.is_empty(), "console: {complaints:?}");

    // Every chart: an SVG with at least one drawn line of several points.
    let charts: Vec<&str> = dom.split("<figure class=\"chart\"").skip(1).collect();
    let names: Vec<&str> = charts
        .iter()
        .map(|c| c.split('"').nth(1).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "spectrum-publish",
            "spectrum-end_to_end-billing",
            "spectrum-end_to_end-risk",
            "rate-rabbitmq",
            "p99-rabbitmq",
            "rate-jetstream",
            "p99-jetstream"
        ]
    );
    for (name, chart) in names.iter().zip(&charts) {
        let chart = chart.split("</figure>").next().unwrap();
        assert!(chart.contains("<svg"), "{name}");
        let lines = chart
            .split("<polyline")
            .skip(1)
            .filter(|l| {
                let points = l
                    .split("points=\"")
                    .nth(1)
                    .unwrap_or("")
                    .split('"')
                    .next()
                    .unwrap();
                // Grid lines and legend marks have 2 points; data has more.
                points.split_whitespace().count() >= 4
            })
            .count();
        let expected: usize = chart
            .split("data-lines=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            expected >= 2 && lines >= expected,
            "{name}: {lines} drawn lines of {expected}"
        );
        if name.starts_with("spectrum") {
            assert!(
                chart.contains("data-lines=\"2\""),
                "{name}: a line per broker"
            );
        } else {
            assert!(
                chart.contains("data-faults=\"1\""),
                "{name}: the pause is shaded"
            );
        }
    }

    // The summary's figures are results.json's.
    for b in results["brokers"].as_array().unwrap() {
        let broker = b["broker"].as_str().unwrap();
        let row = dom
            .split(&format!("<tr data-broker=\"{broker}\">"))
            .nth(1)
            .unwrap()
            .split("</tr>")
            .next()
            .unwrap();
        let cell = |field: &str| {
            row.split(&format!("data-field=\"{field}\" data-value=\""))
                .nth(1)
                .unwrap_or_else(|| panic!("{broker}: no {field}"))
                .split('"')
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        let p = &b["latency_us"]["publish"];
        assert_eq!(cell("latency_us.publish.p50"), p["p50"].as_f64().unwrap());
        assert_eq!(cell("latency_us.publish.p99"), p["p99"].as_f64().unwrap());
        assert_eq!(cell("latency_us.publish.p999"), p["p999"].as_f64().unwrap());
        assert_eq!(
            cell("publish.rate_per_s"),
            b["publish"]["rate_per_s"].as_f64().unwrap()
        );
        assert_eq!(
            cell("publish.confirmed"),
            b["publish"]["confirmed"].as_f64().unwrap()
        );
    }

    // And it renders: a screenshot with charts in it, not a blank page.
    let shot = dir.path().join("report.png");
    let taken = chromium(
        &[
            "--window-size=1280,3000",
            &format!("--screenshot={}", shot.display()),
        ],
        &page,
    );
    assert!(taken.status.success());
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let bytes = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> =
        pixels[..info.buffer_size()].chunks(bytes).collect();
    let white = pixels[..info.buffer_size()]
        .chunks(bytes)
        .filter(|p| p.iter().take(3).all(|&c| c > 245))
        .count();
    let total = info.buffer_size() / bytes;
    assert!(colours.len() > 50, "{} colours", colours.len());
    assert!(white < total * 95 / 100, "{white} of {total} pixels white");
}

#[test]
fn the_github_actions_example_parses_and_its_commands_are_ours() {
    use clap::Parser;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/ci/github-actions.yml")).unwrap();
    let workflow: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let steps = workflow["jobs"]["bench"]["steps"].as_sequence().unwrap();
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    let uses: Vec<&str> = steps.iter().filter_map(|s| s["uses"].as_str()).collect();
    assert!(uses
        .iter()
        .any(|u| u.starts_with("actions/upload-artifact@")));
    assert!(runs.iter().any(|r| r.contains("scripts/install-brokers")));
    // Every brokerbench command line of the workflow is one our CLI takes.
    let mut commands = 0;
    for line in runs.iter().flat_map(|r| r.lines()) {
        let Some(at) = line.find("./target/release/brokerbench ") else {
            continue;
        };
        let words: Vec<&str> = line[at..]
            .split_whitespace()
            // Up to a redirection or the next command.
            .take_while(|w| !matches!(*w, ">" | ">>" | "|" | "&&" | ";") && !w.starts_with("2>"))
            .collect();
        if let Err(e) = brokerbench::cli::Cli::try_parse_from(&words) {
            panic!("{line}: {e}");
        }
        commands += 1;
    }
    assert!(commands >= 4, "{commands} brokerbench commands");
    // The scenario it runs is valid, and has thresholds.
    let plan = brokerbench::scenario::Plan::load(
        &root.join("examples/ci/ci.toml"),
        &brokerbench::scenario::Overrides::default(),
    )
    .unwrap();
    assert!(!plan.thresholds.is_empty());
}

/// `GET /metrics` over a plain TCP connection.
fn scrape(addr: &str) -> String {
    let response = util::http_get(addr, "/metrics");
    let status = response.lines().next().unwrap_or_default();
    assert!(status.contains(" 200 "), "{response}");
    response
}

/// The value of the sample `name{labels}` in an exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn metrics_are_served_during_a_run_and_rise() {
    let _serial = one_at_a_time();
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(
        dir.path(),
        "live.toml",
        &STEADY.replace("duration = \"10s\"", "duration = \"5s\""),
    );
    let mut child = util::run_command(&["--metrics-addr", "127.0.0.1:0"], dir.path())
        .arg(&scenario)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .find_map(|l| {
            l.unwrap()
                .strip_prefix("metrics: http://")
                .map(|rest| rest.trim_end_matches("/metrics").to_string())
        })
        .expect("the metrics address is printed");
    let published = "brokerbench_published_total{broker=\"jetstream\"}";
    // Until the load is under way (the broker starts first), then a bit later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let first = loop {
        let text = scrape(&addr);
        if text.contains(published) && sample(&text, published) > 0.0 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no publish counted: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let second = scrape(&addr);
    let delivered = "brokerbench_delivered_total{broker=\"jetstream\",group=\"billing\"}";
    assert!(
        sample(&second, published) > sample(&first, published) && sample(&first, published) > 0.0
    );
    assert!(sample(&second, delivered) > sample(&first, delivered));
    let ok = "event_processed_total{type=\"events.order.created.v1\",status=\"ok\",broker=\"jetstream\",group=\"billing\"}";
    assert!(sample(&second, ok) > 0.0);
    assert!(second.contains("# TYPE brokerbench_publish_latency_seconds histogram"));
    let count =
        "brokerbench_end_to_end_latency_seconds_count{broker=\"jetstream\",group=\"billing\"}";
    assert!(sample(&second, count) > 0.0);
    assert!(second.contains("brokerbench_end_to_end_latency_seconds_bucket{le=\"0.0001\",broker=\"jetstream\",group=\"billing\"}")
        || second.contains("brokerbench_end_to_end_latency_seconds_bucket{broker=\"jetstream\",group=\"billing\",le=\"0.0001\"}"),
        "{second}");
    for _ in lines.by_ref() {}
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
