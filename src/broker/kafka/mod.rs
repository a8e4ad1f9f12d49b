//! The Apache Kafka protocol through rdkafka (librdkafka); locally, tansu,
//! a Kafka-protocol broker with SQLite storage, named as what it is.

mod driver;

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use tokio::process::Command;

use super::{Broker, Info, Install, Launch, PROBE_CONSUMER};
use crate::broker::Endpoint;
use crate::driver::{timed, Driver, CALL_TIMEOUT};
use crate::scenario::Plan;
use driver::{base_config, KafkaDriver};

/// The tansu release brokerbench is tested with (see `scripts/install-brokers`).
pub const TANSU_VERSION: &str = "0.6.0";

static INFO: Info = Info {
    display_name: "Kafka-protocol broker",
    product: "Apache Kafka (or a Kafka-protocol broker)",
    program: "tansu",
    install: Install::Cargo {
        krate: "tansu",
        version: TANSU_VERSION,
        features: "libsql",
    },
    implementation: ("tansu ", " (Kafka protocol)"),
    local_stand_in_for: Some("Apache Kafka"),
    extra_ports: &[],
    ready_deadline: Duration::from_secs(30),
    url_form: "bootstrap servers such as host1:9092,host2:9092",
    compose_service: "kafka",
    compose_port: 9092,
};

/// Kafka's entry in the registry.
pub(super) struct Kafka;

#[async_trait]
impl Broker for Kafka {
    fn info(&self) -> &'static Info {
        &INFO
    }

    fn command(&self, launch: &Launch<'_>) -> Result<Command> {
        let listener = format!("tcp://{}:{}", launch.host, launch.ports.client);
        let mut command = Command::new(launch.program);
        // The path is relative to the working directory (our data dir).
        // Never `null://`: it confirms everything and keeps nothing.
        command
            .arg("broker")
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", "sqlite://tansu.db"]);
        Ok(command)
    }

    fn local_url(&self, host: &str, port: u16) -> String {
        format!("{host}:{port}")
    }

    fn accepts_url(&self, url: &str) -> bool {
        !url.is_empty()
            && url.split(',').all(|server| {
                server.trim().rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
                })
            })
    }

    async fn connect(&self, plan: &Plan, at: &Endpoint, run: u64) -> Result<Box<dyn Driver>> {
        Ok(Box::new(KafkaDriver::connect(plan, at, run).await?))
    }

    async fn handshake(&self, endpoint: &Endpoint) -> Result<()> {
        let url = endpoint.url();
        tokio::task::spawn_blocking(move || {
            // The run's client config, but librdkafka's own 100 ms reconnect
            // backoff: a broker coming back is seen within a tenth of a second.
            let producer: BaseProducer = base_config(&url)
                .set("reconnect.backoff.ms", "100")
                .create()?;
            producer.client().fetch_metadata(None, CALL_TIMEOUT)?;
            Ok::<_, anyhow::Error>(())
        })
        .await?
        .context("fetching Kafka metadata")
    }

    async fn publish_durable(&self, endpoint: &Endpoint, name: &str, payload: &[u8]) -> Result<()> {
        topic(endpoint, name).await?;
        let producer: FutureProducer = base_config(&endpoint.url())
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "10000")
            .create()?;
        let record = FutureRecord::<(), [u8]>::to(name).payload(payload);
        producer
            .send(record, CALL_TIMEOUT)
            .await
            .map_err(|(err, _)| anyhow!(err))
            .context("waiting for the Kafka delivery report")?;
        Ok(())
    }

    async fn fetch_one(&self, endpoint: &Endpoint, name: &str, wait: Duration) -> Result<Vec<u8>> {
        let consumer: StreamConsumer = base_config(&endpoint.url())
            .set("group.id", PROBE_CONSUMER)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[name])?;
        let message = tokio::time::timeout(wait, consumer.recv())
            .await
            .with_context(|| format!("no message on topic '{name}' within {wait:?}"))??;
        let data = message.payload().unwrap_or_default().to_vec();
        consumer.commit_message(&message, CommitMode::Sync)?;
        Ok(data)
    }
}

/// Creates the one-partition topic `name` unless it exists.
async fn topic(endpoint: &Endpoint, name: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(&endpoint.url()).create()?;
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
    let results = timed(
        "creating the topic",
        admin.create_topics([&topic], &options),
    )
    .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic '{topic}': {code}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists_are_checked() {
        assert_eq!(Kafka.local_url("127.0.0.1", 4000), "127.0.0.1:4000");
        assert!(Kafka.accepts_url("k1:9092, k2:9092"));
        for bad in ["kafka://k1:9092", "k1", ""] {
            assert!(!Kafka.accepts_url(bad), "{bad}");
        }
        assert!(INFO.install_hint().contains("--features libsql"));
    }
}
