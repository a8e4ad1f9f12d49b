//! Every verdict `results.json` can carry, reached on purpose through the
//! whole engine (session, producers, consumers, drain, faults, report) with
//! the in-memory driver. No broker is needed; each test takes well under 2 s.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::events::{Event, Observer, Quiet};
use super::memory::{Knobs, MemoryEnv};
use super::session::{Outcome, Session, Stop};
use crate::results::Results;
use crate::scenario::{Fate, Overrides, Plan};

/// 1000 msg/s for 300 ms from one producer on one key (300 messages, in
/// order), two consumer groups, unconfirmed messages dropped, a short final read.
const BASE: &str = r#"
name = "memory"
brokers = ["rabbitmq"]
[load]
rate = 1000
duration = "300ms"
drain_timeout = "1s"
final_read = "500ms"
keys = 1
[[consumers]]
group = "a"
[[consumers]]
group = "b"
"#;

/// A plan with one change, for tests that need a field other than [`BASE`]'s.
pub(crate) trait With {
    fn with(self, edit: impl FnOnce(&mut Plan)) -> Self;
}

impl With for Plan {
    fn with(mut self, edit: impl FnOnce(&mut Plan)) -> Self {
        edit(&mut self);
        self
    }
}

/// Knobs as `set` leaves them.
pub(crate) fn knobs(set: impl FnOnce(&mut Knobs)) -> Knobs {
    let mut knobs = Knobs::default();
    set(&mut knobs);
    knobs
}

pub(crate) fn plan(extra: &str) -> Plan {
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
        Stop::default(),
    ));
    let outcome = session.run(&mut MemoryEnv(knobs), &Quiet).await.unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(&outcome.path).unwrap()).unwrap();
    let mut json = serde_json::to_value(&outcome.results).unwrap();
    assert_eq!(written, json, "results.json is what the session returned");
    let back = Results::read(&outcome.path).unwrap();
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        json,
        "results.json reads back whole"
    );
    // The in-memory environment exists in tests only; the schema rightly
    // knows only the real ones.
    json["environment"] = "local".into();
    validate(&json);
    (outcome, json)
}

pub(crate) async fn run(plan: &Plan, knobs: Knobs) -> (Outcome, Value) {
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

pub(crate) fn check(json: &Value, name: &str, group: Option<&str>) -> bool {
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
    let plan = plan("").with(|p| {
        p.brokers = ["rabbitmq", "jetstream"]
            .map(|n| n.parse().unwrap())
            .to_vec()
    });
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
        // The harness measured itself over the steady window, and was not the limit.
        let harness = &broker["harness"];
        assert_eq!(harness["limited"], false, "{harness}");
        assert!(harness["wall_s"].as_f64().unwrap() > 0.25, "{harness}");
        assert!(harness["messages"].as_u64().unwrap() > 0, "{harness}");
        assert!(harness["worker_busy"]
            .as_array()
            .is_some_and(|w| !w.is_empty()));
    }
}

/// A knob, and what it must do to the figures: `(pointer, value)` into the
/// broker's results, then into each group's account.
type Case = (
    &'static str,
    fn(&mut Knobs),
    &'static [(&'static str, u64)],
    &'static [(&'static str, u64)],
);

/// Each verdict of the ledger, reached on purpose by its knob. A lost or
/// unexpected message fails the checks; the others are reported, not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ledger_verdict_is_reached_by_its_knob() {
    let cases: [Case; 7] = [
        (
            "lost",
            |k| k.drop_after_confirm = Some(10),
            &[("/publish/confirmed", 300)],
            &[("/lost", 30), ("/unique", 270)],
        ),
        (
            "duplicates",
            |k| k.duplicate = Some(5),
            &[("/publish/confirmed", 300)],
            &[
                ("/duplicates", 60),
                ("/redelivered", 60),
                ("/delivered", 360),
            ],
        ),
        (
            "failed",
            |k| k.refuse = Some(4),
            &[
                ("/publish/failed", 75),
                ("/publish/confirmed", 225),
                ("/errors/refused", 75),
            ],
            &[("/lost", 0), ("/recovered", 0)],
        ),
        (
            "recovered",
            |k| k.store_but_refuse = Some(4),
            &[("/publish/failed", 75)],
            &[("/recovered", 75), ("/lost", 0)],
        ),
        (
            "unknown",
            |k| k.never_answer = Some(5),
            &[("/publish/unknown", 60), ("/publish/confirmed", 240)],
            &[("/recovered", 60), ("/lost", 0)],
        ),
        (
            "out of order",
            |k| {
                k.swap_pairs = true;
                // Long enough that both of a pair wait in the queue together.
                k.delay = Duration::from_millis(250);
            },
            &[("/publish/confirmed", 300)],
            &[("/out_of_order", 150), ("/lost", 0)],
        ),
        (
            "unexpected",
            |k| k.foreign = 3,
            &[("/publish/confirmed", 300)],
            &[("/unexpected", 3), ("/lost", 0)],
        ),
    ];
    let plan = plan("").with(|p| p.load.drain_timeout = Duration::from_millis(300));
    let runs = cases.map(|(_, set, _, _)| run(&plan, knobs(set)));
    let outcomes = futures_util::future::join_all(runs).await;
    for ((verdict, _, broker, groups), (outcome, json)) in cases.iter().zip(outcomes) {
        let figure = |value: &Value, pointer: &str| value.pointer(pointer).and_then(Value::as_u64);
        for (pointer, expected) in *broker {
            let measured = figure(&json["brokers"][0], pointer);
            assert_eq!(measured, Some(*expected), "{verdict}: {pointer}");
        }
        for name in ["a", "b"] {
            for (pointer, expected) in *groups {
                let measured = figure(group(&json, name), pointer);
                assert_eq!(
                    measured,
                    Some(*expected),
                    "{verdict}: group {name} {pointer}"
                );
            }
            for condition in ["lost == 0", "unexpected == 0"] {
                let held = check(&json, condition, Some(name));
                let should = !condition.starts_with(verdict);
                assert_eq!(held, should, "{verdict}: {condition} in group {name}");
            }
        }
        let fails = ["lost", "unexpected"].contains(verdict);
        assert_eq!(outcome.results.passed(), !fails, "{verdict}");
    }
}

#[tokio::test]
async fn refused_publishes_are_sent_again_in_retry_mode() {
    let plan = plan("[recovery]\non_unconfirmed = \"retry\"\n")
        .with(|p| p.load.drain_timeout = Duration::from_millis(1500));
    let knobs = knobs(|k| k.refuse = Some(4));
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
async fn what_the_broker_still_holds_is_backlog_not_loss() {
    // Every message waits 5 s in the broker; the drain and the final read end sooner.
    let plan = plan("").with(|p| p.load.drain_timeout = Duration::from_millis(200));
    let plan = plan.with(|p| p.load.final_read = Duration::from_millis(300));
    let (outcome, json) = run(&plan, knobs(|k| k.delay = Duration::from_secs(5))).await;
    let broker = &json["brokers"][0];
    assert_eq!(broker["drain"]["timed_out"], true);
    assert!(broker["drain"]["final_read_seconds"].as_f64().unwrap() >= 0.3);
    for name in ["a", "b"] {
        let g = group(&json, name);
        assert_eq!(
            (g["lost"].as_u64(), g["backlog"].as_u64()),
            (Some(0), Some(300)),
            "{g}"
        );
        assert!(check(&json, "lost == 0", Some(name)));
        assert!(!check(&json, "drained", Some(name)));
    }
    assert_eq!(
        broker["complete"], true,
        "a backlog is not an incomplete run"
    );
    assert!(!outcome.results.passed());
    assert!(outcome.results.incomplete_reason.is_none());
}

#[tokio::test]
async fn what_arrives_in_the_final_read_is_late() {
    // Messages wait 1.5 s: well past the drain's end at 0.4 s, within the read.
    let plan = plan("").with(|p| p.load.drain_timeout = Duration::from_millis(100));
    let plan = plan.with(|p| p.load.final_read = Duration::from_secs(4));
    let knobs = knobs(|k| k.delay = Duration::from_millis(1500));
    let (outcome, json) = run(&plan, knobs).await;
    for name in ["a", "b"] {
        let g = group(&json, name);
        let late = g["late"].as_u64().unwrap();
        assert!(late > 100, "{g}");
        assert_eq!(
            (g["lost"].as_u64(), g["backlog"].as_u64()),
            (Some(0), Some(0)),
            "{g}"
        );
        assert_eq!(g["unique"], 300);
    }
    assert!(outcome.results.passed(), "late is reported, not failed");
}

#[tokio::test]
async fn load_the_producers_could_not_send_by_the_end_is_unsent() {
    // A broker that takes 1 ms per message, offered a million a second.
    let plan = plan("")
        .with(|p| p.load.rate = 1e6)
        .with(|p| p.load.drain_timeout = Duration::from_millis(300));
    let started = std::time::Instant::now();
    let (_, json) = run(&plan, knobs(|k| k.slow = Some(Duration::from_millis(1)))).await;
    let publish = &json["brokers"][0]["publish"];
    let (attempted, unsent) = (
        publish["attempted"].as_u64().unwrap(),
        publish["unsent"].as_u64().unwrap(),
    );
    assert_eq!(attempted + unsent, 300_000, "{publish}");
    assert!(unsent > 290_000, "{publish}");
    assert_eq!(group(&json, "a")["lost"], 0);
    // Load 300 ms, drain 300 ms, a final read and closing: no catching up after the end.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_kill_is_recorded_with_its_recovery_times() {
    let plan = plan("[[faults]]\nat = \"100ms\"\naction = \"kill\"\nduration = \"200ms\"\n")
        .with(|p| p.load.duration = Duration::from_millis(600));
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

/// Records the events a run emits, each as a short name with its figures.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<String>>);

impl Observer for Recorder {
    fn event(&self, event: Event<'_>) {
        let name = match event {
            Event::Placed { kind, .. } => format!("placed {kind}"),
            Event::Measuring { kind, progress } => {
                assert_eq!(progress.delivered.len(), 2, "one counter per group");
                format!("measuring {kind}")
            }
            Event::Measured => "measured".into(),
            Event::FaultApplied { action, at } => {
                format!("{} at {} ms", action.as_str(), at.as_millis())
            }
            Event::Recovered { after, error, .. } => {
                let after = after.expect("back after the kill");
                assert!(error.is_none());
                assert!((200..300).contains(&after.as_millis()), "{after:?}");
                "recovered".into()
            }
            Event::BrokerDone { result } => format!("done {}", result.broker),
            other => format!("{other:?}"),
        };
        self.0.lock().unwrap().push(name);
    }
}

#[tokio::test]
async fn the_engine_tells_its_observer_what_happens_in_order() {
    let plan = plan("[[faults]]\nat = \"100ms\"\naction = \"kill\"\nduration = \"200ms\"\n")
        .with(|p| p.load.duration = Duration::from_millis(600));
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new(&plan, dir.path().to_path_buf(), Stop::default());
    let recorder = Recorder::default();
    let outcome = session
        .run(&mut MemoryEnv(Knobs::default()), &recorder)
        .await
        .unwrap();
    assert!(outcome.results.passed());
    assert_eq!(
        *recorder.0.lock().unwrap(),
        [
            "placed rabbitmq",
            "measuring rabbitmq",
            "kill at 100 ms",
            "recovered",
            "measured",
            "done rabbitmq"
        ]
    );
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
    let knobs = knobs(|k| {
        k.lose_topology_on_restart = true;
        k.delay = Duration::from_millis(150)
    });
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
    let knobs = knobs(|k| {
        k.never_back = true;
        k.delay = Duration::from_millis(200); // some are still queued at the kill
    });
    let teardowns = knobs.teardowns.clone();
    let (outcome, json) = run(&plan, knobs).await;
    assert_eq!(
        teardowns.load(Ordering::Relaxed),
        0,
        "nothing to delete on a dead broker"
    );
    let fault = &json["brokers"][0]["faults"][0];
    assert!(fault["broker_ready_after_s"].is_null(), "{fault}");
    assert!(fault["publish_recovered_after_s"].is_null(), "{fault}");
    // What it held at the crash cannot be asked for: unverified, not lost.
    let g = group(&json, "a");
    assert!(g["backlog"].is_null(), "{g}");
    assert_eq!(g["lost"], 0, "{g}");
    assert!(g["unverified"].as_u64().unwrap() > 0, "{g}");
    assert!(!check(&json, "drained", Some("a")));
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
    let plan = plan("").with(|p| p.load.duration = Duration::from_secs(5));
    let stop = Stop::default();
    let signal = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        signal.stop("SIGTERM");
    });
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new(&plan, dir.path().to_path_buf(), stop);
    let outcome = session
        .run(&mut MemoryEnv(Knobs::default()), &Quiet)
        .await
        .unwrap();
    let results = &outcome.results;
    assert!(!results.complete);
    assert_eq!(
        results.incomplete_reason.as_deref(),
        Some("interrupted by SIGTERM")
    );
    let broker = &results.brokers[0];
    assert!(broker.publish.attempted > 100 && broker.publish.attempted < 1000);
    // What would have fallen due after the stop was never due: not unsent.
    assert!(broker.publish.unsent < 50, "{}", broker.publish.unsent);
    // Every confirmed message is accounted for; one still in the broker when
    // the run stopped is backlog, not lost.
    let group = &broker.groups[0];
    let backlog = group.backlog.expect("the broker was asked");
    assert_eq!(group.account.unique + backlog, broker.publish.confirmed);
    assert_eq!(group.account.lost, 0);
}

#[tokio::test]
async fn a_broker_that_cannot_be_reached_stops_the_run_and_says_which() {
    let knobs = knobs(|k| k.refuse_connect = true);
    let (outcome, json) = run(&plan(""), knobs).await;
    let failure = format!("{:#}", outcome.failure.unwrap());
    assert!(failure.contains("cannot reach rabbitmq"), "{failure}");
    assert_eq!(json["brokers"].as_array().unwrap().len(), 0);
    let reason = json["incomplete_reason"].as_str().unwrap();
    assert!(reason.contains("refuses connections"), "{reason}");
}

#[tokio::test]
async fn a_broker_that_cannot_be_set_up_stops_the_run_and_says_which() {
    let (outcome, json) = run(&plan(""), knobs(|k| k.refuse_setup = true)).await;
    let failure = format!("{:#}", outcome.failure.unwrap());
    assert!(
        failure.starts_with("rabbitmq at ") && failure.contains("setting up the topology"),
        "{failure}"
    );
    assert_eq!(json["brokers"].as_array().unwrap().len(), 0);
    assert_eq!(json["complete"], false);
}

#[tokio::test]
async fn a_measurement_that_hangs_is_cut_off_by_the_bound() {
    let knobs = knobs(|k| k.hang_on_close = true);
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

/// The threshold checks of the first broker, by metric and group.
pub(crate) fn threshold<'a>(json: &'a Value, metric: &str, group: Option<&str>) -> &'a Value {
    json["brokers"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == metric && c["group"].as_str() == group)
        .unwrap_or_else(|| panic!("no threshold {metric} {group:?}"))
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_and_counted_against_the_poison_set() {
    // Group b fails 5% poison (3 deliveries, then dead-lettered) and 20%
    // transient (one failure each); group a fails nothing.
    let plan = plan(
        "[consumers.failures]\npoison = 0.05\ntransient = 0.2\ntransient_attempts = 1\n[dead_letter]\nmax_deliveries = 3\n",
    );
    let (_, json) = run(&plan, Knobs::default()).await;
    let b = group(&json, "b");
    let f = &b["failures"];
    let failures = plan.consumers[1].failures.clone().unwrap();
    let fates: Vec<_> = (0..300).map(|s| failures.fate("b", 0, s)).collect();
    let poison = fates.iter().filter(|f| **f == Fate::Poison).count() as u64;
    let transient = fates.iter().filter(|f| **f == Fate::Transient).count() as u64;
    assert!(poison > 0 && transient > 0);
    assert_eq!(f["poison"], poison);
    assert_eq!(f["transient"], transient);
    assert_eq!(f["dead_lettered"], poison, "{f}");
    assert_eq!(f["poison_lost"], 0);
    assert_eq!(f["dead_lettered_wrongly"], 0);
    assert_eq!(f["processed"], 300 - poison);
    assert_eq!(f["failed_attempts"], 3 * poison + transient);
    assert_eq!(f["attempts"][2], poison);
    assert_eq!(f["attempts"][1], transient);
    assert_eq!(b["duplicates"], 0, "retries are not duplicates");
    assert!(check(&json, "poison_lost == 0", Some("b")));
    assert!(check(&json, "dead_lettered_wrongly == 0", Some("b")));
    let broker = &json["brokers"][0];
    assert_eq!(
        broker["latency_us"]["time_to_dead_letter"]["b"]["count"],
        poison
    );
    assert!(group(&json, "a").get("failures").is_none());
    assert!(broker["series"]["dead_lettered"].get("a").is_none());
}

#[tokio::test]
async fn poison_messages_gone_are_lost_unless_the_broker_cannot_be_asked() {
    let plan = plan("[consumers.failures]\npoison = 0.05\n[dead_letter]\nmax_deliveries = 2\n");
    let plan = plan.with(|p| {
        p.load.drain_timeout = Duration::from_millis(300);
        p.load.final_read = Duration::from_millis(100);
    });
    // Dropped, and the broker says it holds nothing: poison_lost, and it fails.
    let (_, json) = run(&plan, knobs(|k| k.drop_dead_letters = true)).await;
    let b = group(&json, "b");
    let poison = b["failures"]["poison"].as_u64().unwrap();
    assert!(poison > 0);
    assert_eq!(b["failures"]["poison_lost"], poison, "{b}");
    assert_eq!(b["failures"]["dead_lettered"], 0);
    assert!(!check(&json, "poison_lost == 0", Some("b")));
    // The same, where the broker cannot report dead letters on their way:
    // unverified, never lost; the drained check fails instead.
    let (_, json) = run(
        &plan,
        knobs(|k| {
            k.drop_dead_letters = true;
            k.hide_dead_letters_in_flight = true;
        }),
    )
    .await;
    let b = group(&json, "b");
    assert_eq!(b["failures"]["poison_lost"], 0, "{b}");
    assert_eq!(b["lost"], 0, "{b}");
    assert_eq!(b["unverified"], poison);
    assert!(check(&json, "poison_lost == 0", Some("b")));
    assert!(!check(&json, "drained", Some("b")));
}

/// Binary messages of 64 bytes go through the same accounting as JSON ones.
#[tokio::test]
async fn small_binary_messages_are_accounted_for_like_json_ones() {
    let plan = plan("").with(|p| {
        p.load.encoding = crate::event::Encoding::Binary;
        p.load.message_size = 64;
    });
    let (outcome, json) = run(&plan, knobs(|k| k.duplicate = Some(50))).await;
    assert!(outcome.results.passed(), "{json:#}");
    let broker = &json["brokers"][0];
    assert_eq!(broker["load"]["message_bytes"], 64);
    assert_eq!(json["scenario"]["load"]["encoding"], "binary");
    for name in ["a", "b"] {
        let g = group(&json, name);
        assert_eq!(g["unique"], 300, "{g}");
        assert_eq!(g["duplicates"], 6, "{g}");
    }
    assert!(
        broker["latency_us"]["end_to_end"]["a"]["count"]
            .as_u64()
            .unwrap()
            > 0
    );
}

/// Producers that move from v1 to the compatible v2, then to the negative
/// control: every group takes v1 and v2 and refuses the control, never
/// retrying it; the group with failures dead-letters what it refused, and
/// the account still closes.
#[tokio::test]
async fn events_the_typed_decoder_refuses_are_counted_and_dead_lettered_where_configured() {
    let plan = plan(concat!(
        "[[load.evolution]]\nat = \"100ms\"\nevent_version = \"v2\"\n",
        "[[load.evolution]]\nat = \"200ms\"\nevent_version = \"v2-broken\"\n",
        "[consumers.failures]\npoison = 0.05\n[dead_letter]\nmax_deliveries = 2\n",
    ));
    let (outcome, json) = run(&plan, Knobs::default()).await;
    assert!(outcome.results.passed(), "{json:#}");
    assert_eq!(
        json["scenario"]["load"]["evolution"][1]["event_version"],
        "v2-broken"
    );
    let (a, b) = (group(&json, "a"), group(&json, "b"));
    // About the last third of the 300 messages are the control.
    let refused = a["decode_failed"].as_u64().unwrap();
    assert!((80..=120).contains(&refused), "{a:#}");
    for g in [a, b] {
        assert_eq!(g["unique"], 300, "{g:#}");
        assert_eq!(g["lost"], 0, "{g:#}");
        assert_eq!(g["decode_failed"], refused, "{g:#}");
    }
    assert_eq!(a["delivered"], 300, "never retried: {a:#}");
    let f = &b["failures"];
    assert_eq!(f["refused"], refused, "{f:#}");
    let poison = f["poison"].as_u64().unwrap();
    assert!(poison > 0, "{f:#}");
    assert_eq!(f["dead_lettered"], poison + refused, "{f:#}");
    assert_eq!(f["dead_lettered_wrongly"], 0, "{f:#}");
    assert_eq!(f["poison_lost"], 0, "{f:#}");
    assert_eq!(f["processed"], 300 - poison - refused, "{f:#}");
}

#[tokio::test]
async fn runs_started_in_the_same_second_keep_their_own_results() {
    // Two sessions into one directory at once: the in-memory runs take
    // 300 ms, so they start in the same second unless one straddles it.
    let plan = plan("");
    let dir = tempfile::tempdir().unwrap();
    let session = || Session::new(&plan, dir.path().to_path_buf(), Stop::default());
    let (first, second) = (session(), session());
    let (mut one, mut other) = (MemoryEnv(Knobs::default()), MemoryEnv(Knobs::default()));
    let (a, b) = tokio::join!(first.run(&mut one, &Quiet), second.run(&mut other, &Quiet));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.path, b.path);
    for outcome in [&a, &b] {
        let back = Results::read(&outcome.path).unwrap();
        assert_eq!(back.started_at, outcome.results.started_at);
    }
    // The same second, whatever the clock did above: a suffix.
    let results = &a.results;
    let first = results.claim_directory(dir.path()).unwrap();
    let second = results.claim_directory(dir.path()).unwrap();
    assert_ne!(first, second);
    let stamp: String = results
        .started_at
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let base = format!("memory-{stamp}");
    assert!(dir.path().join(&base).join("results.json").is_file());
    let suffix = |p: &Path| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.strip_prefix(&format!("{base}-"))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("{} is not {base}-N", p.display()))
    };
    let (x, y) = (suffix(&first), suffix(&second));
    assert!(x >= 2 && y == x + 1, "{x} then {y}");
    assert!(first.is_dir() && second.is_dir());
}
