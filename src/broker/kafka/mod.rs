//! Apache Kafka through rdkafka (librdkafka). Locally, Apache Kafka 4.x in
//! KRaft combined mode (broker and controller in one JVM), from the jars
//! `scripts/install-brokers` resolves from Maven Central, started with the
//! launchers of `tools/kafka/bin`.

mod delivery;
mod driver;
mod metadata;
mod users;

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use tokio::process::Command;

use super::{Broker, Info, Install, Launch, PortRole, Ports, ServerSettings, PROBE_CONSUMER};
use crate::broker::Endpoint;
use crate::driver::{timed, Driver, CALL_TIMEOUT};
use crate::scenario::Plan;
use delivery::LastError;
use driver::{base_config, KafkaDriver};

static INFO: Info = Info {
    display_name: "Apache Kafka",
    program: "kafka-server-start",
    install: Install::Script("Apache Kafka's jars from Maven Central, tools/kafka/pom.xml"),
    implementation: ("Apache Kafka ", ""),
    extra_ports: &[PortRole::Controller, PortRole::Internal],
    cluster_ports: &[],
    shared_ports: &[],
    cluster_joins_first: false,
    // A JVM start: 5-6 s on this project's 2-core machines.
    ready_deadline: Duration::from_secs(60),
    url_form: "bootstrap servers such as host1:9092,host2:9092",
    compose_service: "kafka",
    compose_port: 9092,
};

/// Kafka's entry in the registry.
pub(super) struct Kafka;

/// The broker's settings: one node that is broker and controller, a topic
/// per queue (created by brokerbench with the partitions the scenario asks
/// for), and internal topics at replication 1. A node of a cluster is one
/// of its static controller voters (every node is broker and controller, as
/// in Kafka's combined-mode quick start), and the internal topics are
/// replicated on up to three nodes, two of them in sync. Clients are told
/// the fault proxy's port when there is one; the nodes replicate through an
/// inter-broker listener of their own.
fn server_properties(launch: &Launch<'_>) -> Result<String> {
    let host = launch.host;
    let client = launch.ports.client;
    let controller = launch.ports.controller.context("no controller port")?;
    // The nodes replicate through a listener of their own, so that clients
    // told to connect through the fault proxy do not take replication with them.
    let internal = launch.ports.internal.context("no inter-broker port")?;
    // The proxy, when there is one, listens on loopback here.
    let (advertised_host, advertised) = match launch.ports.advertised {
        Some(port) => ("127.0.0.1", port),
        None => (host, client),
    };
    let data = launch.dir.join("data");
    let id = node_id(launch);
    let (quorum, replication, min_isr) = match launch.cluster {
        None => (
            format!("controller.quorum.bootstrap.servers={host}:{controller}"),
            1,
            1,
        ),
        Some(node) => {
            let voters = node
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let port = p.controller.context("no controller port")?;
                    Ok(format!("{}@{}:{port}", i + 1, p.ip()))
                })
                .collect::<Result<Vec<_>>>()?;
            let replication = node.peers.len().min(3);
            (
                format!("controller.quorum.voters={}", voters.join(",")),
                replication,
                majority(replication),
            )
        }
    };
    let clients = client_protocol(launch);
    Ok(format!(
        "# Written by brokerbench before each start.
process.roles=broker,controller
node.id={id}
{quorum}
listeners={clients}://{host}:{client},CONTROLLER://{host}:{controller},INTERNAL://{host}:{internal}
advertised.listeners={clients}://{advertised_host}:{advertised},INTERNAL://{host}:{internal}
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,{clients}:{clients},INTERNAL:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor={replication}
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
{secured}",
        data = data.display(),
        secured = secured_properties(launch, clients)?,
    ))
}

/// The security protocol of the listener clients reach: plain, or what a
/// local run's `[security]` asks for.
fn client_protocol(launch: &Launch<'_>) -> &'static str {
    let credentials = launch.server.credentials.as_deref();
    match credentials.map(|c| (c.tls.is_some(), c.user.is_some())) {
        None | Some((false, false)) => "PLAINTEXT",
        Some((true, false)) => "SSL",
        Some((false, true)) => "SASL_PLAINTEXT",
        Some((true, true)) => "SASL_SSL",
    }
}

/// The file holding the broker's private key and certificate, the PEM
/// "keystore" Kafka reads (KIP-651).
const KEYSTORE: &str = "keystore.pem";

/// A local run's `[security]` on the clients' listener (`clients`, its
/// security protocol, also its name): the run's
/// certificate (a PEM keystore of key and certificate, written beside the
/// properties), and SCRAM-SHA-512, whose user is made once the node
/// listens ([`users`]). The controller and the replication listeners stay
/// plain, on loopback.
fn secured_properties(launch: &Launch<'_>, clients: &str) -> Result<String> {
    let Some(credentials) = launch.server.credentials.as_deref() else {
        return Ok(String::new());
    };
    let mut properties = String::new();
    if let Some(certs) = &credentials.tls {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let keystore = launch.dir.join(KEYSTORE);
        crate::broker::security::write_private(
            &keystore,
            &format!("{}{}", read(&certs.key)?, read(&certs.cert)?),
        )?;
        properties.push_str(&format!(
            "ssl.keystore.type=PEM\nssl.keystore.location={}\n",
            keystore.display()
        ));
    }
    if credentials.user.is_some() {
        let listener = clients.to_lowercase();
        properties.push_str(&format!(
            "sasl.enabled.mechanisms=SCRAM-SHA-512\n\
             listener.name.{listener}.scram-sha-512.sasl.jaas.config=\
             org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
        ));
    }
    Ok(properties)
}

/// The `node.id` of the node `launch` starts: 1, or its number in a cluster.
fn node_id(launch: &Launch<'_>) -> usize {
    launch.cluster.map_or(1, |node| node.index + 1)
}

/// The fewest of `replicas` copies that are a majority.
pub(super) fn majority(replicas: usize) -> usize {
    replicas / 2 + 1
}

/// A new cluster id, as Kafka's own `Uuid.randomUuid` makes them (16 bytes,
/// URL-safe base64), never one that starts with '-', which the format tool's
/// argument parser would take for an option. The nodes of one cluster derive
/// the same one from where they all listen.
fn cluster_id(launch: &Launch<'_>) -> String {
    use std::hash::{Hash, Hasher};
    let seeded = |salt: u64| -> [u8; 16] {
        match launch.cluster {
            None => rand::random(),
            Some(node) => {
                let half = |part: u64| {
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    (salt, part, node.peers).hash(&mut hasher);
                    hasher.finish().to_be_bytes()
                };
                let mut id = [0; 16];
                id[..8].copy_from_slice(&half(0));
                id[8..].copy_from_slice(&half(1));
                id
            }
        }
    };
    (0..)
        .map(|salt| URL_SAFE_NO_PAD.encode(seeded(salt)))
        .find(|id| !id.starts_with('-'))
        .expect("an endless supply")
}

/// Formats the KRaft storage in `dir/data` with a new cluster id, once: a
/// restart keeps the data, as a restarted server would.
async fn format_storage(launch: &Launch<'_>, config: &Path) -> Result<()> {
    if launch.dir.join("data/meta.properties").exists() {
        return Ok(());
    }
    let cluster_id = cluster_id(launch);
    let tool = launch.program.with_file_name("kafka-storage");
    let mut format = Command::new(&tool);
    format.args(["format", "-t", &cluster_id, "-c"]).arg(config);
    // A single node is a quorum of its own; a cluster's voters are in its
    // configuration (`controller.quorum.voters`).
    if launch.cluster.is_none() {
        format.arg("--standalone");
    }
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        format.current_dir(launch.dir).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("`{} format` did not finish within 60 s", tool.display()))?
    .with_context(|| format!("could not run {}", tool.display()))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        bail!(
            "formatting Kafka's storage in {} failed ({}):\n{}",
            launch.dir.join("data").display(),
            output.status,
            tail.join("\n")
        );
    }
    Ok(())
}

#[async_trait]
impl Broker for Kafka {
    fn info(&self) -> &'static Info {
        &INFO
    }

    async fn prepare(&self, launch: &Launch<'_>) -> Result<()> {
        let config = launch.dir.join("server.properties");
        std::fs::write(&config, server_properties(launch)?)
            .with_context(|| format!("writing {}", config.display()))?;
        format_storage(launch, &config).await
    }

    async fn admit_users(&self, host: &str, ports: &Ports, server: &ServerSettings) -> Result<()> {
        let Some((user, password)) = server.credentials.as_deref().and_then(|c| c.user.as_ref())
        else {
            return Ok(());
        };
        let internal = ports.internal.context("no inter-broker port")?;
        users::add_scram_user(&format!("{host}:{internal}"), user, password).await
    }

    fn command(&self, launch: &Launch<'_>) -> Result<Command> {
        let mut command = Command::new(launch.program);
        command.arg(launch.dir.join("server.properties"));
        Ok(command)
    }

    fn local_url(&self, host: &str, port: u16) -> String {
        format!("{host}:{port}")
    }

    /// The node whose log last says it became the active controller, at the
    /// highest epoch: `[QuorumController id=2] Becoming the active
    /// controller at epoch 3`. Clients cannot ask (a broker answers
    /// metadata with a random broker as the controller since KIP-590).
    fn active_controller(&self, logs: &[String]) -> Option<usize> {
        logs.iter()
            .enumerate()
            .filter_map(|(node, log)| Some((latest_controller_epoch(log)?, node)))
            .max()
            .map(|(_, node)| node)
    }

    /// Its `node.id`, which metadata gives for each partition's leader.
    fn node_name(&self, launch: &Launch<'_>) -> String {
        node_id(launch).to_string()
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
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            // The run's client config, but librdkafka's own 100 ms reconnect
            // backoff: a broker coming back is seen within a tenth of a second.
            let producer: BaseProducer<LastError> = base_config(&endpoint)
                .set("reconnect.backoff.ms", "100")
                .create_with_context(LastError::default())?;
            let metadata = delivery::metadata(producer.client(), producer.context(), CALL_TIMEOUT)?;
            // A broker the controller has fenced (after a pause longer than
            // its session, or early in a start) answers metadata but lists
            // no broker: it takes no writes yet.
            if metadata.brokers().is_empty() {
                bail!("it answers, but lists no broker ready for clients (fenced)");
            }
            Ok::<_, anyhow::Error>(())
        })
        .await?
        .context("fetching Kafka metadata")
    }

    async fn publish_durable(&self, endpoint: &Endpoint, name: &str, payload: &[u8]) -> Result<()> {
        topic(endpoint, name).await?;
        let producer: FutureProducer = base_config(endpoint)
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
        let consumer: StreamConsumer = base_config(endpoint)
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

/// The epoch at which a node's log last says it became the active
/// controller, if it ever did.
fn latest_controller_epoch(log: &str) -> Option<u64> {
    const BECAME: &str = "Becoming the active controller at epoch ";
    log.lines()
        .rev()
        .find_map(|line| line.split_once(BECAME))
        .and_then(|(_, rest)| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

/// Creates the one-partition topic `name` unless it exists.
async fn topic(endpoint: &Endpoint, name: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(endpoint).create()?;
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
    fn the_active_controller_is_the_latest_to_say_so() {
        let said = |id: u32, epoch: u32| {
            format!(
                "[2026-12-07 08:00:00,000] INFO [QuorumController id={id}] Becoming the active \
                 controller at epoch {epoch}, next write offset 3. (org.apache.kafka.controller.QuorumController)\n"
            )
        };
        let logs = [said(1, 1), String::from("nothing\n"), said(3, 2)];
        assert_eq!(Kafka.active_controller(&logs), Some(2));
        let logs = [said(1, 1) + &said(1, 4), said(2, 3)];
        assert_eq!(Kafka.active_controller(&logs), Some(0));
        assert_eq!(Kafka.active_controller(&[String::new()]), None);
    }

    #[test]
    fn bootstrap_lists_are_checked() {
        assert_eq!(Kafka.local_url("127.0.0.1", 4000), "127.0.0.1:4000");
        assert!(Kafka.accepts_url("k1:9092, k2:9092"));
        for bad in ["kafka://k1:9092", "k1", ""] {
            assert!(!Kafka.accepts_url(bad), "{bad}");
        }
        assert!(INFO.install_hint().contains("scripts/install-brokers"));
    }
}
