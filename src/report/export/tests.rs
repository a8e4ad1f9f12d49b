//! Every exporter on results measured by the engine (in-memory brokers),
//! each read back by a reader of its format.

use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde_json::Value;

use super::*;
use crate::run::memory::Knobs;
use crate::run::tests::{knobs, plan, run, With};

/// Two brokers, a second of load, 5 ms of delay: latencies in every second.
async fn measured() -> Results {
    let plan = plan("[thresholds]\nend_to_end_p99 = \"1h\"\nlost = 0\n").with(|p| {
        p.brokers = vec!["rabbitmq".parse().unwrap(), "jetstream".parse().unwrap()];
        p.load.duration = Duration::from_millis(2500);
        p.load.warmup = Duration::from_millis(500);
    });
    let (outcome, _) = run(&plan, knobs(|k| k.delay = Duration::from_millis(5))).await;
    outcome.results
}

fn export(format: Format, runs: &[Results]) -> Vec<Document> {
    exporter(format).export(runs).unwrap()
}

#[tokio::test]
async fn interval_logs_read_back_to_the_percentiles_of_results_json() {
    let results = measured().await;
    let documents = export(Format::Hlog, std::slice::from_ref(&results));
    // Per broker: publish, and end to end for groups a and b.
    assert_eq!(documents.len(), 6);
    for b in &results.brokers {
        for (metric, summary) in [
            ("publish".to_string(), &b.latency_us.publish),
            ("end_to_end-a".to_string(), &b.latency_us.end_to_end["a"]),
        ] {
            let name = format!("memory-{}-{metric}.hlog", b.broker);
            let log = documents
                .iter()
                .find(|d| d.file_name == name)
                .unwrap_or_else(|| panic!("no {name}"));
            let text = String::from_utf8_lossy(&log.content);
            assert!(
                text.starts_with("#[Histogram log format version 1.2]\n"),
                "{text}"
            );
            let mut merged = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
            let mut intervals = 0;
            for entry in IntervalLogIterator::new(&log.content) {
                if let LogEntry::Interval(h) = entry.expect("a well-formed log") {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(h.encoded_histogram())
                        .unwrap();
                    let h: Histogram<u64> = Deserializer::new()
                        .deserialize(&mut bytes.as_slice())
                        .unwrap();
                    merged.add(&h).unwrap();
                    intervals += 1;
                }
            }
            assert!(intervals >= 2, "{name}: {intervals} intervals");
            assert_eq!(merged.len(), summary.count, "{name}");
            assert_eq!(merged.value_at_quantile(0.5), summary.p50, "{name}");
            assert_eq!(merged.value_at_quantile(0.99), summary.p99, "{name}");
            assert_eq!(merged.value_at_quantile(0.999), summary.p999, "{name}");
            assert_eq!(merged.max(), summary.max, "{name}");
        }
    }
}

#[tokio::test]
async fn junit_has_a_testcase_per_check_and_a_failure_per_failed_one() {
    use quick_xml::events::Event;
    let mut results = measured().await;
    // One failed threshold, as a tight limit leaves it.
    let check = results.brokers[1]
        .checks
        .iter_mut()
        .find(|c| c.check == crate::results::CheckKind::Threshold)
        .unwrap();
    check.passed = false;
    let documents = export(Format::Junit, std::slice::from_ref(&results));
    let xml = String::from_utf8(documents[0].content.clone()).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut suites, mut cases, mut failures) = (0, 0, 0);
    let mut root_failures = String::new();
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                b"testsuites" => {
                    root_failures = e
                        .try_get_attribute("failures")
                        .unwrap()
                        .unwrap()
                        .unescape_value()
                        .unwrap()
                        .to_string();
                }
                b"testsuite" => suites += 1,
                b"testcase" => cases += 1,
                b"failure" => failures += 1,
                _ => {}
            },
            _ => {}
        }
    }
    let checks: usize = results.brokers.iter().map(|b| b.checks.len()).sum();
    // A suite per broker, and one for the run with its "complete" case.
    assert_eq!(suites, 3);
    assert_eq!(cases, checks + 1);
    assert_eq!(failures, 1);
    assert_eq!(root_failures, "1");
    assert!(xml.contains("end_to_end_p99 &lt;= 3600s (a)"), "{xml}");
}

#[tokio::test]
async fn benchmark_files_have_the_documented_fields() {
    let results = measured().await;
    let documents = export(
        Format::GithubActionBenchmark,
        std::slice::from_ref(&results),
    );
    let names: Vec<&str> = documents.iter().map(|d| d.file_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "benchmark-smaller-is-better.json",
            "benchmark-bigger-is-better.json"
        ]
    );
    for d in &documents {
        let entries: Vec<Value> = serde_json::from_slice(&d.content).unwrap();
        assert!(!entries.is_empty());
        for e in &entries {
            // github-action-benchmark's custom tools: name, unit, value
            // required; range and extra optional strings.
            let fields: Vec<&String> = e.as_object().unwrap().keys().collect();
            assert!(e["name"].is_string() && e["unit"].is_string() && e["value"].is_number());
            assert!(
                fields
                    .iter()
                    .all(|f| ["name", "unit", "value", "range", "extra"].contains(&f.as_str())),
                "{e}"
            );
        }
    }
    let smaller: Vec<Value> = serde_json::from_slice(&documents[0].content).unwrap();
    let p99 = smaller
        .iter()
        .find(|e| e["name"] == "memory/rabbitmq/a/end_to_end_p99")
        .unwrap();
    assert_eq!(
        p99["value"],
        results.brokers[0].latency_us.end_to_end["a"].p99 as f64
    );

    let bmf: Value = serde_json::from_slice(&export(Format::Bmf, &[results])[0].content).unwrap();
    for (bench, measures) in bmf.as_object().unwrap() {
        assert!(bench.starts_with("memory/"));
        for (measure, m) in measures.as_object().unwrap() {
            assert!(m["value"].is_number(), "{bench} {measure}");
            if let (Some(lo), Some(hi)) = (m["lower_value"].as_f64(), m["upper_value"].as_f64()) {
                assert!(lo <= hi, "{bench} {measure}");
            }
        }
    }
}

#[tokio::test]
async fn markdown_stays_under_its_budget_however_many_groups() {
    let one = measured().await;
    let text = markdown(&one);
    assert!(text.contains("## brokerbench: `memory` passed"), "{text}");
    assert!(text.contains("| rabbitmq "), "{text}");
    assert!(text.contains("Thresholds: 8 of 8 held."), "{text}");
    // Many brokers' worth of groups: the groups table is cut, and says so.
    let mut big = one.clone();
    for b in &mut big.brokers {
        let group = b.groups[0].clone();
        b.groups = (0..5_000)
            .map(|i| crate::results::GroupResult {
                group: format!("group-with-a-long-name-{i}"),
                ..group.clone()
            })
            .collect();
    }
    let exporter = markdown::Markdown::default();
    let text = exporter.render(&[big.clone(), big]);
    assert!(text.len() <= exporter.budget, "{} bytes", text.len());
    assert!(text.len() <= markdown::GITHUB_SUMMARY_LIMIT);
    assert!(
        text.contains("more group row(s) are in results.json"),
        "{}",
        &text[..2000]
    );
}

#[tokio::test]
async fn terminal_tables_fit_80_and_120_columns() {
    use crate::report::table::{self, Layout};
    let mut results = measured().await;
    // A failed broker, whose reasons are long.
    results.brokers[1].groups[0].account.lost = 3;
    for check in &mut results.brokers[1].checks {
        if check.check == crate::results::CheckKind::NoneLost && check.group.as_deref() == Some("a")
        {
            check.passed = false;
            check.value = Some(3.0);
        }
    }
    for width in [80u16, 120] {
        let layout = Layout::for_width(Some(width));
        let rows = results.brokers.len();
        for (name, mut t, rows) in [
            ("summary", table::summary(&results, layout), rows),
            ("groups", table::groups(&results, layout), rows * 2),
        ] {
            t.set_width(width);
            let text = t.to_string();
            let widest = text.lines().map(|l| l.chars().count()).max().unwrap();
            assert!(
                widest <= width as usize,
                "{name} at {width}: {widest}\n{text}"
            );
            // Readable: every header word whole on its line, no row taller
            // than three lines (borders: top, header rule, bottom, header line).
            let lines = text.lines().count();
            assert!(
                lines <= 4 + 2 + 3 * rows,
                "{name} at {width}: {lines} lines\n{text}"
            );
            for word in ["broker", "lost"] {
                assert!(
                    text.lines().nth(1).unwrap().contains(word),
                    "{name} at {width}\n{text}"
                );
            }
            // No figure or name is broken across lines.
            for b in &results.brokers {
                let p99 = table::latency(b.latency_us.publish.p99);
                for whole in [
                    b.broker.to_string(),
                    p99,
                    format!("{}/{}", b.publish.confirmed, b.publish.attempted),
                ] {
                    if name == "summary" {
                        assert!(text.contains(&whole), "{name} at {width}: {whole}\n{text}");
                    }
                }
            }
        }
        let notes = table::notes(&results, layout);
        assert!(
            notes.iter().any(|n| n.starts_with("jetstream: NO: lost 3")),
            "{width}: {notes:?}"
        );
    }
}

#[tokio::test]
async fn a_stand_in_is_named_for_what_it_is_in_trackers_and_files() {
    let mut results = measured().await;
    results.brokers[1].implementation = "redpanda 24.2.7".into();
    results.brokers[1].stand_in_for = Some("Apache Kafka".into());
    let names: Vec<String> = export(Format::Hlog, std::slice::from_ref(&results))
        .into_iter()
        .map(|d| d.file_name)
        .collect();
    assert!(
        names.contains(&"memory-jetstream-on-redpanda-publish.hlog".to_string()),
        "{names:?}"
    );
    let bmf: Value = serde_json::from_slice(&export(Format::Bmf, &[results])[0].content).unwrap();
    let benches: Vec<&String> = bmf.as_object().unwrap().keys().collect();
    assert!(
        benches
            .iter()
            .any(|b| b.starts_with("memory/jetstream-on-redpanda")),
        "{benches:?}"
    );
    assert!(!benches
        .iter()
        .any(|b| b.starts_with("memory/jetstream/") || *b == "memory/jetstream"));
}

#[tokio::test]
async fn dead_letters_show_in_the_tables_and_every_report() {
    use crate::report::table::{self, Layout};
    let plan = plan(
        "[consumers.failures]\npoison = 0.05\ntransient = 0.1\n[dead_letter]\nmax_deliveries = 3\n",
    )
    .with(|p| p.brokers = vec!["rabbitmq".parse().unwrap(), "jetstream".parse().unwrap()]);
    let (outcome, _) = run(&plan, Knobs::default()).await;
    let results = outcome.results;
    let poison = results.brokers[0].groups[1]
        .account
        .failures
        .as_ref()
        .unwrap()
        .poison;
    assert!(poison > 0);
    for width in [80u16, 120] {
        let mut t = table::dead_letters(&results, Layout::for_width(Some(width))).unwrap();
        t.set_width(width);
        let text = t.to_string();
        assert!(
            text.lines().all(|l| l.chars().count() <= width as usize),
            "{width}\n{text}"
        );
        assert!(
            text.contains("poison lost") && text.contains(&poison.to_string()),
            "{text}"
        );
    }
    assert!(table::dead_letters(&measured().await, Layout::Wide).is_none());
    let text = |format| {
        export(format, std::slice::from_ref(&results))
            .iter()
            .map(|d| String::from_utf8_lossy(&d.content).to_string())
            .collect::<String>()
    };
    let markdown = text(Format::Markdown);
    assert!(markdown.contains("### Dead letters"), "{markdown}");
    let html = text(Format::Html);
    assert!(html.contains("<h2>Dead letters</h2>"));
    assert!(html.contains("failed attempts and dead letters per second"));
    assert!(text(Format::Junit).contains("poison_lost == 0"));
    assert!(text(Format::GithubActionBenchmark).contains("time_to_dead_letter_p99"));
}
