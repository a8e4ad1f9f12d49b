//! brokerbench in CI, as a pipeline uses it: thresholds that pass or fail a
//! run, on real brokers with the real binary.

mod util;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

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

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `brokerbench run SCENARIO ARGS --out DIR/results`.
fn run(scenario: &Path, args: &[&str], dir: &Path) -> Output {
    util::brokerbench()
        .arg("run")
        .arg(scenario)
        .args(args)
        .arg("--out")
        .arg(dir.join("results"))
        .output()
        .unwrap()
}

/// The results file whose path the run printed (`results: PATH`).
fn results_path(output: &Output) -> PathBuf {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&output.stdout).lines())
        .find_map(|l| l.strip_prefix("results: ").map(PathBuf::from))
        .expect("results path printed")
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
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
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(dir.path(), "gate.toml", WITH_THRESHOLDS);
    let healthy = run(&scenario, &[], dir.path());
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
duration = "8s"
warmup = "1s"
keys = 20

[[consumers]]
group = "billing"
concurrency = 1

# A consumer that falls behind holds back new deliveries at once.
[jetstream]
max_ack_pending = 10
"#;

fn compare(baseline: &Path, current: &Path, dir: &Path) -> (Output, Value) {
    let out = dir.join("comparison.json");
    let output = util::brokerbench()
        .arg("compare")
        .arg(baseline)
        .arg(current)
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
