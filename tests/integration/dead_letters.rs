//! Dead letters against real brokers: poison messages end in each broker's
//! dead-letter destination, a crash during their retries loses none on
//! durable settings, and a known-lossy set-up is caught.

use crate::util;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// These runs take the machine one at a time (two cores, real brokers).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `scenario` with `args`; the exit code and the results.
fn run(scenario: &str, args: &[&str]) -> (i32, Value) {
    let (code, results, _) = run_saved(scenario, args);
    (code, results)
}

/// [`run`], and the directory that holds the results file it wrote, with its path.
fn run_saved(scenario: &str, args: &[&str]) -> (i32, Value, (tempfile::TempDir, PathBuf)) {
    let _machine = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let ran = util::run_scenario(scenario, args);
    (ran.code, ran.results, ran.saved)
}

fn poison_with(extra: &str) -> String {
    let poison = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/poison.toml"),
    )
    .unwrap();
    format!("{poison}\n{extra}")
}

/// poison.toml with the broker killed at `at` for 2 s, clients backing off
/// at most 2 s.
fn killed_at(at: &str) -> String {
    poison_with(&format!(
        "[[faults]]\nat = \"{at}\"\naction = \"kill\"\nduration = \"2s\"\n\n[recovery]\nbackoff_max = \"2s\"\n"
    ))
}

/// Group `group` of broker result `b`.
fn group<'a>(b: &'a Value, name: &str) -> &'a Value {
    util::element(&b["groups"], name, |g| g["group"] == name)
}

/// Whether `b`'s check `name` for `group` passed.
fn passed(b: &Value, name: &str, group: &str) -> bool {
    let check = util::element(&b["checks"], name, |c| {
        c["check"] == name && c["group"] == group
    });
    check["passed"].as_bool().unwrap()
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn poison_messages_end_in_each_brokers_dead_letter_destination() {
    let (code, results, (_dir, saved)) = run_saved(&poison_with(""), &["--duration", "5s"]);
    assert_eq!(code, 0, "{results:#}");
    advice_cites(&saved, &results);
    for b in results["brokers"].as_array().unwrap() {
        let name = b["broker"].as_str().unwrap();
        let risk = group(b, "risk");
        let f = &risk["failures"];
        let poison = count(&f["poison"]);
        // 1% of about 1400 messages: the same ones on every broker.
        assert!((3..=50).contains(&poison), "{name}: {poison} poison");
        assert_eq!(count(&f["dead_lettered"]), poison, "{name}: {f}");
        assert_eq!(count(&f["poison_lost"]), 0, "{name}: {f}");
        assert_eq!(count(&f["dead_lettered_wrongly"]), 0, "{name}: {f}");
        assert_eq!(count(&f["dead_letter_unexpected"]), 0, "{name}: {f}");
        // Poison: all 5 deliveries; transient: 2 failures, then processed.
        assert_eq!(count(&f["attempts"][4]), poison, "{name}: {f}");
        assert_eq!(
            count(&f["attempts"][2]),
            count(&f["transient"]),
            "{name}: {f}"
        );
        let attempted = count(&b["publish"]["attempted"]);
        assert_eq!(count(&f["processed"]), attempted - poison, "{name}: {f}");
        assert_eq!(
            count(&f["failed_attempts"]),
            5 * poison + 2 * count(&f["transient"]),
            "{name}: {f}"
        );
        // Retries are not duplicates; nothing else is lost either.
        assert_eq!(count(&risk["duplicates"]), 0, "{name}");
        assert_eq!(count(&risk["lost"]), 0, "{name}");
        // Time to dead letter: a message each, at least the retry delays.
        let ttdl = &b["latency_us"]["time_to_dead_letter"]["risk"];
        assert_eq!(count(&ttdl["count"]), poison, "{name}");
        assert!(count(&ttdl["p50"]) >= 300_000, "{name}: {ttdl}");
        let per_second: u64 = b["series"]["dead_lettered"]["risk"]
            .as_array()
            .unwrap()
            .iter()
            .map(count)
            .sum();
        assert_eq!(per_second, poison, "{name}");
        for check in [
            "poison_lost == 0",
            "dead_lettered_wrongly == 0",
            "lost == 0",
        ] {
            assert!(passed(b, check, "risk"), "{name}: {check}");
        }
        // The control group fails nothing and has no dead letters.
        let inventory = group(b, "inventory");
        assert!(inventory.get("failures").is_none(), "{name}");
        assert_eq!(count(&inventory["unique"]), attempted, "{name}");
        assert!(
            b["settings"]["dead_lettering"].is_string(),
            "{name}: the settings say how dead-lettering ran"
        );
    }
}

/// `brokerbench advise` with the failure run `saved` as evidence: each
/// broker's dead-letter criterion cites what it measured.
fn advice_cites(saved: &Path, results: &Value) {
    let out = util::brokerbench()
        .args(["advise", "--dead-letter", "required", "--languages", "go"])
        .args(["--rate", "200", "--no-input", "--json"])
        .arg("--results")
        .arg(saved)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let advice: Value = serde_json::from_slice(&out.stdout).unwrap();
    util::validate("advice.v1.json", &advice);
    for b in results["brokers"].as_array().unwrap() {
        let poison = count(&group(b, "risk")["failures"]["poison"]);
        let ranked = advice["ranking"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["broker"] == b["broker"])
            .unwrap();
        let reason = ranked["criteria"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["criterion"] == "dead letters")
            .unwrap()["reason"]
            .as_str()
            .unwrap();
        let cited = format!("measured: dead-lettered {poison} of {poison} poison messages (100%)");
        assert!(reason.contains(&cited), "{}: {reason}", b["broker"]);
    }
}

#[test]
fn a_crash_during_retries_loses_no_poison_message_on_durable_settings() {
    // 5% poison with a 500 ms retry delay: at any moment dozens of messages
    // are between attempts when the broker is killed at 3 s for 2 s.
    let scenario = killed_at("3s")
        .replace("poison = 0.01", "poison = 0.05")
        .replace(r#"retry_delay = "100ms""#, r#"retry_delay = "500ms""#);
    let (_, results) = run(
        &scenario,
        &["--duration", "10s", "--brokers", "rabbitmq,jetstream"],
    );
    for b in results["brokers"].as_array().unwrap() {
        let name = b["broker"].as_str().unwrap();
        let risk = group(b, "risk");
        let f = &risk["failures"];
        let poison = count(&f["poison"]);
        assert!(poison > 50, "{name}: {f}");
        assert_eq!(count(&f["poison_lost"]), 0, "{name}: {f}");
        assert!(passed(b, "poison_lost == 0", "risk"), "{name}");
        assert!(
            b["faults"][0]["broker_ready_after_s"].is_number(),
            "{name}: the broker came back"
        );
        // Every poison message is dead-lettered or still held by the broker.
        match name {
            // JetStream can be asked for everything it holds: poison_lost
            // is a measurement there.
            "jetstream" => assert_eq!(count(&risk["unverified"]), 0, "{name}: {risk}"),
            // RabbitMQ cannot be asked for at-least-once dead letters on
            // their way: those would be unverified, never called lost. Dead
            // letters must keep coming after it is back.
            _ => {
                let back = b["faults"][0]["started_s"].as_f64().unwrap()
                    + b["faults"][0]["broker_ready_after_s"].as_f64().unwrap();
                let after: u64 = b["series"]["dead_lettered"]["risk"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .skip(back.ceil() as usize)
                    .map(count)
                    .sum();
                assert!(
                    after > 0,
                    "{name}: no dead letter after the broker was back at {back} s"
                );
            }
        }
    }
}

#[test]
fn an_undeclared_dead_letter_exchange_drops_poison_messages_and_fails() {
    // A typo in the exchange's name, as RabbitMQ sees it, with its default
    // at-most-once dead-lettering: it drops what it dead-letters without a
    // word. brokerbench must not.
    // What was dropped never arrives: a short drain and final read.
    let scenario = poison_with("")
        .replace(
            r#"queue_type = "quorum" # classic queues can only dead-letter at most once"#,
            "queue_type = \"quorum\"\ndeclare_dead_letter_exchange = false\ndead_letter_strategy = \"at-most-once\"",
        )
        .replace(
            "keys = 1000",
            "keys = 1000\ndrain_timeout = \"3s\"\nfinal_read = \"2s\"",
        );
    let (code, results) = run(&scenario, &["--duration", "6s", "--brokers", "rabbitmq"]);
    assert_eq!(code, 1, "a crossed check exits 1");
    let b = &results["brokers"][0];
    let f = &group(b, "risk")["failures"];
    let poison = count(&f["poison"]);
    assert!(poison > 0);
    assert_eq!(count(&f["dead_lettered"]), 0, "{f}");
    assert_eq!(count(&f["poison_lost"]), poison, "{f}");
    assert!(!passed(b, "poison_lost == 0", "risk"));
    // What could be processed was.
    assert_eq!(count(&group(b, "risk")["lost"]), 0);
}
