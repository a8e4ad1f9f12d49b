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
    let ran = util::run_scenario(scenario, args);
    (ran.code, ran.results, ran.stderr)
}

/// No agent of broker result `b` failed or disagreed with the ledger.
fn no_agent_errors(b: &Value) {
    let broker = &b["broker"];
    assert_eq!(
        b["errors"].get("agent"),
        None,
        "{broker}: {:#}",
        b["errors"]
    );
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

/// Checks that group `name`, in `language`, got every confirmed message
/// once, as brokerbench's own group did, at an end-to-end latency of the
/// same order.
fn holds_against_our_own(results: &Value, name: &str, language: &str) {
    for b in results["brokers"].as_array().unwrap() {
        let broker = b["broker"].as_str().unwrap();
        let confirmed = count(&b["publish"]["confirmed"]);
        assert!(confirmed >= 2000, "{broker}: {confirmed} confirmed");
        let (own, other) = (group(b, "own"), group(b, name));
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
        // (Not with failures: on Kafka a retry holds up its partition.)
        if other.get("failures").is_some_and(|f| !f.is_null()) {
            no_agent_errors(b);
            continue;
        }
        let e2e = &b["latency_us"]["end_to_end_service"];
        let (ours, theirs) = (e2e["own"]["p50"].as_f64(), e2e[name]["p50"].as_f64());
        let (ours, theirs) = (ours.unwrap(), theirs.unwrap_or_else(|| panic!("{e2e:#}")));
        assert!(
            theirs > 0.0 && theirs < 1_000_000.0 && theirs < ours * 50.0 + 50_000.0,
            "{broker}: end-to-end p50 {theirs} µs for {language} against {ours} µs for our own"
        );
        no_agent_errors(b);
    }
}

/// The producers' rolling deploy: v1, the compatible v2 from 2 s, the
/// negative control (total as text, user_id dropped) from 4 s.
const EVOLUTION: &str = "[[load.evolution]]\nat = \"2s\"\nevent_version = \"v2\"\n[[load.evolution]]\nat = \"4s\"\nevent_version = \"v2-broken\"\n";

/// Python, Go and Node beside our own in one run on each broker (one run
/// for all, to share the brokers' start-up), while the producers evolve
/// their event from v1 to v2 and on to the negative control; the Node group
/// also fails messages on purpose and must dead-letter every poison one and
/// every one it refused.
#[test]
fn every_language_keeps_the_same_account_as_our_own_on_every_broker() {
    let scenario = format!(
        "{}\n[[consumers]]\ngroup = \"gopher\"\nlanguage = \"go\"\n\n[[consumers]]\ngroup = \"noder\"\nlanguage = \"node\"\n\n[consumers.failures]\npoison = 0.02\ntransient = 0.05\n",
        beside_our_own("python", "\"rabbitmq\", \"jetstream\", \"kafka\"")
    )
    .replace("message_size = 300\n", &format!("message_size = 300\n{EVOLUTION}"));
    let (code, results, stderr) = run(&scenario, &[]);
    assert_eq!(code, 0, "{stderr}\n{results:#}");
    holds_against_our_own(&results, "other", "python");
    holds_against_our_own(&results, "gopher", "go");
    holds_against_our_own(&results, "noder", "node");
    // The table says which language and client each group is.
    for label in [
        "other (python, aio-pika)",
        "gopher (go, segmentio/kafka-go)",
        "noder (node, kafkajs)",
    ] {
        assert!(stderr.contains(label), "{label}: {stderr}");
    }
    for b in results["brokers"].as_array().unwrap() {
        let broker = b["broker"].as_str().unwrap();
        refused_the_control_as_our_own(b);
        let noder = group(b, "noder");
        let f = &noder["failures"];
        let poison = count(&f["poison"]);
        assert!(poison > 0, "{broker}: no poison message in {f:#}");
        assert_eq!(count(&f["refused"]), count(&noder["decode_failed"]));
        assert_eq!(
            count(&f["dead_lettered"]),
            poison + count(&f["refused"]),
            "{broker}: {f:#}"
        );
        assert_eq!(count(&f["poison_lost"]), 0, "{broker}: {f:#}");
        assert_eq!(count(&f["dead_lettered_wrongly"]), 0, "{broker}: {f:#}");
    }
}

/// Every group of broker result `b` refused the negative control, as many
/// events as brokerbench's own typed decoder did, and no agent took an
/// event it should have refused or refused one it should have taken (the
/// ledger knows each message's version: that would be an agent error).
fn refused_the_control_as_our_own(b: &Value) {
    let broker = &b["broker"];
    let ours = count(&group(b, "own")["decode_failed"]);
    // 1 s of the 5 s at 500 msg/s.
    assert!(
        (400..=600).contains(&ours),
        "{broker}: our own refused {ours}"
    );
    for name in ["other", "gopher", "noder"] {
        let theirs = count(&group(b, name)["decode_failed"]);
        assert!(
            theirs.abs_diff(ours) <= ours / 20,
            "{broker} {name}: refused {theirs}, our own {ours}"
        );
    }
    no_agent_errors(b);
}

#[test]
fn an_agent_that_exits_mid_run_is_that_groups_failure_and_the_run_goes_on() {
    let _machine = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let scenario = beside_our_own("python", "\"jetstream\"").replace("\"other\"", "\"doomed\"");
    let (dir, path) = util::scenario_file(&scenario);
    let started = std::time::Instant::now();
    let run = util::run_command(&[path.to_str().unwrap()], dir.path())
        .arg("--json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its configuration, in its environment, names the group: kill -9 that
    // agent 3 s into the load. It is not on any command line.
    let agent = "\"group\":\"doomed\"";
    let doomed = || util::with_environment(agent);
    let found = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        !doomed().is_empty()
    });
    assert!(found, "the doomed agent never started");
    let on_command_lines = std::process::Command::new("pgrep")
        .args(["-f", agent])
        .status()
        .unwrap();
    assert!(
        !on_command_lines.success(),
        "an agent's configuration is on a command line"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pids = doomed();
    assert!(!pids.is_empty(), "no agent to kill");
    for pid in pids {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let out = run.wait_with_output().unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let results: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    util::validate_results(&results);
    // The run did not wait out the drain timeout (30 s) for a group that is gone.
    assert!(took.as_secs() < 45, "took {took:?}");
    assert_ne!(
        out.status.code(),
        Some(0),
        "a failed group fails the run: {stderr}"
    );
    let b = &results["brokers"][0];
    let own = group(b, "own");
    assert_eq!(count(&own["lost"]), 0, "{own:#}");
    assert!(
        count(&own["unique"]) >= count(&b["publish"]["confirmed"]),
        "{own:#}"
    );
    let doomed = group(b, "doomed");
    let failure = doomed["agent"]["failure"]
        .as_str()
        .unwrap_or_else(|| panic!("{doomed:#}"));
    assert!(failure.contains("exited"), "{failure}");
    // What it never got is still in the broker: backlog, not loss. What it
    // may have acknowledged without a receipt before it died is unverified.
    assert_eq!(count(&doomed["lost"]), 0, "{doomed:#}");
    assert!(count(&doomed["backlog"]) > 0, "{doomed:#}");
    let confirmed = count(&b["publish"]["confirmed"]);
    let accounted =
        count(&doomed["unique"]) + count(&doomed["backlog"]) + count(&doomed["unverified"]);
    assert!(
        accounted >= confirmed,
        "{accounted} of {confirmed}: {doomed:#}"
    );
    assert!(count(&b["errors"]["agent"]) >= 1, "{:#}", b["errors"]);
    assert!(
        stderr.contains("the python agent of group doomed exited"),
        "{stderr}"
    );
}

#[test]
fn each_agent_hashes_fates_and_decodes_events_as_brokerbench_does() {
    let agents = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("agents");
    let go = std::process::Command::new("go")
        .args(["test", "./..."])
        .current_dir(agents.join("go"))
        .output()
        .unwrap();
    assert!(
        go.status.success(),
        "{}{}",
        String::from_utf8_lossy(&go.stdout),
        String::from_utf8_lossy(&go.stderr)
    );
    let python = std::process::Command::new(agents.join("python/.venv/bin/python"))
        .args([
            agents.join("python/agent.py").to_str().unwrap(),
            "--self-check",
        ])
        .output()
        .unwrap();
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
}
