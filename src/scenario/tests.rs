use super::*;

const ORDERS: &str = r#"
name = "orders"
description = "order created: inventory, risk and points must all see it"
brokers = ["rabbitmq", "jetstream", "kafka"]

[load]
rate = 500
duration = "30s"
warmup = "5s"
producers = 2
message_size = 512
keys = 1000

[[consumers]]
group = "inventory"
[[consumers]]
group = "risk"
processing_time = "2ms"
[[consumers]]
group = "points"

[rabbitmq]
queue_type = "quorum"
persistent = true
prefetch = 100
[jetstream]
storage = "file"
[kafka]
partitions = 6
acks = "all"
compression = "none"
"#;

fn parse(text: &str) -> Result<Plan, ScenarioError> {
    Plan::parse(
        Path::new("scenarios/test.toml"),
        text,
        &Overrides::default(),
    )
}

/// The error for `text`, checked to name `field` at `line`.
fn error(text: &str, field: &str, line: usize) -> String {
    let err = parse(text).expect_err("should be refused");
    let shown = err.to_string();
    match &err {
        ScenarioError::At {
            file,
            line: l,
            column,
            field: f,
            ..
        } => {
            assert_eq!(f, field, "{shown}");
            assert_eq!(*l, line, "{shown}");
            assert!(*column >= 1);
            assert_eq!(file, Path::new("scenarios/test.toml"));
        }
        other => panic!("expected a located error, got {other:?}"),
    }
    assert!(
        shown.starts_with(&format!("scenarios/test.toml:{line}:")),
        "{shown}"
    );
    shown
}

#[test]
fn the_issue_example_parses_into_a_plan() {
    let plan = parse(ORDERS).unwrap();
    assert_eq!(plan.name, "orders");
    assert_eq!(plan.brokers, crate::kind::ALL);
    assert_eq!(plan.load.rate, 500.0);
    assert_eq!(plan.load.duration, Duration::from_secs(30));
    assert_eq!(plan.load.warmup, Duration::from_secs(5));
    assert_eq!(plan.load.producers, 2);
    assert_eq!(plan.consumers.len(), 3);
    assert_eq!(plan.consumers[1].processing_time, Duration::from_millis(2));
    assert_eq!(plan.rabbitmq.queue_type, QueueType::Quorum);
    assert_eq!(plan.kafka.acks, Acks::All);
    assert_eq!(plan.jetstream.storage, Storage::File);
}

#[test]
fn the_shipped_scenarios_parse() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios")).unwrap() {
        let path = entry.unwrap().path();
        Plan::load(&path, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let plan =
        parse("name = \"x\"\n[load]\nrate = 0\nduration = \"1s\"\n[[consumers]]\ngroup = \"g\"\n")
            .unwrap();
    assert!(!plan.load.open_loop());
    assert_eq!(plan.load.producers, 1);
    assert_eq!(plan.load.message_size, 512);
    assert_eq!(plan.load.warmup, Duration::ZERO);
    assert_eq!(plan.consumers[0].concurrency, 16);
    assert_eq!(plan.rabbitmq.queue_type, QueueType::Quorum);
    assert!(plan.rabbitmq.persistent);
}

#[test]
fn unknown_field_is_named() {
    let shown = error(&ORDERS.replace("rate = 500", "rat = 500"), "load.rat", 7);
    assert!(shown.contains("unknown field"), "{shown}");
}

#[test]
fn wrong_type_is_named() {
    let shown = error(
        &ORDERS.replace("producers = 2", "producers = \"two\""),
        "load.producers",
        10,
    );
    assert!(shown.contains("invalid type"), "{shown}");
}

#[test]
fn zero_producers_is_refused() {
    let shown = error(
        &ORDERS.replace("producers = 2", "producers = 0"),
        "load.producers",
        10,
    );
    assert!(shown.contains("from 1"), "{shown}");
}

#[test]
fn negative_rate_is_refused() {
    let shown = error(&ORDERS.replace("rate = 500", "rate = -5"), "load.rate", 7);
    assert!(shown.contains("0 (as fast as possible) or more"), "{shown}");
}

#[test]
fn unparseable_duration_is_named() {
    let shown = error(
        &ORDERS.replace("\"2ms\"", "\"2 fortnights-ish\""),
        "consumers[1].processing_time",
        18,
    );
    assert!(shown.contains("not a duration"), "{shown}");
    error(
        &ORDERS.replace("duration = \"30s\"", "duration = \"thirty\""),
        "load.duration",
        8,
    );
}

#[test]
fn unknown_broker_is_named() {
    let shown = error(&ORDERS.replace("\"kafka\"]", "\"kafak\"]"), "brokers", 4);
    assert!(shown.contains("unknown broker 'kafak'"), "{shown}");
}

#[test]
fn unknown_setting_value_is_named() {
    let shown = error(
        &ORDERS.replace("queue_type = \"quorum\"", "queue_type = \"stream\""),
        "rabbitmq.queue_type",
        23,
    );
    assert!(
        shown.contains("quorum") && shown.contains("classic"),
        "{shown}"
    );
}

#[test]
fn the_default_exchange_cannot_fan_out() {
    let text = ORDERS.replace(
        "queue_type = \"quorum\"",
        "queue_type = \"quorum\"\nexchange = \"default\"",
    );
    let shown = error(&text, "rabbitmq.exchange", 24);
    assert!(shown.contains("consumer groups"), "{shown}");
    // One group, or none: the default exchange reaches its one queue.
    let one = "name = \"x\"\n[load]\nrate = 1\nduration = \"1s\"\n[[consumers]]\ngroup = \"g\"\n[rabbitmq]\nexchange = \"default\"\n";
    assert_eq!(parse(one).unwrap().rabbitmq.exchange, Exchange::Default);
}

#[test]
fn missing_required_field_is_named() {
    let err = parse("name = \"x\"\n[load]\nrate = 1\n[[consumers]]\ngroup = \"g\"\n").unwrap_err();
    assert_eq!(err.field(), Some("load.duration"), "{err}");
}

#[test]
fn duplicate_groups_are_refused_and_no_group_publishes_only() {
    error(
        &ORDERS.replace("group = \"points\"", "group = \"risk\""),
        "consumers[2].group",
        20,
    );
    let plan = parse("name = \"x\"\n[load]\nrate = 1\nduration = \"1s\"\n").unwrap();
    assert!(plan.publish_only());
}

#[test]
fn the_encoding_is_json_unless_the_file_says_binary() {
    assert_eq!(parse(ORDERS).unwrap().load.encoding, Encoding::Json);
    let binary = ORDERS.replace("producers = 2", "producers = 2\nencoding = \"binary\"");
    assert_eq!(parse(&binary).unwrap().load.encoding, Encoding::Binary);
    let shown = error(
        &ORDERS.replace("producers = 2", "producers = 2\nencoding = \"protobuf\""),
        "load.encoding",
        11,
    );
    assert!(
        shown.contains("json") && shown.contains("binary"),
        "{shown}"
    );
}

#[test]
fn the_event_version_evolves_on_a_timeline_of_the_measured_phase() {
    assert_eq!(parse(ORDERS).unwrap().load.event_version, EventVersion::V1);
    let evolving = ORDERS.replace(
        "keys = 1000\n",
        "keys = 1000\nevent_version = \"v1\"\n[[load.evolution]]\nat = \"10s\"\nevent_version = \"v2\"\n[[load.evolution]]\nat = \"20s\"\nevent_version = \"v2-broken\"\n",
    );
    let load = parse(&evolving).unwrap().load;
    let at = |s: u64| load.event_version_at(Some(Duration::from_secs(s)));
    assert_eq!(load.event_version_at(None), EventVersion::V1, "warmup");
    assert_eq!(
        [at(0), at(9), at(10), at(19), at(20), at(29)],
        [
            EventVersion::V1,
            EventVersion::V1,
            EventVersion::V2,
            EventVersion::V2,
            EventVersion::V2Broken,
            EventVersion::V2Broken
        ]
    );
    // Out of order, after the load, an unknown version, or binary messages.
    let second = "load.evolution[1].at";
    error(&evolving.replace("\"20s\"", "\"5s\""), second, 18);
    let shown = error(&evolving.replace("\"20s\"", "\"30s\""), second, 18);
    assert!(shown.contains("end of the load"), "{shown}");
    let shown = error(
        &evolving.replace("\"v2-broken\"", "\"v3\""),
        "load.evolution[1].event_version",
        19,
    );
    assert!(shown.contains("v2-broken"), "{shown}");
    let binary = evolving.replace("producers = 2", "producers = 2\nencoding = \"binary\"");
    let shown = error(
        &binary.replace("event_version = \"v1\"\n", ""),
        "load.evolution[0].at",
        15,
    );
    assert!(shown.contains("json"), "{shown}");
}

#[test]
fn overrides_replace_the_file_values() {
    let overrides = Overrides {
        brokers: Some(vec!["kafka".parse::<BrokerKind>().unwrap()]),
        rate: Some(0.0),
        duration: Some(Duration::from_secs(3)),
        thresholds: Vec::new(),
        publish_only: true,
        find_max: true,
        slo: vec!["publish_p99<50ms".into(), "kafka.publish_p99<20ms".into()],
        keep_data: true,
    };
    let plan = Plan::parse(Path::new("t.toml"), ORDERS, &overrides).unwrap();
    assert!(plan.keep_data && plan.find_max_step(1.0).keep_data);
    assert!(
        !Plan::parse(Path::new("t.toml"), ORDERS, &Overrides::default())
            .unwrap()
            .keep_data
    );
    assert_eq!(plan.brokers, ["kafka".parse::<BrokerKind>().unwrap()]);
    assert_eq!(plan.load.rate, 0.0);
    assert_eq!(plan.load.duration, Duration::from_secs(3));
    assert!(plan.consumers.is_empty() && plan.publish_only());
    let search = plan.find_max.as_ref().unwrap();
    assert_eq!(search.slo, overrides.slo);
    assert_eq!(search.limits.iter().count(), 2);
    // A step: at most 1 s of warmup and 5 s of load, no faults.
    let step = plan.find_max_step(2_000.0);
    assert_eq!(step.load.rate, 2_000.0);
    assert!(step.load.duration <= Duration::from_secs(5) && step.faults.is_empty());
    for (slo, says) in [
        ("end_to_end_p99=50ms", "is not METRIC<VALUE"),
        ("rate_ratio<0.9", "cannot be an SLO"),
        ("recovery<5s", "cannot be an SLO"),
        ("end_to_end_p99<soon", "not a duration"),
    ] {
        let bad = Overrides {
            find_max: true,
            slo: vec![slo.into()],
            ..Overrides::default()
        };
        let err = Plan::parse(Path::new("t.toml"), ORDERS, &bad).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("--slo:") && text.contains(says),
            "{slo}: {text}"
        );
    }
    // A group's latency cannot be an objective of a run with no group.
    let publishing = Overrides {
        slo: vec!["end_to_end_p99<50ms".into()],
        ..overrides.clone()
    };
    let err = Plan::parse(Path::new("t.toml"), ORDERS, &publishing).unwrap_err();
    assert!(
        err.to_string().contains("measured per consumer group"),
        "{err}"
    );
    let bad = Overrides {
        rate: Some(-1.0),
        ..Overrides::default()
    };
    let err = Plan::parse(Path::new("t.toml"), ORDERS, &bad).unwrap_err();
    assert!(err.to_string().starts_with("--rate:"), "{err}");
}

const FAULTS: &str = r#"
name = "faults"
[load]
rate = 500
duration = "20s"
[[consumers]]
group = "g"
[recovery]
on_unconfirmed = "drop"
[[faults]]
at = "5s"
action = "kill"
duration = "3s"
[[faults]]
at = "12s"
action = "pause"
duration = "2s"
[[faults]]
at = "16s"
action = "restart"
"#;

#[test]
fn faults_form_a_timeline() {
    let plan = parse(FAULTS).unwrap();
    let timeline: Vec<_> = plan
        .faults
        .iter()
        .map(|f| (f.at.as_secs(), f.action, f.duration.as_secs()))
        .collect();
    assert_eq!(
        timeline,
        [
            (5, FaultAction::Kill, 3),
            (12, FaultAction::Pause, 2),
            (16, FaultAction::Restart, 0)
        ]
    );
    assert_eq!(plan.recovery.on_unconfirmed, Unconfirmed::Drop);
    assert_eq!(plan.recovery.backoff_max, Duration::from_secs(8));
    let plain = parse(ORDERS).unwrap();
    assert!(plain.faults.is_empty());
    assert_eq!(plain.recovery.on_unconfirmed, Unconfirmed::Retry);
}

#[test]
fn bad_faults_are_named() {
    let shown = error(
        &FAULTS.replace("at = \"16s\"", "at = \"25s\""),
        "faults[2].at",
        19,
    );
    assert!(shown.contains("after the end of the load"), "{shown}");
    let shown = error(
        &FAULTS.replace("at = \"12s\"", "at = \"6s\""),
        "faults[1].at",
        15,
    );
    assert!(
        shown.contains("before the previous fault is over"),
        "{shown}"
    );
    let shown = error(
        &FAULTS.replace("action = \"kill\"", "action = \"unplug\""),
        "faults[0].action",
        12,
    );
    assert!(shown.contains("kill") && shown.contains("pause"), "{shown}");
    let shown = error(
        &FAULTS.replace(
            "action = \"restart\"",
            "action = \"restart\"\nduration = \"1s\"",
        ),
        "faults[2].duration",
        21,
    );
    assert!(shown.contains("no duration"), "{shown}");
    let no_pause_length = FAULTS.replace(
        "action = \"pause\"\nduration = \"2s\"",
        "action = \"pause\"",
    );
    error(&no_pause_length, "faults[1].action", 16);
    error(
        &FAULTS.replace("on_unconfirmed = \"drop\"", "on_unconfirmed = \"maybe\""),
        "recovery.on_unconfirmed",
        9,
    );
}

/// FAULTS with its pause (lines 15-17) replaced by `fault`.
fn with_network_fault(fault: &str) -> String {
    FAULTS.replace("action = \"pause\"\nduration = \"2s\"", fault)
}

#[test]
fn network_faults_are_typed_and_their_mistakes_named() {
    let plan = parse(&with_network_fault(
        "action = \"delay\"\nlatency = \"20ms\"\njitter = \"5ms\"\nduration = \"2s\"",
    ))
    .unwrap();
    let delay = &plan.faults[1];
    assert_eq!(delay.action, FaultAction::Delay);
    assert_eq!(
        delay.delay,
        Some(Delay {
            latency: Duration::from_millis(20),
            jitter: Duration::from_millis(5)
        })
    );
    assert!(plan.has_network_faults() && !parse(FAULTS).unwrap().has_network_faults());
    let cut = parse(&with_network_fault("action = \"cut\"")).unwrap();
    assert_eq!(
        (cut.faults[1].action, cut.faults[1].duration),
        (FaultAction::Cut, Duration::ZERO)
    );
    // A delay needs a latency, no more than 10 s, and jitter within it.
    let shown = error(
        &with_network_fault("action = \"delay\"\nduration = \"2s\""),
        "faults[1].action",
        16,
    );
    assert!(shown.contains("latency"), "{shown}");
    let shown = error(
        &with_network_fault("action = \"delay\"\nlatency = \"11s\"\nduration = \"2s\""),
        "faults[1].latency",
        17,
    );
    assert!(shown.contains("at most"), "{shown}");
    let shown = error(
        &with_network_fault(
            "action = \"delay\"\nlatency = \"5ms\"\njitter = \"6ms\"\nduration = \"2s\"",
        ),
        "faults[1].jitter",
        18,
    );
    assert!(shown.contains("more than the latency"), "{shown}");
    // Only a delay has a latency; a black hole needs a duration.
    let shown = error(
        &with_network_fault("action = \"cut\"\nlatency = \"5ms\""),
        "faults[1].latency",
        17,
    );
    assert!(shown.contains("only a delay"), "{shown}");
    error(
        &with_network_fault("action = \"blackhole\""),
        "faults[1].action",
        16,
    );
    // Network faults reach every client connection; they are not aimed.
    let on_cluster = with_network_fault("action = \"cut\"\nnode = \"leader\"")
        .replace("[recovery]", "[cluster]\nnodes = 3\n[recovery]");
    let shown = error(&on_cluster, "faults[1].node", 19);
    assert!(shown.contains("every client connection"), "{shown}");
    // A confirm timeout of at least 1 s.
    let timeout = FAULTS.replace("on_unconfirmed = \"drop\"", "confirm_timeout = \"3s\"");
    assert_eq!(
        parse(&timeout).unwrap().recovery.confirm_timeout,
        Some(Duration::from_secs(3))
    );
    error(
        &FAULTS.replace("on_unconfirmed = \"drop\"", "confirm_timeout = \"10ms\""),
        "recovery.confirm_timeout",
        9,
    );
}

#[test]
fn a_cluster_aims_faults_at_nodes() {
    assert_eq!(parse(FAULTS).unwrap().cluster.nodes, 1);
    assert!(parse(FAULTS)
        .unwrap()
        .faults
        .iter()
        .all(|f| f.node.is_none()));
    let cluster = format!("{FAULTS}[cluster]\nnodes = 3\n")
        .replace("action = \"pause\"", "action = \"pause\"\nnode = 2")
        .replace("action = \"restart\"", "action = \"rolling-restart\"");
    let plan = parse(&cluster).unwrap();
    assert_eq!(plan.cluster.nodes, 3);
    let nodes: Vec<_> = plan.faults.iter().map(|f| (f.action, f.node)).collect();
    assert_eq!(
        nodes,
        [
            (FaultAction::Kill, Some(NodeChoice::Leader)),
            (FaultAction::Pause, Some(NodeChoice::Number(2))),
            (FaultAction::RollingRestart, None),
        ]
    );
    let follower = cluster.replace("node = 2", "node = \"follower\"");
    assert_eq!(
        parse(&follower).unwrap().faults[1].node,
        Some(NodeChoice::Follower)
    );
    // The plan in results reads back the same.
    let json = serde_json::to_string(&plan).unwrap();
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back.cluster, plan.cluster);
    assert_eq!(back.faults[1].node, Some(NodeChoice::Number(2)));
}

#[test]
fn a_partition_isolates_a_node_of_a_cluster_for_a_while() {
    let cluster = format!("{FAULTS}[cluster]\nnodes = 3\n");
    let plan = parse(&cluster.replace("action = \"pause\"", "action = \"partition\"")).unwrap();
    let partition = &plan.faults[1];
    assert_eq!(partition.action, FaultAction::Partition);
    assert_eq!(partition.node, Some(NodeChoice::Leader));
    assert_eq!(partition.duration, Duration::from_secs(2));
    assert!(plan.has_partitions() && !plan.has_network_faults());
    // A cluster's, with a duration.
    let shown = error(
        &FAULTS.replace("action = \"pause\"", "action = \"partition\""),
        "faults[1].action",
        16,
    );
    assert!(shown.contains("needs a cluster"), "{shown}");
    let endless = cluster.replace(
        "action = \"pause\"\nduration = \"2s\"",
        "action = \"partition\"",
    );
    let shown = error(&endless, "faults[1].action", 16);
    assert!(shown.contains("needs a `duration`"), "{shown}");
}

#[test]
fn bad_cluster_faults_are_named() {
    let cluster = format!("{FAULTS}[cluster]\nnodes = 3\n");
    let shown = error(
        &cluster.replace("action = \"pause\"", "action = \"pause\"\nnode = 4"),
        "faults[1].node",
        17,
    );
    assert!(shown.contains("from 1 to 3"), "{shown}");
    let shown = error(
        &cluster.replace("action = \"pause\"", "action = \"pause\"\nnode = \"boss\""),
        "faults[1].node",
        17,
    );
    assert!(shown.contains("leader"), "{shown}");
    let shown = error(
        &FAULTS.replace(
            "action = \"pause\"",
            "action = \"pause\"\nnode = \"leader\"",
        ),
        "faults[1].node",
        17,
    );
    assert!(shown.contains("single node"), "{shown}");
    let shown = error(
        &FAULTS.replace("action = \"restart\"", "action = \"rolling-restart\""),
        "faults[2].action",
        20,
    );
    assert!(shown.contains("needs a cluster"), "{shown}");
    let shown = error(
        &cluster.replace(
            "action = \"restart\"",
            "action = \"rolling-restart\"\nnode = 1",
        ),
        "faults[2].node",
        21,
    );
    assert!(shown.contains("every node in turn"), "{shown}");
    let shown = error(
        &cluster.replace("nodes = 3", "nodes = 2"),
        "cluster.nodes",
        22,
    );
    assert!(shown.contains("no majority"), "{shown}");
    let shown = error(
        &cluster.replace("nodes = 3", "nodes = 9"),
        "cluster.nodes",
        22,
    );
    assert!(shown.contains("from 1 to 5"), "{shown}");
    let shown = error(
        &cluster.replace("group = \"g\"", "group = \"g\"\nlanguage = \"go\""),
        "consumers[0].language",
        8,
    );
    assert!(shown.contains("cluster"), "{shown}");
}

const THRESHOLDS: &str = r#"
[thresholds]
end_to_end_p99 = "50ms"
publish_p99 = "20ms"
rate_ratio = 0.99
lost = 0
duplicates = 100
recovery = "10s"
[thresholds.kafka]
end_to_end_p99 = "200ms"
"#;

#[test]
fn thresholds_are_typed_and_a_broker_table_wins_for_its_broker() {
    use thresholds::{Limit, Metric};
    let plan = parse(&format!("{ORDERS}{THRESHOLDS}")).unwrap();
    let t = &plan.thresholds;
    assert_eq!(t.all.len(), 6);
    assert_eq!(t.all[&Metric::RateRatio], Limit::Ratio(0.99));
    assert_eq!(t.all[&Metric::Duplicates], Limit::Count(100));
    assert_eq!(
        t.all[&Metric::Recovery],
        Limit::Time(Duration::from_secs(10))
    );
    let kafka = t.for_broker("kafka".parse().unwrap());
    let rabbitmq = t.for_broker("rabbitmq".parse().unwrap());
    assert_eq!(
        kafka[&Metric::EndToEndP99],
        Limit::Time(Duration::from_millis(200))
    );
    assert_eq!(
        rabbitmq[&Metric::EndToEndP99],
        Limit::Time(Duration::from_millis(50))
    );
    assert_eq!(kafka.len(), rabbitmq.len());
    // The resolved plan, as results carry it, reads back the same.
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["thresholds"]["all"]["end_to_end_p99"], "50ms");
    assert_eq!(
        json["thresholds"]["per_broker"]["kafka"]["end_to_end_p99"],
        "200ms"
    );
    let back: Plan = serde_json::from_value(json).unwrap();
    assert_eq!(&back.thresholds, t);
}

#[test]
fn bad_thresholds_are_named() {
    let with = |extra: &str| format!("{ORDERS}[thresholds]\n{extra}");
    // The line of the first entry under [thresholds].
    let line = ORDERS.lines().count() + 2;
    let shown = error(
        &with("end_to_end_p98 = \"5ms\"\n"),
        "thresholds.end_to_end_p98",
        line,
    );
    assert!(shown.contains("one of publish_p50"), "{shown}");
    let shown = error(&with("lost = -1\n"), "thresholds.lost", line);
    assert!(shown.contains("0 or more"), "{shown}");
    error(&with("lost = 1.5\n"), "thresholds.lost", line);
    let shown = error(&with("publish_p99 = 20\n"), "thresholds.publish_p99", line);
    assert!(shown.contains("duration"), "{shown}");
    error(
        &with("publish_p99 = \"fast\"\n"),
        "thresholds.publish_p99",
        line,
    );
    let shown = error(&with("rate_ratio = 1.5\n"), "thresholds.rate_ratio", line);
    assert!(shown.contains("at most 1"), "{shown}");
    error(&with("recovery = true\n"), "thresholds.recovery", line);
    let shown = error(
        &with("[thresholds.kafak]\nlost = 0\n"),
        "thresholds.kafak",
        line,
    );
    assert!(shown.contains("unknown broker 'kafak'"), "{shown}");
    error(
        &with("[thresholds.kafka]\nlots = 0\n"),
        "thresholds.kafka.lots",
        line + 1,
    );
    error(
        &with("[thresholds.kafka.rabbitmq]\nlost = 0\n"),
        "thresholds.kafka.rabbitmq",
        line,
    );
    let closed = ORDERS.replace("rate = 500", "rate = 0");
    let shown = error(
        &format!("{closed}[thresholds]\nrate_ratio = 0.9\n"),
        "thresholds.rate_ratio",
        line,
    );
    assert!(shown.contains("needs a target rate"), "{shown}");
    let shown = error(
        &format!("{closed}[thresholds.kafka]\nrate_ratio = 0.9\n"),
        "thresholds.kafka.rate_ratio",
        line,
    );
    assert!(shown.contains("needs a target rate"), "{shown}");
}

#[test]
fn threshold_flags_set_and_replace_limits() {
    use thresholds::{Limit, Metric};
    let flags = |list: &[&str]| Overrides {
        thresholds: list.iter().map(|s| s.to_string()).collect(),
        ..Overrides::default()
    };
    let text = format!("{ORDERS}{THRESHOLDS}");
    let plan = Plan::parse(
        Path::new("t.toml"),
        &text,
        &flags(&[
            "end_to_end_p99=75ms",
            "kafka.lost=3",
            "rabbitmq.rate_ratio=0.5",
        ]),
    )
    .unwrap();
    let t = &plan.thresholds;
    assert_eq!(
        t.all[&Metric::EndToEndP99],
        Limit::Time(Duration::from_millis(75))
    );
    let kafka = t.for_broker("kafka".parse().unwrap());
    assert_eq!(kafka[&Metric::Lost], Limit::Count(3));
    assert_eq!(
        kafka[&Metric::EndToEndP99],
        Limit::Time(Duration::from_millis(200)),
        "the file's broker table still wins over a flag for all brokers"
    );
    let rabbitmq = t.for_broker("rabbitmq".parse().unwrap());
    assert_eq!(rabbitmq[&Metric::RateRatio], Limit::Ratio(0.5));
    for (bad, says) in [
        ("p99", "METRIC=VALUE"),
        ("p99=5ms", "unknown threshold 'p99'"),
        ("kafak.lost=0", "unknown broker 'kafak'"),
        ("lost=some", "whole number"),
        ("publish_p99=0ms", "more than 0"),
    ] {
        let err = Plan::parse(Path::new("t.toml"), &text, &flags(&[bad])).unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("--threshold: "), "{shown}");
        assert!(shown.contains(says), "{bad}: {shown}");
    }
    let closed = Overrides {
        rate: Some(0.0),
        ..Overrides::default()
    };
    let err = Plan::parse(Path::new("t.toml"), &text, &closed).unwrap_err();
    assert!(
        err.to_string().starts_with("--rate: rate_ratio needs"),
        "{err}"
    );
    // A closed-loop file given a target rate on the command line has one.
    let closed_file = text.replace("rate = 500", "rate = 0");
    let open = Overrides {
        rate: Some(300.0),
        ..Overrides::default()
    };
    let plan = Plan::parse(Path::new("t.toml"), &closed_file, &open).unwrap();
    assert_eq!(plan.load.rate, 300.0);
}

/// ORDERS with failures in risk and a `[dead_letter]` table.
fn failing() -> String {
    ORDERS.replace(
        "processing_time = \"2ms\"\n",
        "processing_time = \"2ms\"\n[consumers.failures]\npoison = 0.01\ntransient = 0.05\ntransient_attempts = 2\n",
    ) + "[dead_letter]\nmax_deliveries = 5\nretry_delay = \"250ms\"\n"
}

/// The 1-based line of the first line of `text` that starts with `start`.
fn line_of(text: &str, start: &str) -> usize {
    text.lines().position(|l| l.starts_with(start)).unwrap() + 1
}

#[test]
fn failures_and_dead_letters_parse_into_the_plan() {
    let plan = parse(&failing()).unwrap();
    assert_eq!(
        plan.consumers[1].failures,
        Some(Failures {
            poison: 0.01,
            transient: 0.05,
            transient_attempts: 2
        })
    );
    assert!(plan.consumers[0].failures.is_none() && plan.consumers[2].failures.is_none());
    assert!(plan.has_failures());
    assert_eq!(
        plan.dead_letter,
        DeadLetter {
            max_deliveries: 5,
            retry_delay: Duration::from_millis(250)
        }
    );
    // Defaults: at least once, the exchange declared, +TERM at the last delivery.
    assert_eq!(
        plan.rabbitmq.dead_letter_strategy,
        DeadLetterStrategy::AtLeastOnce
    );
    assert!(plan.rabbitmq.declare_dead_letter_exchange);
    assert!(plan.jetstream.terminate_last_delivery);
    // Without failures nothing changes.
    let plain = parse(ORDERS).unwrap();
    assert!(!plain.has_failures());
    assert_eq!(plain.dead_letter, DeadLetter::default());
}

#[test]
fn bad_failures_and_dead_letters_are_named() {
    let text = failing();
    let cases = [
        (
            "poison = 0.01",
            "poison = 1.5",
            "consumers[1].failures.poison",
            "from 0 to 1",
        ),
        (
            "poison = 0.01",
            "poison = -0.1",
            "consumers[1].failures.poison",
            "from 0 to 1",
        ),
        (
            "transient = 0.05",
            "transient = 0.995",
            "consumers[1].failures.transient",
            "more than 1",
        ),
        (
            "transient_attempts = 2",
            "transient_attempts = 5",
            "consumers[1].failures.transient_attempts",
            "would be dead-lettered",
        ),
        (
            "transient_attempts = 2",
            "transient_attempts = 0",
            "consumers[1].failures.transient_attempts",
            "from 1",
        ),
        (
            "transient_attempts = 2",
            "attempts = 2",
            "consumers[1].failures.attempts",
            "unknown field",
        ),
        (
            "max_deliveries = 5",
            "max_deliveries = 0",
            "dead_letter.max_deliveries",
            "from 1",
        ),
        (
            "max_deliveries = 5",
            "max_deliveries = 101",
            "dead_letter.max_deliveries",
            "from 1 to 100",
        ),
        (
            "retry_delay = \"250ms\"",
            "retry_delay = \"soon\"",
            "dead_letter.retry_delay",
            "not a duration",
        ),
        (
            "retry_delay = \"250ms\"",
            "retry_delay = \"2h\"",
            "dead_letter.retry_delay",
            "at most 1h",
        ),
    ];
    for (from, to, field, says) in cases {
        let line = line_of(&text, from);
        let shown = error(&text.replace(from, to), field, line);
        assert!(shown.contains(says), "{to}: {shown}");
    }
    // Set-ups whose dead letters brokerbench could not account for.
    let lossless_typo = text.replace(
        "prefetch = 100",
        "prefetch = 100\ndeclare_dead_letter_exchange = false",
    );
    let line = line_of(&lossless_typo, "declare_dead_letter_exchange");
    let shown = error(
        &lossless_typo,
        "rabbitmq.declare_dead_letter_exchange",
        line,
    );
    assert!(shown.contains("at-most-once"), "{shown}");
    assert!(parse(&lossless_typo.replace(
        "prefetch = 100",
        "prefetch = 100\ndead_letter_strategy = \"at-most-once\""
    ))
    .is_ok());
    let unconfirmed = text.replace("acks = \"all\"", "acks = \"0\"");
    let shown = error(&unconfirmed, "kafka.acks", line_of(&unconfirmed, "acks"));
    assert!(shown.contains("must be confirmed"), "{shown}");
    // A [dead_letter] table with no group that fails anything is a mistake.
    let text = ORDERS.to_string() + "[dead_letter]\nmax_deliveries = 3\n";
    let shown = error(&text, "dead_letter", line_of(&text, "[dead_letter]"));
    assert!(shown.contains("no group fails messages"), "{shown}");
}

#[test]
fn a_messages_fate_depends_only_on_its_number_and_group() {
    let f = Failures {
        poison: 0.01,
        transient: 0.05,
        transient_attempts: 2,
    };
    let fates = |group: &str| -> Vec<Fate> {
        (0..2)
            .flat_map(|p| (0..50_000).map(move |s| (p, s)))
            .map(|(p, s)| f.fate(group, p, s))
            .collect()
    };
    let risk = fates("risk");
    assert_eq!(
        risk,
        fates("risk"),
        "the same on every call (every broker, every run)"
    );
    let share = |fate| risk.iter().filter(|f| **f == fate).count() as f64 / risk.len() as f64;
    assert!(
        (share(Fate::Poison) - 0.01).abs() < 0.002,
        "{}",
        share(Fate::Poison)
    );
    assert!(
        (share(Fate::Transient) - 0.05).abs() < 0.004,
        "{}",
        share(Fate::Transient)
    );
    // Another group fails other messages.
    let other = fates("billing");
    let same_poison = risk
        .iter()
        .zip(&other)
        .filter(|(a, b)| **a == Fate::Poison && **b == Fate::Poison)
        .count();
    assert!(
        same_poison < 30,
        "{same_poison} messages poison in both groups"
    );
    // Transient fails its first attempts, poison all, the rest none.
    assert!(f.fails(Fate::Transient, 0) && f.fails(Fate::Transient, 1));
    assert!(!f.fails(Fate::Transient, 2));
    assert!(f.fails(Fate::Poison, 99) && !f.fails(Fate::Fine, 0));
}

#[test]
fn kafka_producer_settings_default_as_before_and_idempotence_needs_acks_all() {
    let kafka = parse(ORDERS).unwrap().kafka;
    assert!(kafka.idempotent);
    assert_eq!(kafka.linger, Duration::from_millis(5));
    assert_eq!(
        (kafka.batch_size, kafka.batch_messages),
        (1_000_000, 10_000)
    );
    let leader_only = ORDERS.replace("acks = \"all\"", "acks = \"1\"");
    assert!(!parse(&leader_only).unwrap().kafka.idempotent);
    let tuned = ORDERS.replace(
        "compression = \"none\"",
        "compression = \"none\"\nidempotent = false\nlinger = \"20ms\"\nbatch_size = 65536\nbatch_messages = 1000",
    );
    let kafka = parse(&tuned).unwrap().kafka;
    assert_eq!(kafka.key, crate::scenario::KafkaKey::UserId);
    assert!(!kafka.idempotent);
    assert_eq!(kafka.linger, Duration::from_millis(20));
    assert_eq!((kafka.batch_size, kafka.batch_messages), (65536, 1000));
    let shown = error(
        &leader_only.replace(
            "compression = \"none\"",
            "compression = \"none\"\nidempotent = true",
        ),
        "kafka.idempotent",
        32,
    );
    assert!(shown.contains("needs acks = \"all\""), "{shown}");
    error(
        &ORDERS.replace(
            "compression = \"none\"",
            "compression = \"none\"\nlinger = \"1h\"",
        ),
        "kafka.linger",
        32,
    );
}

#[test]
fn kafka_messages_are_keyed_by_user_unless_the_scenario_says_none() {
    use crate::scenario::KafkaKey;
    assert_eq!(parse(ORDERS).unwrap().kafka.key, KafkaKey::UserId);
    let keyless = ORDERS.replace("partitions = 6", "partitions = 6\nkey = \"none\"");
    assert_eq!(parse(&keyless).unwrap().kafka.key, KafkaKey::None);
    let shown = error(
        &ORDERS.replace("partitions = 6", "partitions = 6\nkey = \"order_id\""),
        "kafka.key",
        30,
    );
    assert!(shown.contains("none"), "{shown}");
}

#[test]
fn fates_hash_as_the_agents_in_other_languages_are_told() {
    // agents/fate-vectors.json is what every agent's own test checks itself against.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/fate-vectors.json");
    let vectors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let number = |v: &serde_json::Value| -> u64 { v.as_str().unwrap().parse().unwrap() };
    for s in vectors["seeds"].as_array().unwrap() {
        let group = s["group"].as_str().unwrap();
        assert_eq!(Failures::seed(group), number(&s["seed"]), "group {group:?}");
    }
    let hashed = vectors["unit_hash"].as_array().unwrap();
    assert!(hashed.len() >= 5);
    for v in hashed {
        let producer = u32::try_from(v["producer"].as_u64().unwrap()).unwrap();
        let u = super::unit_hash(number(&v["seed"]), producer, number(&v["seq"]));
        assert_eq!(u, v["u"].as_f64().unwrap(), "{v}");
    }
}
