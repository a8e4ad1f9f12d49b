//! `brokerbench run` as a user runs it: real brokers, the real binary.

use crate::util;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use util::run_command;

const SHORT: &str = r#"
name = "short"
description = "a short run for the tests"

[load]
rate = 300
duration = "3s"
warmup = "500ms"
producers = 2
message_size = 600
keys = 50

[[consumers]]
group = "inventory"
[[consumers]]
group = "risk"
processing_time = "2ms"
"#;

fn scenario(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("scenario.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(args: &[&str], dir: &Path) -> Output {
    run_command(args, dir).output().unwrap()
}

/// The results file whose path the run printed (`results: PATH`).
fn saved_results(output: &str) -> Value {
    util::read_json(&util::results_path(output))
}

fn validate(results: &Value) {
    util::validate_results(results);
}

#[test]
fn every_broker_accounts_for_every_message_and_matches_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), SHORT);
    let out = run(&[path.to_str().unwrap(), "--json"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let results: Value =
        serde_json::from_slice(&out.stdout).expect("--json prints the results alone on stdout");
    validate(&results);
    assert_eq!(results["schema"], "brokerbench.results/v1");
    assert_eq!(results["complete"], true);

    // The file the run names holds the same results.
    assert_eq!(saved_results(&stderr), results);

    let brokers = results["brokers"].as_array().unwrap();
    let names: Vec<&str> = brokers
        .iter()
        .map(|b| b["broker"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rabbitmq", "jetstream", "kafka"]);
    for b in brokers {
        let name = &b["broker"];
        let publish = &b["publish"];
        let attempted = publish["attempted"].as_u64().unwrap();
        // 300 msg/s for 3.5 s (warmup included), exactly as paced.
        assert_eq!(attempted, 1050, "{name}: {publish}");
        assert_eq!(
            publish["confirmed"].as_u64(),
            Some(attempted),
            "{name}: {publish}"
        );
        assert!(
            (publish["rate_per_s"].as_f64().unwrap() - 300.0).abs() < 3.0,
            "{name}: {publish}"
        );
        assert_eq!(b["load"]["message_bytes"], 600);
        assert!(
            b["implementation"].as_str().unwrap().contains('.'),
            "{name}: version missing"
        );
        for g in b["groups"].as_array().unwrap() {
            for zero in [
                "lost",
                "duplicates",
                "unexpected",
                "recovered",
                "out_of_order",
            ] {
                assert_eq!(g[zero], 0, "{name} {}: {zero}", g["group"]);
            }
            assert_eq!(
                g["unique"].as_u64(),
                Some(attempted),
                "{name} {}",
                g["group"]
            );
        }
        let e2e = &b["latency_us"]["end_to_end"]["risk"];
        // Steady-phase messages only: 300/s for 3 s.
        assert_eq!(e2e["count"], 900, "{name}");
        let service = &b["latency_us"]["end_to_end_service"]["risk"];
        // Counted from the intended send time, never from later: corrected >= service time.
        assert!(
            e2e["p50"].as_u64() >= service["p50"].as_u64() && service["p50"].as_u64() > Some(0),
            "{name}: {e2e} {service}"
        );
        assert!(b["latency_us"]["publish"]["p50"].as_u64().unwrap() > 0);
        assert!(!b["settings"].as_object().unwrap().is_empty());
        // brokerbench measured itself over the steady window: 300/s
        // confirmed and 300/s delivered to each group, with time to spare.
        let harness = &b["harness"];
        assert!(
            harness["cpu_per_message_us"].as_f64().unwrap() > 0.0,
            "{name}: {harness}"
        );
        assert!(
            harness["messages"].as_u64().unwrap() >= 900,
            "{name}: {harness}"
        );
        assert_eq!(harness["limited"], false, "{name}: {harness}");
    }
    let kafka = brokers[2]["implementation"].as_str().unwrap();
    assert!(kafka.starts_with("Apache Kafka 4."), "{kafka}");
    assert!(brokers[2]["stand_in_for"].is_null(), "{}", brokers[2]);
}

#[test]
fn bad_scenarios_exit_2_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to, field) in [
        ("producers = 2", "producers = 0", "load.producers"),
        ("rate = 300", "rate = -1", "load.rate"),
        ("rate = 300", "rat = 300", "load.rat"),
        ("\"3s\"", "\"soon\"", "load.duration"),
        ("keys = 50", "keys = \"many\"", "load.keys"),
    ] {
        let path = scenario(dir.path(), &SHORT.replace(from, to));
        let out = run(&[path.to_str().unwrap()], dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{to}: {stderr}");
        let prefix = format!("{}:", path.display());
        assert!(
            stderr.contains(&prefix) && stderr.contains(&format!(": {field}: ")),
            "{to}: {stderr}"
        );
    }
    let path = scenario(
        dir.path(),
        &format!("brokers = [\"kafka\", \"activemq\"]\n{SHORT}"),
    );
    let out = run(&[path.to_str().unwrap()], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains(":1:") && stderr.contains("brokers") && stderr.contains("activemq"),
        "{stderr}"
    );
    let out = run(&["/no/such/scenario.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/scenario.toml"));
}

#[test]
fn a_broker_that_cannot_run_keeps_the_results_already_measured() {
    let dir = tempfile::tempdir().unwrap();
    // A "RabbitMQ" that dies at start-up, found on PATH like the real one.
    let sbin = dir.path().join("lib/rabbitmq_server-9.9.9/sbin");
    std::fs::create_dir_all(&sbin).unwrap();
    let fake = sbin.join("rabbitmq-server");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'cannot start: disk on fire' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (_links, only_nats) = util::path_with_only(&["nats-server"]);
    let path_var = format!("{}:{}:/usr/bin:/bin", sbin.display(), only_nats.display());

    let path = scenario(dir.path(), &SHORT.replace("\"3s\"", "\"1s\""));
    let out = run_command(
        &[path.to_str().unwrap(), "--brokers", "jetstream,rabbitmq"],
        dir.path(),
    )
    .env("PATH", path_var)
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("rabbitmq") && stderr.contains("amqp://guest:guest@127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("disk on fire"),
        "the broker's own words are shown: {stderr}"
    );
    let results = saved_results(&stdout);
    validate(&results);
    assert_eq!(results["complete"], false);
    assert!(results["incomplete_reason"]
        .as_str()
        .unwrap()
        .contains("rabbitmq"));
    assert_eq!(results["brokers"].as_array().unwrap().len(), 1);
    assert_eq!(results["brokers"][0]["broker"], "jetstream");
    assert_eq!(results["brokers"][0]["groups"][0]["lost"], 0);
}

#[test]
fn ctrl_c_drains_writes_incomplete_results_and_leaves_nothing_running() {
    interrupted_by(Signal::SIGINT, "SIGINT (Ctrl-C)");
}

#[test]
fn sigterm_is_named_and_stops_the_run_like_ctrl_c() {
    interrupted_by(Signal::SIGTERM, "SIGTERM");
}

/// Sends `signal` while the first broker's load runs: results are written,
/// marked incomplete with the signal's name, and nothing is left running.
fn interrupted_by(signal: Signal, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = scenario(dir.path(), &SHORT.replace("\"3s\"", "\"60s\""));
    let child = run_command(
        &[path.to_str().unwrap(), "--brokers", "jetstream,kafka"],
        dir.path(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = child.id();
    // Wait until the broker is running and load is flowing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !util::descendants(pid)
        .iter()
        .any(|p| p.command.contains("nats-server"))
    {
        assert!(Instant::now() < deadline, "nats-server never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    let started = util::descendants(pid);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
    let out = wait_with_deadline(child, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let results = saved_results(&stdout);
    validate(&results);
    assert_eq!(results["complete"], false);
    assert_eq!(
        results["incomplete_reason"],
        format!("interrupted by {name}").as_str()
    );
    let brokers = results["brokers"].as_array().unwrap();
    assert_eq!(brokers.len(), 1, "the second broker never starts");
    assert_eq!(brokers[0]["complete"], false);
    let sent = brokers[0]["publish"]["attempted"].as_u64().unwrap();
    assert!(sent > 300 && sent < 300 * 20, "{sent} sent before {name}");
    let left: Vec<_> = started.iter().filter(|p| util::is_alive(p)).collect();
    assert!(left.is_empty(), "still running: {left:#?}");
}

fn wait_with_deadline(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("brokerbench did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Whether `ready` held within `limit`, checked every 50 ms.
fn within(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn sigkill_leaves_no_process_and_keeps_the_finished_brokers_results() {
    // JetStream, then RabbitMQ, each with a Python agent's group beside
    // ours: brokerbench is killed by SIGKILL, which it cannot catch, while
    // RabbitMQ's load runs. Only the operating system can stop what it
    // started then (PR_SET_PDEATHSIG).
    let dir = tempfile::tempdir().unwrap();
    let text = SHORT.replace("\"3s\"", "\"6s\"").replace(
        "[[consumers]]\ngroup = \"risk\"",
        "[[consumers]]\ngroup = \"risk\"\nlanguage = \"python\"",
    );
    let path = scenario(dir.path(), &text);
    let log = dir.path().join("stderr.txt");
    let mut child = run_command(
        &[path.to_str().unwrap(), "--brokers", "jetstream,rabbitmq"],
        dir.path(),
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let pid = child.id();
    // Whether every one of `programs` runs, from one look at the processes.
    let running = |programs: &[&str]| {
        let now = util::descendants(pid);
        programs
            .iter()
            .all(|program| now.iter().any(|p| p.command.contains(program)))
    };
    let saved = || {
        let runs = std::fs::read_dir(dir.path().join("results")).ok()?;
        let run = runs.filter_map(Result::ok).next()?.path();
        Some(run.join("results.json")).filter(|p| p.is_file())
    };
    let said = || {
        format!(
            "{}\nrunning: {:#?}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            util::descendants(pid)
        )
    };
    // JetStream's results are written once it is done; then RabbitMQ
    // starts, and the agent once it is ready.
    let limit = Duration::from_secs(60);
    let mut exited = || child.try_wait().unwrap().is_some();
    let agent = within(limit, || {
        saved().is_some() && running(&["beam", "agent.py"]) || exited()
    });
    assert!(agent && !exited(), "RabbitMQ's agent never ran: {}", said());
    std::thread::sleep(Duration::from_secs(1));
    let started = util::descendants(pid);
    let commands: Vec<&str> = started.iter().map(|p| p.command.as_str()).collect();
    for program in ["beam", "epmd", "agent.py"] {
        assert!(
            commands.iter().any(|c| c.contains(program)),
            "no {program} among {commands:#?}"
        );
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let out = wait_with_deadline(child, Duration::from_secs(10));
    assert_eq!(out.status.code(), None, "killed by a signal");
    // The kernel sends the parent-death signals at once; a broker's own
    // children may take a moment to see their parent gone.
    assert!(
        within(Duration::from_secs(10), || !started
            .iter()
            .any(util::is_alive)),
        "still running after brokerbench was killed: {:#?}",
        started
            .iter()
            .filter(|p| util::is_alive(p))
            .collect::<Vec<_>>()
    );

    let results = util::read_json(&saved().unwrap());
    validate(&results);
    assert_eq!(results["complete"], false);
    let brokers = results["brokers"].as_array().unwrap();
    assert_eq!(brokers.len(), 1, "RabbitMQ never finished: {results:#}");
    assert_eq!(brokers[0]["broker"], "jetstream");
    assert_eq!(brokers[0]["complete"], true, "{:#}", brokers[0]);
    let checks = brokers[0]["checks"].as_array().unwrap();
    assert!(
        !checks.is_empty() && checks.iter().all(|c| c["passed"] == true),
        "{checks:#?}"
    );
}
