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
