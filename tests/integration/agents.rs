//! Consumer groups in other languages against real brokers
//! (docs/cross-language.md): each agent consumes beside brokerbench's own
//! consumer in the same run, into the same ledger.

use crate::util;

use serde_json::Value;

/// These runs take the machine one at a time (two cores, real brokers).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `scenario` with `args`; the exit code, the results and stderr.
fn run(scenario: &str, args: &[&str]) -> (i32, Value, String) {
    let _machine = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (dir, path) = util::scenario_file(scenario);
    let out = util::run_command(&[path.to_str().unwrap()], dir.path())
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let results: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    util::validate_results(&results);
    (out.status.code().unwrap_or(-1), results, stderr)
}

/// 500 msg/s of JSON orders to a group of brokerbench's own and one in `language`.
fn beside_our_own(language: &str, brokers: &str) -> String {
    format!(
        r#"
name = "agents"
brokers = [{brokers}]

[load]
rate = 500
duration = "5s"
warmup = "1s"
message_size = 300

[[consumers]]
group = "own"

[[consumers]]
group = "other"
language = "{language}"
"#
    )
}

fn group<'a>(b: &'a Value, name: &str) -> &'a Value {
    util::element(&b["groups"], name, |g| g["group"] == name)
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Checks that `language`'s group got every confirmed message once, as
/// brokerbench's own group did, at an end-to-end latency of the same order.
fn holds_against_our_own(results: &Value, language: &str) {
    for b in results["brokers"].as_array().unwrap() {
        let broker = b["broker"].as_str().unwrap();
        let confirmed = count(&b["publish"]["confirmed"]);
        assert!(confirmed >= 2000, "{broker}: {confirmed} confirmed");
        let (own, other) = (group(b, "own"), group(b, "other"));
        assert_eq!(other["language"], language, "{broker}: {other:#}");
        for g in [own, other] {
            let name = &g["group"];
            assert_eq!(count(&g["lost"]), 0, "{broker} {name}: {g:#}");
            assert_eq!(count(&g["unexpected"]), 0, "{broker} {name}: {g:#}");
            assert!(
                count(&g["unique"]) >= confirmed,
                "{broker} {name}: {} of {confirmed} delivered",
                g["unique"]
            );
        }
        let agent = &other["agent"];
        assert!(agent["failure"].is_null(), "{broker}: {agent:#}");
        let cpu = agent["cpu_per_message_us"]
            .as_f64()
            .unwrap_or_else(|| panic!("{agent:#}"));
        assert!(cpu > 0.0, "{broker}: the agent's CPU per message is {cpu}");
        // The agent's instants are on the same clock: its latencies are of
        // the same order as our own consumer's, never negative or absurd.
        let e2e = &b["latency_us"]["end_to_end_service"];
        let (ours, theirs) = (e2e["own"]["p50"].as_f64(), e2e["other"]["p50"].as_f64());
        let (ours, theirs) = (ours.unwrap(), theirs.unwrap_or_else(|| panic!("{e2e:#}")));
        assert!(
            theirs > 0.0 && theirs < 1_000_000.0 && theirs < ours * 50.0 + 50_000.0,
            "{broker}: end-to-end p50 {theirs} µs for {language} against {ours} µs for our own"
        );
        assert_eq!(
            b["errors"].get("agent"),
            None,
            "{broker}: {:#}",
            b["errors"]
        );
    }
}

#[test]
fn a_python_group_on_jetstream_keeps_the_same_account_as_our_own() {
    let (code, results, stderr) = run(&beside_our_own("python", "\"jetstream\""), &[]);
    assert_eq!(code, 0, "{stderr}\n{results:#}");
    holds_against_our_own(&results, "python");
}
