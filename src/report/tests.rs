//! The views of what the engine measured: runs on the in-memory driver
//! (`run::tests`), shown in the table and the exports as a person reads them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{export, table};
use crate::run::memory::Knobs;
use crate::run::tests::{check, knobs, plan, run, threshold, With};

/// A harness made the limit (one runtime worker, a millisecond of CPU per
/// send at 1000 msg/s) says so: in the results, which fall short of the
/// target, and in the warning.
#[tokio::test(flavor = "current_thread")]
async fn a_harness_that_is_the_limit_says_so() {
    let plan = plan("").with(|p| p.load.duration = Duration::from_secs(1));
    let slow = knobs(|k| k.burn = Some(Duration::from_micros(1500)));
    let (outcome, json) = run(&plan, slow).await;
    let broker = &outcome.results.brokers[0];
    let harness = broker
        .harness
        .as_ref()
        .expect("the harness measured itself");
    assert!(harness.limited, "{harness:?}");
    assert!(harness.busiest_worker() > 0.9, "{harness:?}");
    assert!(broker.publish.unsent > 0, "it could not keep up: {json:#}");
    let warning = harness.warning.as_deref().unwrap_or_default();
    assert!(
        warning.starts_with(
            "the harness may have been the limit: its busiest runtime worker was busy"
        ),
        "{warning}"
    );
    let table = table::harness(&outcome.results, table::Layout::Wide)
        .expect("a harness table")
        .to_string();
    assert!(table.contains("MAYBE"), "{table}");
    assert_eq!(
        table::harness_warnings(&outcome.results),
        [format!("warning: rabbitmq: {warning}")]
    );
}

#[tokio::test]
async fn a_broker_back_but_refusing_every_publish_has_not_recovered() {
    // Back at 0.2 s, with a 1 s longest backoff and 1.5 s of load: judged.
    let plan = plan(concat!(
        "[recovery]\non_unconfirmed = \"drop\"\nbackoff_max = \"1s\"\n",
        "[[faults]]\nat = \"100ms\"\naction = \"kill\"\nduration = \"100ms\"\n"
    ))
    .with(|p| p.load.duration = Duration::from_millis(1500));
    let (outcome, json) = run(&plan, knobs(|k| k.refuse_after_restart = true)).await;
    let broker = &json["brokers"][0];
    let fault = &broker["faults"][0];
    assert!(fault["broker_ready_after_s"].is_number(), "{fault}");
    assert!(fault["publish_recovered_after_s"].is_null(), "{fault}");
    assert_eq!(fault["recovered"], false, "{fault}");
    assert!(!check(&json, "recovered", None));
    assert!(check(&json, "complete", None), "the broker itself was back");
    assert!(broker["publish"]["failed"].as_u64().unwrap() > 300);
    assert!(!outcome.results.passed());
    assert_eq!(broker["first_errors"]["refused"], "stream not found");
    let table = table::summary(&outcome.results, table::Layout::Wide).to_string();
    assert!(
        table.contains("publishing")
            && table.contains("never recovered after the kill at 0.1s")
            && table.contains("first error: stream not found"),
        "{table}"
    );
}

#[tokio::test]
async fn thresholds_become_checks_and_fail_the_run_when_crossed() {
    use crate::scenario::thresholds::{Limit, Metric};
    // 10 ms of delay on every message: end to end is at least 10 ms.
    let plan = plan(
        r#"[thresholds]
end_to_end_p99 = "1h"
publish_p99 = "1h"
rate_ratio = 0.5
lost = 0
recovery = "1m"
[thresholds.jetstream]
end_to_end_p50 = "5ms"
"#,
    )
    .with(|p| p.brokers = vec!["rabbitmq".parse().unwrap()]);
    let (outcome, json) = run(&plan, knobs(|k| k.delay = Duration::from_millis(10))).await;
    assert!(outcome.results.passed(), "{json:#}");
    let e2e = threshold(&json, "end_to_end_p99", Some("a"));
    assert_eq!(e2e["check"], "threshold");
    assert_eq!(e2e["unit"], "us");
    assert_eq!(e2e["limit"], 3_600_000_000u64);
    assert!(e2e["value"].as_u64().unwrap() >= 10_000, "{e2e}");
    assert_eq!(threshold(&json, "lost", Some("b"))["value"], 0);
    let ratio = threshold(&json, "rate_ratio", None)["value"]
        .as_f64()
        .unwrap();
    // 300 ms of steady load: a scheduler stall moves it, a broken pacer more.
    assert!((0.7..=1.3).contains(&ratio), "{ratio}");
    assert!(
        json["brokers"][0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["metric"] != "end_to_end_p50" && c["metric"] != "recovery"),
        "jetstream's own limit is not rabbitmq's, and no fault means no recovery check"
    );

    // The same run judged again: a limit at the measured value holds, one
    // just below it does not.
    let b = &outcome.results.brokers[0];
    let measured = b.latency_us.end_to_end["a"].p99;
    let judge = |us: u64| {
        let limits = [(Metric::EndToEndP99, Limit::Time(Duration::from_micros(us)))].into();
        crate::results::thresholds::checks(&limits, b)
            .iter()
            .find(|c| c.group.as_deref() == Some("a"))
            .unwrap()
            .passed
    };
    assert!(judge(measured));
    assert!(!judge(measured - 1));

    // Crossed: the run fails, and the table says which and by how much.
    let tight = plan.clone().with(|p| {
        p.thresholds
            .all
            .insert(Metric::EndToEndP99, Limit::Time(Duration::from_millis(5)));
    });
    let (outcome, json) = run(&tight, knobs(|k| k.delay = Duration::from_millis(10))).await;
    assert!(!outcome.results.passed());
    assert_eq!(
        threshold(&json, "end_to_end_p99", Some("a"))["passed"],
        false
    );
    assert!(
        check(&json, "lost == 0", Some("a")),
        "only the threshold failed"
    );
    let shown = table::summary(&outcome.results, table::Layout::Wide).to_string();
    assert!(shown.contains("NO: end_to_end_p99 <= 5ms (a): "), "{shown}");
}

/// Publish only, the broker's store is the account: what it no longer holds
/// of the confirmed messages is lost; no group figures are made up.
#[tokio::test]
async fn publish_only_counts_what_the_broker_no_longer_holds() {
    let plan = plan("").with(|p| p.consumers.clear());
    assert!(plan.publish_only());
    let counted = Knobs::default();
    let teardowns = counted.teardowns.clone();
    let (outcome, json) = run(&plan, counted).await;
    assert!(outcome.results.passed(), "{json:#}");
    let broker = &json["brokers"][0];
    assert_eq!(broker["publish"]["confirmed"], 300);
    // Asked before the run's data was deleted, once.
    assert_eq!(broker["publish"]["stored"], 300);
    assert_eq!(teardowns.load(Ordering::Relaxed), 1);
    let keep = plan.clone().with(|p| p.keep_data = true);
    let counted = Knobs::default();
    let teardowns = counted.teardowns.clone();
    let (_, json) = run(&keep, counted).await;
    assert_eq!(teardowns.load(Ordering::Relaxed), 0, "--keep-data");
    assert_eq!(json["scenario"]["keep_data"], true);
    assert_eq!(broker["groups"].as_array().map(Vec::len), Some(0));
    assert!(check(&json, "lost == 0", None));
    let markdown = export::markdown(&outcome.results);
    assert!(!markdown.contains("Consumer groups"), "{markdown}");

    let (outcome, json) = run(&plan, knobs(|k| k.drop_after_confirm = Some(10))).await;
    assert!(!outcome.results.passed());
    assert_eq!(json["brokers"][0]["publish"]["stored"], 270);
    assert!(!check(&json, "lost == 0", None));
    assert_eq!(outcome.results.brokers[0].lost(), 30);
    let summary = table::summary(&outcome.results, table::Layout::Wide);
    assert!(summary.to_string().contains("NO: lost 30"), "{summary}");
}

/// A network fault's figures (the proxy's, here written in) show in the
/// terminal, Markdown and HTML tables as injected: the latency, publish
/// p50 before and during, connections cut and new, timeouts.
#[tokio::test]
async fn network_faults_show_what_was_injected() {
    use crate::results::{BeforeDuring, NetworkFault};
    let plan = plan("[[faults]]\nat = \"100ms\"\naction = \"pause\"\nduration = \"100ms\"\n")
        .with(|p| p.load.duration = Duration::from_millis(500));
    let (mut outcome, _) = run(&plan, knobs(|_| {})).await;
    assert!(table::network_faults(&outcome.results, table::Layout::Wide).is_none());
    let fault = &mut outcome.results.brokers[0].faults[0];
    fault.network = Some(NetworkFault {
        latency_ms: Some(20.0),
        jitter_ms: Some(5.0),
        connections_open: 2,
        connections_cut: 2,
        connections_new: 3,
        reconnected_after_s: Some(0.9),
        publish_timeouts: 41,
        publish_p50_ms: Some(BeforeDuring {
            before: 4.0,
            during: 44.0,
        }),
        ..NetworkFault::default()
    });
    let shown = table::network_faults(&outcome.results, table::Layout::Wide)
        .expect("a network fault")
        .to_string();
    for expected in [
        "+20 ms ± 5 ms each way",
        "4.0 ms → 44.0 ms",
        "2 / 3",
        "0.9 s",
        "41",
    ] {
        assert!(shown.contains(expected), "{expected} in {shown}");
    }
    let narrow = table::network_faults(&outcome.results, table::Layout::Narrow)
        .unwrap()
        .to_string();
    assert!(narrow.contains("+40.0 ms"), "{narrow}");
    let markdown = export::markdown(&outcome.results);
    assert!(markdown.contains("### Network faults"), "{markdown}");
}
