//! Every verdict `results.json` can carry, reached on purpose through the
//! whole engine (session, producers, consumers, drain, faults, report) with
//! the in-memory driver. No broker is needed; each test takes well under 2 s.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::memory::{Knobs, MemoryEnv};
use super::session::{Outcome, Quiet, Session};
use crate::scenario::{Overrides, Plan};

/// 1000 msg/s for 300 ms from one producer on one key (300 messages, in
/// order), two consumer groups, unconfirmed messages dropped.
const BASE: &str = r#"
name = "memory"
brokers = ["rabbitmq"]
[load]
rate = 1000
duration = "300ms"
drain_timeout = "1s"
keys = 1
[[consumers]]
group = "a"
[[consumers]]
group = "b"
"#;

/// Changes to a plan, for tests that need one field other than [`BASE`]'s.
trait With {
    fn with_brokers(self, names: &str) -> Self;
    fn with_drain_timeout(self, timeout: Duration) -> Self;
    fn with_duration(self, duration: Duration) -> Self;
}

impl With for Plan {
    fn with_brokers(mut self, names: &str) -> Self {
        self.brokers = names.split(',').map(|n| n.parse().unwrap()).collect();
        self
    }

    fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.load.drain_timeout = timeout;
        self
    }

    fn with_duration(mut self, duration: Duration) -> Self {
        self.load.duration = duration;
        self
    }
}

fn plan(extra: &str) -> Plan {
    let text = format!("{BASE}\n{extra}");
    let text = if extra.contains("[recovery]") {
        text
    } else {
        format!("{text}\n[recovery]\non_unconfirmed = \"drop\"\n")
    };
    Plan::parse(Path::new("memory.toml"), &text, &Overrides::default())
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Runs `plan` on in-memory brokers with `knobs`; the results as JSON,
/// checked against the published schema.
async fn run_with(
    plan: &Plan,
    knobs: Knobs,
    session: impl FnOnce(Session) -> Session,
) -> (Outcome, Value) {
    let dir = tempfile::tempdir().unwrap();
    let session = session(Session::new(
        plan,
        dir.path().to_path_buf(),
        CancellationToken::new(),
    ));
    let outcome = session
        .run(&mut MemoryEnv(knobs), &mut Quiet)
        .await
        .unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(&outcome.path).unwrap()).unwrap();
    let mut json = serde_json::to_value(&outcome.results).unwrap();
    assert_eq!(written, json, "results.json is what the session returned");
    // The in-memory environment exists in tests only; the schema rightly
    // knows only the real ones.
    json["environment"] = "local".into();
    validate(&json);
    (outcome, json)
}

async fn run(plan: &Plan, knobs: Knobs) -> (Outcome, Value) {
    run_with(plan, knobs, |s| s).await
}

fn validate(results: &Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/results.v1.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(results)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

fn group<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["brokers"][0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == name)
        .unwrap()
}

fn check(json: &Value, name: &str, group: Option<&str>) -> bool {
    json["brokers"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name && c["group"].as_str() == group)
        .unwrap_or_else(|| panic!("no check {name} {group:?}"))["passed"]
        .as_bool()
        .unwrap()
}

#[tokio::test]
async fn a_clean_run_of_two_brokers_accounts_for_every_message() {
    let plan = plan("").with_brokers("rabbitmq,jetstream");
    let (outcome, json) = run(&plan, Knobs::default()).await;
    assert!(outcome.failure.is_none());
    assert!(outcome.results.passed(), "{json:#}");
    assert_eq!(json["complete"], true);
    assert_eq!(json["brokers"].as_array().unwrap().len(), 2);
    for broker in json["brokers"].as_array().unwrap() {
        assert_eq!(broker["implementation"], "in-memory test driver");
        assert_eq!(broker["publish"]["attempted"], 300);
        assert_eq!(broker["publish"]["confirmed"], 300);
        for g in broker["groups"].as_array().unwrap() {
            assert_eq!(g["unique"], 300, "{g}");
            for verdict in [
                "lost",
                "duplicates",
                "recovered",
                "unexpected",
                "out_of_order",
            ] {
                assert_eq!(g[verdict], 0, "{verdict}: {g}");
            }
        }
        assert_eq!(broker["drain"]["timed_out"], false);
    }
}

#[tokio::test]
async fn a_confirmed_message_the_broker_dropped_is_lost() {
    let knobs = Knobs {
        drop_after_confirm: Some(10),
        ..Knobs::default()
    };
    let (outcome, json) = run(&plan(""), knobs).await;
    assert_eq!(json["brokers"][0]["publish"]["confirmed"], 300);
    for name in ["a", "b"] {
        assert_eq!(group(&json, name)["lost"], 30);
        assert!(!check(&json, "lost == 0", Some(name)));
    }
    assert!(!outcome.results.passed());
}

#[tokio::test]
async fn a_message_delivered_twice_is_a_duplicate_not_a_failure() {
    let knobs = Knobs {
        duplicate: Some(5),
        ..Knobs::default()
    };
    let (outcome, json) = run(&plan(""), knobs).await;
    let a = group(&json, "a");
    assert_eq!(
        (a["duplicates"].as_u64(), a["delivered"].as_u64()),
        (Some(60), Some(360))
    );
    assert_eq!(a["lost"], 0);
    assert!(outcome.results.passed());
}

#[tokio::test]
async fn refused_publishes_are_failed_and_dropped() {
    let knobs = Knobs {
        refuse: Some(4),
        ..Knobs::default()
    };
    let (_, json) = run(&plan(""), knobs).await;
    let publish = &json["brokers"][0]["publish"];
    assert_eq!(
        (publish["failed"].as_u64(), publish["confirmed"].as_u64()),
        (Some(75), Some(225))
    );
    assert_eq!(json["brokers"][0]["errors"]["refused"], 75);
    assert_eq!(group(&json, "a")["lost"], 0);
    assert_eq!(group(&json, "a")["recovered"], 0);
}

#[tokio::test]
async fn refused_publishes_are_sent_again_in_retry_mode() {
    let plan = plan("[recovery]\non_unconfirmed = \"retry\"\n")
        .with_drain_timeout(Duration::from_millis(1500));
    let knobs = Knobs {
        refuse: Some(4),
        ..Knobs::default()
    };
    let (_, json) = run(&plan, knobs).await;
    let publish = &json["brokers"][0]["publish"];
    // A resend can be refused again and wait 2 s more: past the deadline, unknown.
    assert!(publish["resent"].as_u64().unwrap() >= 75, "{publish}");
    assert_eq!(publish["failed"], 0);
    let (confirmed, unknown) = (
        publish["confirmed"].as_u64().unwrap(),
        publish["unknown"].as_u64().unwrap(),
    );
    assert!(confirmed + unknown == 300 && unknown < 75, "{publish}");
    assert_eq!(group(&json, "a")["unique"], confirmed);
}

#[tokio::test]
async fn stored_but_refused_messages_that_arrive_are_recovered() {
    let knobs = Knobs {
        store_but_refuse: Some(4),
        ..Knobs::default()
    };
    let (outcome, json) = run(&plan(""), knobs).await;
    assert_eq!(json["brokers"][0]["publish"]["failed"], 75);
    for name in ["a", "b"] {
        assert_eq!(group(&json, name)["recovered"], 75);
        assert_eq!(group(&json, name)["lost"], 0);
    }
    assert!(outcome.results.passed(), "recovered is not a failure");
}

#[tokio::test]
async fn unanswered_publishes_are_unknown() {
    let knobs = Knobs {
        never_answer: Some(5),
        ..Knobs::default()
    };
    let plan = plan("").with_drain_timeout(Duration::from_millis(300));
    let (_, json) = run(&plan, knobs).await;
    let publish = &json["brokers"][0]["publish"];
    assert_eq!(
        (publish["unknown"].as_u64(), publish["confirmed"].as_u64()),
        (Some(60), Some(240))
    );
    assert_eq!(
        group(&json, "a")["recovered"],
        60,
        "delivered though never confirmed"
    );
}

#[tokio::test]
async fn a_later_message_of_the_same_key_first_is_out_of_order() {
    let knobs = Knobs {
        swap_pairs: true,
        delay: Duration::from_millis(20),
        ..Knobs::default()
    };
    let (outcome, json) = run(&plan(""), knobs).await;
    assert_eq!(group(&json, "a")["out_of_order"], 150);
    assert_eq!(group(&json, "a")["lost"], 0);
    assert!(outcome.results.passed());
}

#[tokio::test]
async fn a_delivery_nobody_sent_is_unexpected() {
    let knobs = Knobs {
        foreign: 3,
        ..Knobs::default()
    };
    let (outcome, json) = run(&plan(""), knobs).await;
    assert_eq!(group(&json, "b")["unexpected"], 3);
    assert!(!check(&json, "unexpected == 0", Some("b")));
    assert!(!outcome.results.passed());
}

#[tokio::test]
async fn a_drain_that_times_out_makes_the_run_incomplete() {
    let knobs = Knobs {
        delay: Duration::from_secs(5),
        ..Knobs::default()
    };
    let plan = plan("").with_drain_timeout(Duration::from_millis(200));
    let (outcome, json) = run(&plan, knobs).await;
    assert_eq!(json["brokers"][0]["drain"]["timed_out"], true);
    assert_eq!(json["brokers"][0]["complete"], false);
    assert!(!check(&json, "complete", None));
    assert_eq!(json["complete"], false);
    let reason = outcome.results.incomplete_reason.unwrap();
    assert!(reason.contains("rabbitmq: the drain timed out"), "{reason}");
}

#[tokio::test]
async fn a_kill_is_recorded_with_its_recovery_times() {
    let plan = plan("[[faults]]\nat = \"100ms\"\naction = \"kill\"\nduration = \"200ms\"\n")
        .with_duration(Duration::from_millis(600));
    let (outcome, json) = run(&plan, Knobs::default()).await;
    let fault = &json["brokers"][0]["faults"][0];
    let ready = fault["broker_ready_after_s"].as_f64().unwrap();
    let publish = fault["publish_recovered_after_s"].as_f64().unwrap();
    assert!((0.2..0.3).contains(&ready), "{fault}");
    assert!(publish >= ready && publish < ready + 0.1, "{fault}");
    for name in ["a", "b"] {
        let delivery = fault["delivery_recovered_after_s"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("{fault:#}"));
        assert!(delivery >= ready, "{fault}");
    }
    // Sends while it was down failed (drop mode); nothing confirmed was lost.
    let failed = json["brokers"][0]["publish"]["failed"].as_u64().unwrap();
    assert!((150..=250).contains(&failed), "{failed}");
    assert_eq!(fault["messages"]["failed"], failed);
    assert_eq!(fault["messages"]["groups"]["a"]["lost"], 0);
    assert!(outcome.results.passed(), "{json:#}");
}

#[tokio::test]
async fn a_pause_shows_in_corrected_publish_latency() {
    let plan = plan("[[faults]]\nat = \"100ms\"\naction = \"pause\"\nduration = \"150ms\"\n");
    let (_, json) = run(&plan, Knobs::default()).await;
    let broker = &json["brokers"][0];
    assert_eq!(broker["publish"]["failed"], 0);
    assert_eq!(broker["publish"]["confirmed"], 300);
    let max_us = broker["latency_us"]["publish"]["max"].as_f64().unwrap();
    assert!(max_us >= 140_000.0, "{}", broker["latency_us"]["publish"]);
    assert!(
        broker["faults"][0]["broker_ready_after_s"]
            .as_f64()
            .unwrap()
            >= 0.15
    );
}

#[tokio::test]
async fn queued_messages_lost_with_the_topology_count_against_the_fault() {
    let plan = plan("[[faults]]\nat = \"200ms\"\naction = \"restart\"\n");
    let knobs = Knobs {
        lose_topology_on_restart: true,
        delay: Duration::from_millis(150),
        ..Knobs::default()
    };
    let (outcome, json) = run(&plan, knobs).await;
    let lost = group(&json, "a")["lost"].as_u64().unwrap();
    assert!(lost > 50, "about 150 were queued at the restart: {lost}");
    assert_eq!(
        json["brokers"][0]["faults"][0]["messages"]["groups"]["a"]["lost"],
        lost
    );
    assert!(!outcome.results.passed());
}

#[tokio::test]
async fn a_broker_that_never_comes_back_fails_whatever_it_lost() {
    let plan = plan("[[faults]]\nat = \"100ms\"\naction = \"kill\"\nduration = \"100ms\"\n");
    let knobs = Knobs {
        never_back: true,
        ..Knobs::default()
    };
    let (outcome, json) = run(&plan, knobs).await;
    let fault = &json["brokers"][0]["faults"][0];
    assert!(fault["broker_ready_after_s"].is_null(), "{fault}");
    assert!(fault["publish_recovered_after_s"].is_null(), "{fault}");
    assert!(fault["error"]
        .as_str()
        .unwrap()
        .contains("never to come back"));
    assert_eq!(json["brokers"][0]["complete"], false);
    assert!(!check(&json, "complete", None));
    let reason = outcome.results.incomplete_reason.unwrap();
    assert!(
        reason.starts_with("rabbitmq: ") && reason.contains("never to come back"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_interrupted_run_is_incomplete_and_keeps_what_it_measured() {
    let plan = plan("").with_duration(Duration::from_secs(5));
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
    });
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new(&plan, dir.path().to_path_buf(), cancel);
    let outcome = session
        .run(&mut MemoryEnv(Knobs::default()), &mut Quiet)
        .await
        .unwrap();
    let results = &outcome.results;
    assert!(!results.complete);
    assert_eq!(
        results.incomplete_reason.as_deref(),
        Some("interrupted (Ctrl-C)")
    );
    let broker = &results.brokers[0];
    assert!(broker.publish.attempted > 100 && broker.publish.attempted < 1000);
    // Every confirmed message is accounted for. One still in flight when the
    // run stopped is counted lost today, though the broker still has it:
    // issue 9 (backlog is not loss) changes that verdict.
    let a = &broker.groups[0].account;
    assert_eq!(a.unique + a.lost, broker.publish.confirmed);
    assert!(a.lost <= 2, "{a:?}");
}

#[tokio::test]
async fn a_broker_that_cannot_be_reached_stops_the_run_and_says_which() {
    let knobs = Knobs {
        refuse_connect: true,
        ..Knobs::default()
    };
    let (outcome, json) = run(&plan(""), knobs).await;
    let failure = format!("{:#}", outcome.failure.unwrap());
    assert!(failure.contains("cannot reach rabbitmq"), "{failure}");
    assert_eq!(json["brokers"].as_array().unwrap().len(), 0);
    let reason = json["incomplete_reason"].as_str().unwrap();
    assert!(reason.contains("refuses connections"), "{reason}");
}

#[tokio::test]
async fn a_measurement_that_hangs_is_cut_off_by_the_bound() {
    let knobs = Knobs {
        hang_on_close: true,
        ..Knobs::default()
    };
    let (outcome, json) = run_with(&plan(""), knobs, |s| {
        s.with_slack(Duration::from_millis(300))
    })
    .await;
    assert!(outcome.failure.is_none());
    let reason = json["incomplete_reason"].as_str().unwrap();
    assert!(
        reason.contains("rabbitmq did not finish within"),
        "{reason}"
    );
    assert_eq!(json["complete"], false);
}
