//! Three-node clusters of real brokers (docs/clusters.md), one broker's
//! cluster at a time: `scenarios/cluster-failover.toml` as written (the
//! node the broker reports leading is killed at 10 s and comes back at
//! 20 s), then the leader cut off from the other nodes by a partition for
//! 20 s (30 s on RabbitMQ and Kafka; each node in a network namespace),
//! then every node restarted in turn, in the same run on the same cluster;
//! and a replicated setting known to lose confirmed messages, caught.

use crate::util;

use serde_json::Value;

/// `scenarios/cluster-failover.toml` on `broker`, with the leader isolated
/// from 24 s for `cut_off` seconds, a rolling restart at `rolling_at`, and
/// the load lengthened to `duration` to hold it.
fn failover_then_rolling_restart(
    broker: &str,
    cut_off: u32,
    (rolling_at, duration): (&str, &str),
) -> util::Ran {
    let scenario = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/cluster-failover.toml"
    ))
    .unwrap();
    // The rolling restart may outlast the load: RabbitMQ's nodes took
    // 15-26 s each to come back here. The drain's deadline, which ends the
    // fault timeline, gives it 60 s past the load rather than 30.
    let longer = scenario.replace(
        "duration = \"30s\"",
        &format!("duration = \"{duration}\"\ndrain_timeout = \"60s\""),
    );
    let scenario = format!(
        "{longer}\n[[faults]]\nat = \"24s\"\naction = \"partition\"\nnode = \"leader\"\nduration = \"{cut_off}s\"\n\
         \n[[faults]]\nat = \"{rolling_at}\"\naction = \"rolling-restart\"\n"
    );
    util::run_scenario(&scenario, &["--brokers", broker])
}

fn lost(b: &Value) -> u64 {
    b["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["lost"].as_u64().unwrap())
        .sum()
}

/// What every broker's run must show: lost 0 through both faults; the
/// killed node was the leader reported just before the kill and another led
/// after it; publishing and every group recovered; every node rejoined, and
/// each node's unavailability in the rolling restart is reported.
fn assert_failover(ran: &util::Ran, name: &str, cut_off: u32) {
    let b = &ran.results["brokers"][0];
    let stderr = &ran.stderr;
    assert_eq!(b["broker"], name);
    assert_eq!(ran.results["scenario"]["cluster"]["nodes"], 3);
    assert_eq!(b["settings"]["replicas"], 3, "{name}: {}", b["settings"]);
    assert_eq!(lost(b), 0, "{name} lost confirmed orders:\n{stderr}");
    assert_eq!(b["complete"], true, "{name}:\n{stderr}");

    let nodes = b["nodes"].as_array().expect("the cluster's nodes");
    assert_eq!(nodes.len(), 3, "{name}: {nodes:?}");
    let kill = &b["faults"][0];
    assert_eq!(kill["action"], "kill");
    let number = kill["nodes"][0]["node"].as_u64().unwrap() as usize;
    assert_eq!(
        nodes[number - 1],
        kill["nodes"][0]["name"],
        "{name}: node numbers"
    );
    assert_eq!(kill["aimed_at"], "leader");
    let hit = &kill["nodes"][0];
    let leader_before = kill["leadership_before"]["leader"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: no leader reported before the kill: {kill:#}"));
    assert_eq!(hit["name"], leader_before, "{name}: {kill:#}");
    assert_eq!(hit["was_leader"], true, "{name}: {kill:#}");
    let new_leader = hit["new_leader"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: no other node reported leading: {kill:#}"));
    assert_ne!(new_leader, leader_before, "{name}");
    let elected = hit["new_leader_after_s"].as_f64().unwrap();
    let ready = hit["ready_after_s"].as_f64().unwrap();
    assert!(ready >= 10.0, "{name}: back after {ready} s, down for 10 s");
    assert!(
        hit["rejoined_after_s"].as_f64().is_some(),
        "{name}: {kill:#}"
    );
    let published = kill["publish_recovered_after_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: publishing never recovered: {kill:#}"));
    for group in ["inventory", "risk", "points"] {
        assert!(
            kill["delivery_recovered_after_s"][group].as_f64().is_some(),
            "{name}: {group} never recovered: {kill:#}"
        );
        assert_eq!(kill["messages"]["groups"][group]["lost"], 0, "{name}");
    }
    assert_ne!(kill["recovered"], false, "{name}: {kill:#}");

    assert_partition(b, name, f64::from(cut_off));

    let rolling = &b["faults"][2];
    assert_eq!(rolling["action"], "rolling-restart");
    let nodes = rolling["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{name}: every node restarted: {rolling:#}");
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node["node"], i + 1);
        assert!(node["ready_after_s"].as_f64().is_some(), "{name}: {node}");
        assert!(
            node["rejoined_after_s"].as_f64().is_some(),
            "{name}: {node}"
        );
    }
    assert!(rolling["error"].is_null(), "{name}: {rolling:#}");
    eprintln!(
        "{name}: leader {leader_before} killed, {new_leader} led {elected} s later; \
         publishing back after {published} s, node back after {ready} s; rolling restart \
         unavailability {:?} s",
        nodes
            .iter()
            .map(|n| n["ready_after_s"].as_f64().unwrap())
            .collect::<Vec<_>>()
    );
}

/// The leader isolated from the other nodes for `cut_off` seconds: it was
/// the leader the broker reported, another node was reported leading during
/// the partition (the majority elected one), the isolated node caught up
/// again after it healed, and nothing its window confirmed was lost.
fn assert_partition(b: &Value, name: &str, cut_off: f64) {
    let partition = &b["faults"][1];
    assert_eq!(partition["action"], "partition", "{name}");
    assert!(partition["error"].is_null(), "{name}: {partition:#}");
    let hit = &partition["nodes"][0];
    assert_eq!(hit["was_leader"], true, "{name}: {partition:#}");
    let before = partition["leadership_before"]["leader"].as_str().unwrap();
    let elected = hit["new_leader_after_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("{name}: no other leader reported: {partition:#}"));
    assert_ne!(hit["new_leader"].as_str(), Some(before), "{name}");
    assert!(
        elected < cut_off,
        "{name}: another node led only {elected} s after the isolation, after it healed at {cut_off} s: {partition:#}"
    );
    assert!(hit["ready_after_s"].as_f64().unwrap() >= cut_off, "{name}");
    assert!(
        hit["rejoined_after_s"].as_f64().is_some(),
        "{name}: {partition:#}"
    );
    for group in ["inventory", "risk", "points"] {
        assert_eq!(partition["messages"]["groups"][group]["lost"], 0, "{name}");
    }
    if name == "rabbitmq" {
        // Set shorter than the default 60 s for nodes in namespaces, and recorded.
        assert_eq!(b["settings"]["net_ticktime_s"], 5, "{}", b["settings"]);
    }
    eprintln!(
        "{name}: leader {before} isolated for {cut_off} s; {} led {elected} s later; publishing back \
         after {}; caught up {} s after the isolation",
        hit["new_leader"], partition["publish_recovered_after_s"], hit["rejoined_after_s"]
    );
}

#[test]
fn jetstream_cluster_loses_nothing_when_its_leader_dies_is_cut_off_or_nodes_restart_in_turn() {
    let ran = failover_then_rolling_restart("jetstream", 20, ("50s", "65s"));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_failover(&ran, "jetstream", 20);
}

#[test]
fn kafka_cluster_loses_nothing_when_its_leader_dies_is_cut_off_or_nodes_restart_in_turn() {
    // Kafka's majority led 7.7-12.7 s after the isolation, asked of each
    // node alone, on a machine kept busy beside it; 12.5 s at the least
    // when the isolated node is also the active controller (a new one
    // elected, then the isolated broker fenced after its 9 s session).
    // Asked through librdkafka, which asks any node, the isolated one
    // included, it seemed to lead until the heal (docs/clusters.md).
    let ran = failover_then_rolling_restart("kafka", 30, ("60s", "100s"));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let b = &ran.results["brokers"][0];
    assert_eq!(b["settings"]["min_insync_replicas"], 2);
    assert_failover(&ran, "kafka", 30);
    // Combined mode: which node was the KRaft quorum's active controller.
    let controller = &b["faults"][0]["leadership_before"]["controller"];
    assert!(
        b["nodes"].as_array().unwrap().contains(controller),
        "{controller} is not one of the nodes"
    );
}

#[test]
fn rabbitmq_cluster_loses_nothing_when_its_leader_dies_is_cut_off_or_nodes_restart_in_turn() {
    // RabbitMQ's majority took 14 s to elect a new leader on a quiet
    // machine and over 20 s in a clean clone's make test: 30 s.
    let ran = failover_then_rolling_restart("rabbitmq", 30, ("60s", "110s"));
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_failover(&ran, "rabbitmq", 30);
}

#[test]
fn kafka_acks_1_loses_confirmed_messages_when_the_leader_dies_and_the_check_fails() {
    // acks = 1: the partition leader confirms what it has written before
    // any follower has it. Killed, it takes those messages with it: a
    // follower becomes leader without them, and the old leader truncates
    // its log to the new leader's when it comes back. How many depends on
    // how far the followers lagged at the kill (milliseconds at 8000 msg/s),
    // so a run that loses none is tried again, five runs at most (a clean
    // clone's make test saw three in a row lose none, 2026-12-08).
    let scenario = r#"
        name = "lossy-cluster"
        brokers = ["kafka"]
        [cluster]
        nodes = 3
        [load]
        rate = 8000
        duration = "16s"
        producers = 2
        drain_timeout = "10s"
        final_read = "5s"
        [[consumers]]
        group = "g"
        [kafka]
        acks = "1"
        [recovery]
        backoff_max = "2s"
        [[faults]]
        at = "4s"
        action = "kill"
        node = "leader"
        duration = "8s"
    "#;
    let mut losses = Vec::new();
    for attempt in 1..=5 {
        let ran = util::run_scenario(scenario, &[]);
        let b = &ran.results["brokers"][0];
        assert_eq!(b["settings"]["acks"], "1");
        assert_eq!(b["settings"]["replicas"], 3);
        let lost = lost(b);
        losses.push(lost);
        if lost > 0 && b["faults"][0]["leadership_before"].is_null() {
            // Which node led could not be asked in time (the metadata
            // request queued behind 8000 msg/s on a loaded machine): the
            // kill was not aimed, so this run says nothing about aiming.
            eprintln!(
                "attempt {attempt}: lost {lost}, but the leader was not reported before the kill"
            );
            continue;
        }
        if lost > 0 {
            assert_eq!(ran.code, 1, "a lost message fails the run:\n{}", ran.stderr);
            let check = util::element(&b["checks"], "lost == 0", |c| c["check"] == "lost == 0");
            assert_eq!(check["passed"], false, "{check}");
            let kill = &b["faults"][0];
            assert_eq!(kill["nodes"][0]["was_leader"], true, "{kill:#}");
            assert!(
                kill["messages"]["groups"]["g"]["lost"].as_u64().unwrap() > 0,
                "the loss is in the kill's window: {kill:#}"
            );
            eprintln!("acks = 1 lost {lost} confirmed messages (attempt {attempt})");
            return;
        }
        eprintln!("attempt {attempt}: acks = 1 lost nothing this time");
    }
    panic!("acks = 1 lost nothing in five runs with the leader killed: {losses:?}");
}

#[test]
fn ctrl_c_during_a_cluster_run_leaves_no_node_running() {
    use std::time::{Duration, Instant};
    let scenario = r#"
        name = "cluster-interrupted"
        brokers = ["jetstream"]
        [cluster]
        nodes = 3
        [load]
        rate = 200
        duration = "60s"
        [[consumers]]
        group = "g"
    "#;
    let (dir, path) = util::scenario_file(scenario);
    let child = util::run_command(&[path.to_str().unwrap()], dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let servers = || {
        util::descendants(pid)
            .into_iter()
            .filter(|p| p.command.contains("nats-server"))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while servers().len() < 3 {
        assert!(Instant::now() < deadline, "three nats-servers never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(3));
    let started = util::descendants(pid);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("brokerbench did not exit within 60 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = started.iter().filter(|p| util::is_alive(p)).collect();
    assert!(left.is_empty(), "still running: {left:#?}");
}

#[test]
fn a_cluster_that_does_not_form_names_the_node_and_its_log_and_leaves_nothing() {
    use std::os::unix::fs::PermissionsExt;
    // nats-server as installed, except that node 2 cannot start.
    let real = which::which("nats-server").expect("make test installs nats-server");
    let bin = tempfile::tempdir().unwrap();
    let wrapper = bin.path().join("nats-server");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in\n  *node-2*) echo 'simulated: node 2 cannot open its store' >&2; exit 1;;\nesac\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let scenario = "name = \"unformed\"\nbrokers = [\"jetstream\"]\n[cluster]\nnodes = 3\n\
                    [load]\nrate = 10\nduration = \"5s\"\n";
    let (dir, file) = util::scenario_file(scenario);
    let out = util::run_command(&[file.to_str().unwrap()], dir.path())
        .env("PATH", path)
        .env_remove("BROKERBENCH_TOOLS")
        // The nodes' data under the test's directory, to find them by.
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("node 2 of the jetstream cluster"),
        "{stderr}"
    );
    assert!(
        stderr.contains("simulated: node 2 cannot open its store"),
        "{stderr}"
    );
    // Nodes 1 and 3 started, and were stopped with the run (killed: give
    // them a moment to be gone).
    let running = || {
        let found = std::process::Command::new("pgrep")
            .args(["-f", &dir.path().display().to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&found.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !running().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(running().is_empty(), "still running: {}", running());
}
