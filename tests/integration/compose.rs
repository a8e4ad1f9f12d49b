//! docker-compose.yml for users with Docker. Our machines have no Docker
//! engine, so this checks what the compose environment relies on: the three
//! services by name, official images at pinned versions, the client ports on
//! loopback, a healthcheck each, JetStream with file storage, KRaft mode, and
//! named volumes for data.

use serde_yaml::Value;

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("docker-compose.yml parses")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .unwrap_or(&vec![])
        .iter()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

#[test]
fn services_images_ports_and_healthchecks() {
    let doc = compose();
    let services = &doc["services"];
    for (service, image, client_port) in [
        ("rabbitmq", "rabbitmq:", "127.0.0.1:5672:5672"),
        ("nats", "nats:", "127.0.0.1:4222:4222"),
        ("kafka", "apache/kafka:", "127.0.0.1:9092:9092"),
    ] {
        let svc = &services[service];
        assert!(svc.is_mapping(), "service {service} missing");
        let img = svc["image"].as_str().unwrap();
        let tag = img
            .strip_prefix(image)
            .unwrap_or_else(|| panic!("{service} uses {img}, not the official image"));
        assert!(
            tag.starts_with(|c: char| c.is_ascii_digit()),
            "{service} image {img} is not pinned to a version"
        );
        assert!(
            strings(&svc["ports"]).contains(&client_port.to_string()),
            "{service} lacks port {client_port}"
        );
        let test = strings(&svc["healthcheck"]["test"]);
        assert!(
            test.len() >= 2 && test[0].starts_with("CMD"),
            "{service} has no healthcheck: {test:?}"
        );
        let volume = strings(&svc["volumes"])
            .first()
            .cloned()
            .unwrap_or_default();
        let name = volume.split(':').next().unwrap();
        assert!(
            doc["volumes"].get(name).is_some(),
            "{service} data volume {volume:?} is not a named volume"
        );
    }
    assert!(services["rabbitmq"]["image"]
        .as_str()
        .unwrap()
        .ends_with("-management"));
    let nats = strings(&services["nats"]["command"]);
    assert!(
        nats.contains(&"--jetstream".to_string()) && nats.contains(&"--store_dir".to_string()),
        "{nats:?}"
    );
    let kafka = &services["kafka"]["environment"];
    assert_eq!(
        kafka["KAFKA_PROCESS_ROLES"].as_str(),
        Some("broker,controller"),
        "KRaft single node"
    );
}

/// docker-compose.cluster.yml: three nodes of each broker under a profile of
/// its own (one cluster at a time), official pinned images, distinct
/// loopback client ports, a healthcheck and a named volume per node, and
/// each broker clustered: RabbitMQ's peer list and one cookie, NATS routes
/// to every server, Kafka's three voters with replication 3 and min ISR 2.
#[test]
fn the_cluster_file_has_three_clustered_nodes_per_broker() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.cluster.yml");
    let mut doc: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("docker-compose.cluster.yml parses");
    doc.apply_merge().expect("merge keys resolve");
    let services = doc["services"].as_mapping().unwrap();
    let mut ports = Vec::new();
    for (profile, image, client) in [
        ("rabbitmq", "rabbitmq:", 5672),
        ("nats", "nats:", 4222),
        ("kafka", "apache/kafka:", 9092),
    ] {
        for n in 1..=3 {
            let name = format!("{profile}-{n}");
            let svc = &services[name.as_str()];
            assert!(svc.is_mapping(), "service {name} missing");
            assert_eq!(strings(&svc["profiles"]), [profile], "{name}");
            let img = svc["image"].as_str().unwrap();
            let tag = img
                .strip_prefix(image)
                .unwrap_or_else(|| panic!("{name}: {img}"));
            assert!(
                tag.starts_with(|c: char| c.is_ascii_digit()),
                "{name}: {img}"
            );
            let published = format!("127.0.0.1:{}:", client + n - 1);
            assert!(
                strings(&svc["ports"])
                    .iter()
                    .any(|p| p.starts_with(&published)),
                "{name} does not publish {published}"
            );
            ports.extend(strings(&svc["ports"]));
            assert!(strings(&svc["healthcheck"]["test"]).len() >= 2, "{name}");
            let volume = strings(&svc["volumes"])
                .first()
                .cloned()
                .unwrap_or_default();
            let volume = volume.split(':').next().unwrap();
            assert!(doc["volumes"].get(volume).is_some(), "{name}: {volume}");
        }
    }
    let mut unique = ports.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ports.len(), "a host port published twice");

    let rabbitmq = doc["configs"]["rabbitmq-conf"]["content"].as_str().unwrap();
    for n in 1..=3 {
        assert!(
            rabbitmq.contains(&format!("nodes.{n} = rabbit@rabbitmq-{n}")),
            "{rabbitmq}"
        );
        assert!(services[format!("rabbitmq-{n}").as_str()]["environment"]
            ["RABBITMQ_ERLANG_COOKIE"]
            .is_string());
    }
    assert!(rabbitmq.contains("cluster_partition_handling = pause_minority"));
    for n in 1..=3 {
        let command = strings(&services[format!("nats-{n}").as_str()]["command"]).join(" ");
        assert!(command.contains("--jetstream"), "{command}");
        assert!(
            command.contains("nats://nats-1:6222,nats://nats-2:6222,nats://nats-3:6222"),
            "{command}"
        );
        let env = &services[format!("kafka-{n}").as_str()]["environment"];
        assert_eq!(env["KAFKA_NODE_ID"].as_u64(), Some(n as u64));
        assert_eq!(
            env["KAFKA_CONTROLLER_QUORUM_VOTERS"].as_str(),
            Some("1@kafka-1:29093,2@kafka-2:29093,3@kafka-3:29093")
        );
        assert_eq!(env["KAFKA_DEFAULT_REPLICATION_FACTOR"].as_u64(), Some(3));
        assert_eq!(env["KAFKA_MIN_INSYNC_REPLICAS"].as_u64(), Some(2));
        assert_eq!(
            env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"].as_u64(),
            Some(3)
        );
    }
}
