//! `[durability] sync = "before-confirm"` on all three real brokers: a run
//! with it, then each broker asked what it was set to. The brokers are
//! started here as `brokerbench run` starts them for that scenario
//! (JetStream's `sync_interval` is server-wide), and reached through a
//! targets file, so that they outlive the run and can be asked.

use crate::util;

use std::time::Duration;

use brokerbench::broker::ServerSettings;
use brokerbench::env::binaries;
use brokerbench::env::local::LocalBroker;
use brokerbench::kind::BrokerKind;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use serde_json::Value;

const SCENARIO: &str = r#"
name = "sync-before-confirm"
[load]
rate = 200
duration = "3s"
warmup = "0s"
[[consumers]]
group = "billing"
[rabbitmq]
queue_type = "quorum"
[durability]
sync = "before-confirm"
"#;

/// `GET path` on the loopback `port`, the body as JSON.
fn http_json(port: u16, path: &str) -> Value {
    let response = util::http_get(&format!("127.0.0.1:{port}"), path);
    let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The value of `name` in topic `topic`'s configuration, as the broker has it.
async fn topic_config(bootstrap: &str, topic: &str, name: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let resources = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .unwrap();
    let resource = resources.into_iter().next().unwrap().unwrap();
    resource.get(name).and_then(|entry| entry.value.clone())
}

/// Whether `queue` on the broker is a quorum queue: declaring it again as
/// one succeeds only if it is (RabbitMQ refuses an inequivalent type).
async fn is_quorum_queue(url: &str, queue: &str) -> bool {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: false,
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await;
    let _ = connection.close(0, "done".into()).await;
    declared.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_before_confirm_is_set_on_each_broker_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerSettings {
        sync_always: true,
        ..ServerSettings::default()
    };
    let mut started = Vec::new();
    for kind in brokerbench::kind::ALL {
        let binary = binaries::locate(kind).await.unwrap();
        let broker = LocalBroker::start_with(binary, dir.path(), server.clone())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e:#}"));
        started.push(broker);
    }
    let targets = dir.path().join("targets.toml");
    let text: String = started
        .iter()
        .map(|b| {
            format!(
                "[{kind}]\nurl = \"{url}\"\nimplementation = \"{implementation}\"\n",
                kind = b.kind(),
                url = b.endpoint().url(),
                implementation = b.implementation()
            )
        })
        .collect();
    std::fs::write(&targets, text).unwrap();
    let (_scenario_dir, scenario) = util::scenario_file(SCENARIO);

    let out = util::run_command(
        &[
            scenario.to_str().unwrap(),
            "--env",
            "external",
            "--targets",
            targets.to_str().unwrap(),
            "--keep-data",
            "--json",
        ],
        dir.path(),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let results = util::stdout_json(&out);
    util::validate_results(&results);
    assert_eq!(results["scenario"]["durability"]["sync"], "before-confirm");
    for b in results["brokers"].as_array().unwrap() {
        let name = b["broker"].as_str().unwrap();
        assert_eq!(b["complete"], true, "{name}: {stderr}");
        assert_eq!(b["groups"][0]["lost"], 0, "{name}: {stderr}");
        let settings = b["settings"].to_string();
        assert!(
            settings.contains("fsync before confirm")
                || settings.contains("sync_interval: always")
                || settings.contains("flush.messages=1"),
            "{name}: {settings}"
        );
    }

    for broker in &started {
        match broker.kind() {
            BrokerKind::Rabbitmq => assert!(
                is_quorum_queue(&broker.endpoint().url(), "brokerbench.billing").await,
                "RabbitMQ: the group's queue is not a quorum queue, which fsyncs before confirming"
            ),
            BrokerKind::Jetstream => {
                let monitoring = broker.ports()[1];
                let varz = http_json(monitoring, "/varz");
                let config = &varz["jetstream"]["config"];
                assert_eq!(config["sync_always"], true, "JetStream /varz: {config}");
            }
            BrokerKind::Kafka => {
                let flush = topic_config(
                    &broker.endpoint().url(),
                    brokerbench::scenario::EVENT_TYPE,
                    "flush.messages",
                )
                .await;
                assert_eq!(flush.as_deref(), Some("1"), "Kafka topic config");
            }
        }
    }
    for broker in started {
        broker.shutdown().await.unwrap();
    }
}
