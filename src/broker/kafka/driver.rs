//! Kafka through rdkafka (librdkafka): a topic with N partitions keyed by
//! `user_id` (or by nothing), the idempotent producer with acks=all (or the configured acks),
//! delivery reports as confirmations, one consumer group per group, and
//! offsets committed only up to what has been processed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use kafka_protocol::messages::MetadataResponse;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message};
use serde::Serialize;

use super::delivery::{Awaiting, Client, Inbox, Reports};
use super::metadata::NodeMetadata;
use crate::broker::security::{Auth, Security};
use crate::broker::Endpoint;
use crate::driver::{
    timed, AgentSource, Answer, Consumer, Driver, ErrorKind, Failure, Incoming, Leadership,
    Producer, Settings, Settle, Settler, Token, CONFIRM_TIMEOUT, NO_LEADER,
};
use crate::event::Outgoing;
use crate::kind::BrokerKind;
use crate::scenario::{
    Acks, Compression, ConsumerGroup, DeadLetter, KafkaKey, KafkaSettings, Plan, Recovery,
    EVENT_TYPE,
};

/// The topic failed messages are dead-lettered to, by the consumers
/// themselves: Kafka has no dead-letter queue of its own.
pub(super) fn dead_letter_topic() -> String {
    format!("{EVENT_TYPE}.dlq")
}

/// The header naming the consumer group that dead-lettered a message
/// (Spring Kafka's name), which each group's dead-letter reader filters on.
const ORIGINAL_GROUP: &str = "kafka_dlt-original-consumer-group";

/// The durability and delivery settings a Kafka run used, for the results.
#[derive(Serialize)]
struct Applied {
    partitions: i32,
    replicas: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_insync_replicas: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unclean_leader_election: Option<bool>,
    acks: Acks,
    idempotent_producer: bool,
    linger_ms: u64,
    batch_size: u32,
    batch_messages: u32,
    compression: Compression,
    key: &'static str,
    /// When the broker writes a confirmed message to disk.
    flush: &'static str,
    consumer_commit: &'static str,
    reconnect: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_lettering: Option<String>,
}

/// One producer client shared by every producer task.
pub(super) struct KafkaDriver {
    /// The servers, with their TLS and authentication.
    endpoint: Endpoint,
    producer: Client,
    settings: KafkaSettings,
    recovery: Recovery,
    run_id: u64,
    dead_letter: DeadLetter,
    failing: bool,
    /// Whether messages carry a `trace_id` header.
    headers: bool,
    /// Topics flush every message to disk before it is acknowledged
    /// (`flush.messages=1`).
    sync_before_confirm: bool,
    /// Copies of each partition: one per node of the cluster, up to three.
    replicas: usize,
    /// On a cluster, a connection per node for the leadership question,
    /// each asking that node alone (see [`NodeMetadata`]): a node cut off
    /// from the others by a partition still answers, with its stale view,
    /// so the majority's view is taken. Not the producer's: its
    /// connections queue metadata requests behind its produce requests
    /// (over 2 s at 8000 msg/s on a loaded machine).
    metadata: Vec<NodeMetadata>,
}

/// The configuration every Kafka client of ours starts from, the readiness
/// probe's included: the endpoint's servers, TLS and authentication.
pub(super) fn base_config(endpoint: &Endpoint) -> ClientConfig {
    let mut config = ClientConfig::new();
    secure(&mut config, endpoint.security());
    config
        .set("bootstrap.servers", endpoint.url())
        .set("client.id", "brokerbench")
        // librdkafka's own exponential reconnect backoff, with jitter.
        .set("reconnect.backoff.ms", "1000")
        .set("socket.timeout.ms", "10000")
        // TCP_NODELAY, as Kafka's Java clients set it: with Nagle's
        // algorithm a small request waits for the ACK of the one before.
        .set("socket.nagle.disable", "true")
        .set("log_level", "3");
    config
}

/// librdkafka's `security.protocol` and what goes with it: the CA to trust
/// and a client certificate (SSL), and a SASL user (PLAIN or SCRAM). The
/// password goes to librdkafka only, which never logs it.
fn secure(config: &mut ClientConfig, security: &Security) {
    let password = match &security.auth {
        Some(Auth::Password {
            user,
            password,
            mechanism,
        }) => Some((user, password, mechanism)),
        _ => None,
    };
    let protocol = match (&security.tls, password) {
        (None, None) => return,
        (Some(_), None) => "SSL",
        (None, Some(_)) => "SASL_PLAINTEXT",
        (Some(_), Some(_)) => "SASL_SSL",
    };
    config.set("security.protocol", protocol);
    if let Some(tls) = &security.tls {
        if let Some(ca) = &tls.ca {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some(identity) = &tls.identity {
            config
                .set(
                    "ssl.certificate.location",
                    identity.cert.display().to_string(),
                )
                .set("ssl.key.location", identity.key.display().to_string());
        }
    }
    if let Some((user, password, mechanism)) = password {
        config
            .set("sasl.mechanism", mechanism.as_str())
            .set("sasl.username", user)
            .set("sasl.password", password.expose());
    }
}

/// The topic's partition leaders and in-sync replicas in one node's
/// `answer` (node ids as names); `None` when it names no partition of the
/// topic.
fn leadership_in(answer: &MetadataResponse) -> Option<Leadership> {
    let topic = answer.topics.first()?;
    if topic.partitions.is_empty() {
        return None;
    }
    let partitions: BTreeMap<i32, String> = topic
        .partitions
        .iter()
        .map(|p| match *p.leader_id {
            id if id >= 0 => (p.partition_index, id.to_string()),
            _ => (p.partition_index, NO_LEADER.to_string()),
        })
        .collect();
    let mut led: BTreeMap<&str, usize> = BTreeMap::new();
    for leader in partitions.values().filter(|l| *l != NO_LEADER) {
        *led.entry(leader).or_default() += 1;
    }
    // Most partitions, the lowest id among equals.
    let leader = led
        .iter()
        .max_by_key(|(id, n)| (**n, std::cmp::Reverse(id.parse::<i32>().unwrap_or(0))))
        .map(|(id, _)| id.to_string());
    // In sync: in the ISR of every partition it holds a replica of.
    let mut in_sync: Vec<String> = answer
        .brokers
        .iter()
        .map(|b| b.node_id)
        .filter(|id| {
            topic
                .partitions
                .iter()
                .filter(|p| p.replica_nodes.contains(id))
                .all(|p| p.isr_nodes.contains(id))
        })
        .map(|id| id.to_string())
        .collect();
    in_sync.sort();
    Some(Leadership {
        leader,
        in_sync,
        partitions,
        controller: None,
    })
}

/// The lag of group `group_id`'s committed offsets behind the end of each
/// of `topic`'s `partitions` (from the start of a partition it never
/// committed on).
async fn lag(endpoint: &Endpoint, group_id: &str, topic: &str, partitions: i32) -> Result<u64> {
    use rdkafka::{Offset, TopicPartitionList};
    let (endpoint, group_id, topic) = (endpoint.clone(), group_id.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let consumer: BaseConsumer = base_config(&endpoint)
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            .create()
            .context("creating a Kafka client to ask for the lag")?;
        let mut asked = TopicPartitionList::new();
        for partition in 0..partitions {
            asked.add_partition(&topic, partition);
        }
        let committed = consumer.committed_offsets(asked, crate::driver::CALL_TIMEOUT)?;
        let mut lag = 0;
        for element in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(
                &topic,
                element.partition(),
                crate::driver::CALL_TIMEOUT,
            )?;
            let from = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => low,
            };
            lag += u64::try_from(high - from).unwrap_or(0);
        }
        Ok(lag)
    })
    .await?
}

/// Deletes `name` and creates it again with `partitions`, flushing every
/// message to disk before acknowledging it if `sync`; deletion is
/// asynchronous in Kafka, so creation retries for a while.
async fn fresh_topic(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    partitions: i32,
    (sync, replicas): (bool, usize),
) -> Result<()> {
    let options = AdminOptions::new().operation_timeout(Some(crate::driver::CALL_TIMEOUT));
    let _ = timed(
        "deleting an old topic",
        admin.delete_topics(&[name], &options),
    )
    .await;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replicas as i32));
    let min_isr = super::majority(replicas).to_string();
    if replicas > 1 {
        topic = topic
            .set("min.insync.replicas", &min_isr)
            .set("unclean.leader.election.enable", "false");
    }
    if sync {
        topic = topic.set("flush.messages", "1");
    }
    let deadline = Instant::now() + crate::driver::CALL_TIMEOUT;
    loop {
        let results = timed(
            &format!("creating topic {name}"),
            admin.create_topics([&topic], &options),
        )
        .await?;
        match results.into_iter().next() {
            Some(Ok(_)) => return Ok(()),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(Err((name, code))) => bail!("creating topic {name}: {code}"),
            None => bail!("creating topic {name}: no answer"),
        }
    }
}

impl KafkaDriver {
    /// A consumer's configuration for group id `group_id`: from the
    /// beginning of the topic, with our fetch wait and reconnect backoff.
    fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = base_config(&self.endpoint);
        config
            .set("group.id", group_id)
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                self.settings.fetch_wait_max.as_millis().to_string(),
            )
            .set("session.timeout.ms", "10000")
            .set(
                "reconnect.backoff.max.ms",
                self.recovery.backoff_max.as_millis().to_string(),
            );
        config
    }

    /// Subscribes a consumer made from `config` to `topic` and waits until
    /// the group gave it partitions; a message that arrives meanwhile is kept.
    async fn subscribe(
        &self,
        group_id: &str,
        topic: &str,
        config: &mut ClientConfig,
        origin: bool,
    ) -> Result<(Arc<StreamConsumer>, Option<Result<Received, ErrorKind>>)> {
        let consumer: StreamConsumer = config.create().context("creating the Kafka consumer")?;
        consumer.subscribe(&[topic]).context("subscribing")?;
        let consumer = Arc::new(consumer);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut first = None;
        while first.is_none() && consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            if Instant::now() > deadline {
                bail!("consumer group {group_id} got no partitions within 30 s");
            }
            if let Ok(received) =
                tokio::time::timeout(Duration::from_millis(100), receive(&consumer, origin)).await
            {
                first = Some(received);
            }
        }
        Ok((consumer, first))
    }

    /// The group id of `group` in this run: scoped to the run, so offsets
    /// of an earlier run never apply.
    fn group_id(&self, group: &ConsumerGroup) -> String {
        format!("{}.{:x}", group.group, self.run_id)
    }

    /// Creates the producer client and checks the broker answers.
    pub async fn connect(plan: &Plan, endpoint: &Endpoint, run_id: u64) -> Result<Self> {
        let bootstrap = endpoint.url();
        let settings = plan.kafka.clone();
        let message_timeout = plan
            .recovery
            .confirm_timeout
            .unwrap_or(plan.recovery.give_up.max(CONFIRM_TIMEOUT));
        let request_timeout = message_timeout.min(Duration::from_secs(10));
        let mut config = base_config(endpoint);
        config
            .set("acks", settings.acks.as_str())
            .set("enable.idempotence", settings.idempotent.to_string())
            .set("compression.type", settings.compression.as_str())
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set("batch.size", settings.batch_size.to_string())
            .set("batch.num.messages", settings.batch_messages.to_string())
            .set(
                "request.timeout.ms",
                request_timeout.as_millis().to_string(),
            )
            // librdkafka retries inside the producer until this runs out.
            .set(
                "message.timeout.ms",
                message_timeout.as_millis().to_string(),
            )
            .set("queue.buffering.max.messages", "1000000")
            .set(
                "reconnect.backoff.max.ms",
                plan.recovery.backoff_max.as_millis().to_string(),
            );
        let producer: Client = config
            .create_with_context(Reports::default())
            .context("creating the Kafka producer")?;
        let client = producer.clone();
        tokio::task::spawn_blocking(move || {
            super::delivery::metadata(
                client.client(),
                &client.context().last_error,
                crate::driver::CALL_TIMEOUT,
            )
        })
        .await?
        .with_context(|| format!("connecting to Kafka at {bootstrap}"))?;
        Ok(KafkaDriver {
            producer,
            settings,
            recovery: plan.recovery.clone(),
            run_id,
            dead_letter: plan.dead_letter.clone(),
            failing: plan.has_failures(),
            headers: plan.load.headers,
            sync_before_confirm: plan.syncs_before_confirm(),
            replicas: usize::from(plan.cluster.nodes).min(3),
            // Each node's own view is asked for over plain TCP: a secured
            // cluster gives no leadership view.
            metadata: if plan.cluster.nodes > 1 && endpoint.security().is_plain() {
                endpoint
                    .urls()
                    .iter()
                    .map(|node| NodeMetadata::new(node))
                    .collect()
            } else {
                Vec::new()
            },
            endpoint: endpoint.clone(),
        })
    }
}

#[async_trait]
impl Driver for KafkaDriver {
    async fn setup(&self) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = base_config(&self.endpoint).create()?;
        let sync = self.sync_before_confirm;
        let topics = (sync, self.replicas);
        fresh_topic(&admin, EVENT_TYPE, self.settings.partitions, topics).await?;
        if self.failing {
            fresh_topic(&admin, &dead_letter_topic(), 1, topics).await?;
        }
        Ok(())
    }

    async fn producer(&self, _id: u32) -> Result<Box<dyn Producer>> {
        Ok(Box::new(KafkaProducer {
            producer: self.producer.clone(),
            headers: self.headers,
            keyed: self.settings.key == KafkaKey::UserId,
            deliveries: Inbox::new(&self.producer),
        }))
    }

    async fn consumer(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        let group_id = self.group_id(group);
        let (consumer, first) = self
            .subscribe(
                &group_id,
                EVENT_TYPE,
                self.consumer_config(&group_id)
                    .set("enable.auto.commit", "true")
                    .set("auto.commit.interval.ms", "1000")
                    .set("enable.auto.offset.store", "false"),
                group.failures.is_some(),
            )
            .await?;
        let (retry, retried) = tokio::sync::mpsc::unbounded_channel();
        let dead_letters = group.failures.as_ref().map(|_| DeadLetterWriter {
            producer: self.producer.clone(),
            reports: Awaiting::new(&self.producer),
            group_id: group_id.clone(),
            max_deliveries: self.dead_letter.max_deliveries,
            retry_delay: self.dead_letter.retry_delay,
        });
        Ok(Box::new(KafkaConsumer {
            consumer,
            offsets: Arc::default(),
            first,
            retry,
            retried,
            dead_letters: dead_letters.map(Arc::new),
        }))
    }

    /// The group's id and the topic; Kafka makes the group when the agent joins.
    async fn agent_source(&self, group: &ConsumerGroup) -> Result<AgentSource> {
        Ok(AgentSource {
            broker: BrokerKind::Kafka,
            url: self.endpoint.url(),
            source: serde_json::json!({
                "topic": EVENT_TYPE,
                "group_id": self.group_id(group),
                "partitions": self.settings.partitions,
                "dead_letter_topic": dead_letter_topic(),
                "max_deliveries": self.dead_letter.max_deliveries,
                "retry_delay_ms": self.dead_letter.retry_delay.as_millis() as u64,
                "acks": self.settings.acks.as_str(),
                "fetch_wait_max_ms": self.settings.fetch_wait_max.as_millis() as u64,
            }),
        })
    }

    /// Reads the dead-letter topic from the start in a group of its own,
    /// keeping only what `group` dead-lettered.
    async fn dead_letters(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        let group_id = self.group_id(group);
        let reader_id = format!("{group_id}.dlq-reader");
        let (consumer, first) = self
            .subscribe(
                &reader_id,
                &dead_letter_topic(),
                // Commits what it read, so that what it has not can be asked for.
                self.consumer_config(&reader_id)
                    .set("enable.auto.commit", "true")
                    .set("auto.commit.interval.ms", "1000"),
                true,
            )
            .await?;
        Ok(Box::new(DeadLetterReader {
            consumer,
            first,
            group_id,
        }))
    }

    /// The topic's partition leaders and in-sync replicas (node ids as
    /// names), as most of the nodes' metadata gives them.
    async fn leadership(&self) -> Result<Option<Leadership>> {
        // No clients on a single node: nothing moves there.
        if self.metadata.is_empty() {
            return Ok(None);
        }
        let asks = self.metadata.iter().map(|node| async move {
            let answer = node.ask(EVENT_TYPE, Duration::from_secs(4)).await?;
            leadership_in(&answer).context("no partitions of the topic in the metadata")
        });
        let nodes = self.metadata.len();
        crate::broker::http::majority_view(asks, nodes)
            .await
            .map(Some)
    }

    fn settings(&self) -> Settings {
        Settings::of(&Applied {
            partitions: self.settings.partitions,
            replicas: self.replicas as u32,
            min_insync_replicas: (self.replicas > 1).then(|| super::majority(self.replicas)),
            unclean_leader_election: (self.replicas > 1).then_some(false),
            acks: self.settings.acks,
            idempotent_producer: self.settings.idempotent,
            linger_ms: self.settings.linger.as_millis() as u64,
            batch_size: self.settings.batch_size,
            batch_messages: self.settings.batch_messages,
            compression: self.settings.compression,
            key: self.settings.key.as_str(),
            flush: match (self.sync_before_confirm, self.replicas) {
                (true, _) => "flush.messages=1: each append is fsynced before it is acknowledged",
                (false, 1) => "broker default: the page cache, fsynced when the OS writes back (durability from replication; 1 replica here)",
                (false, _) => "broker default: the page cache, fsynced when the OS writes back; durability from replication",
            },
            consumer_commit: "offsets of processed messages, every 1 s",
            reconnect: crate::driver::backoff_description(&self.recovery),
            dead_lettering: self.failing.then(|| {
                format!(
                    "in the consumer: {} deliveries, retried in process after {} with the offset held back; then produced to {} (acks {}, kafka_dlt-original-* headers) and the offset stored only once that is confirmed",
                    self.dead_letter.max_deliveries,
                    humantime::format_duration(self.dead_letter.retry_delay),
                    dead_letter_topic(),
                    self.settings.acks.as_str()
                )
            }),
        })
    }

    /// The lag of the group's committed offsets behind the end of each
    /// partition (from the start of a partition it never committed on).
    async fn backlog(&self, group: &ConsumerGroup) -> Result<u64> {
        let group_id = self.group_id(group);
        let mut held = lag(
            &self.endpoint,
            &group_id,
            EVENT_TYPE,
            self.settings.partitions,
        )
        .await?;
        // Dead letters the reader has not read. The topic is shared by every
        // group, so this counts other groups' too: an upper bound, which can
        // only make the account claim less loss, never more.
        if group.failures.is_some() {
            let reader_id = format!("{group_id}.dlq-reader");
            held += lag(&self.endpoint, &reader_id, &dead_letter_topic(), 1).await?;
        }
        Ok(held)
    }

    async fn stored(&self) -> Result<u64> {
        // The topic is fresh: its lag for a group that never committed is
        // every message in it.
        let nobody = format!("brokerbench.{}.stored", self.run_id);
        lag(
            &self.endpoint,
            &nobody,
            EVENT_TYPE,
            self.settings.partitions,
        )
        .await
    }

    async fn teardown(&self) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = base_config(&self.endpoint).create()?;
        let options = AdminOptions::new().operation_timeout(Some(crate::driver::CALL_TIMEOUT));
        let mut topics = vec![EVENT_TYPE.to_string()];
        if self.failing {
            topics.push(dead_letter_topic());
        }
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let results = timed(
            "deleting the topics",
            admin.delete_topics(&topics, &options),
        )
        .await?;
        for result in results {
            if let Err((name, code)) = result {
                bail!("deleting topic {name}: {code}");
            }
        }
        Ok(())
    }

    async fn close(&self) {
        let producer = self.producer.clone();
        let _ =
            tokio::task::spawn_blocking(move || producer.flush(crate::driver::CALL_TIMEOUT)).await;
    }
}

struct KafkaProducer {
    producer: Client,
    /// Whether messages carry a `trace_id` header.
    headers: bool,
    /// Whether messages are keyed by user (else they have no key).
    keyed: bool,
    /// Where the delivery reports on this producer's sends come in.
    deliveries: Inbox,
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&mut self, token: Token, message: Outgoing) -> Result<(), Failure> {
        // The key, `user-<key>`, and the trace id, written on the stack.
        let key = message.user_id().text();
        let trace_id = message.trace_id.text();
        let mut record = BaseRecord::with_opaque_to(EVENT_TYPE, self.deliveries.opaque(token))
            .payload(&message.payload);
        if self.keyed {
            record = record.key(key.as_str());
        }
        if self.headers {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "trace_id",
                value: Some(trace_id.as_str()),
            }));
        }
        // Enqueues in librdkafka; the delivery report is the answer.
        self.producer
            .send(record)
            .map_err(|(e, _)| ErrorKind::Send.because(e))?;
        Ok(())
    }

    fn poll_answer(&mut self, cx: &mut TaskContext<'_>) -> Poll<Answer> {
        self.deliveries.poll_answer(cx)
    }

    /// librdkafka times every message out itself (`message.timeout.ms`, at
    /// least the give-up time) and reports it as a failed delivery.
    fn confirm_timeout(&self) -> Option<Duration> {
        None
    }
}

/// Per partition: offsets received but not processed, and the next offset.
#[derive(Default)]
struct PartitionOffsets {
    pending: BTreeSet<i64>,
    next: i64,
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
    offsets: Arc<Mutex<HashMap<i32, PartitionOffsets>>>,
    first: Option<Result<Received, ErrorKind>>,
    /// Failed messages, back for another delivery after the retry delay.
    retry: tokio::sync::mpsc::UnboundedSender<Received>,
    retried: tokio::sync::mpsc::UnboundedReceiver<Received>,
    /// For a group with failures: where a message goes after its last attempt.
    dead_letters: Option<Arc<DeadLetterWriter>>,
}

/// Dead-letters a group's messages, as Spring Kafka's `DeadLetterPublishingRecoverer` does.
struct DeadLetterWriter {
    producer: Client,
    reports: Awaiting,
    group_id: String,
    max_deliveries: u32,
    retry_delay: Duration,
}

impl DeadLetterWriter {
    /// Produces `message` to the dead-letter topic with where it came from
    /// in headers, and waits for the broker's confirmation.
    /// `reason` is the header that says why (Spring Kafka's name for it).
    async fn write(&self, message: &Received, reason: &str) -> Result<(), ErrorKind> {
        let partition = message.partition.to_be_bytes();
        let offset = message.offset.to_be_bytes();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "kafka_dlt-original-topic",
                value: Some(EVENT_TYPE),
            })
            .insert(Header {
                key: "kafka_dlt-original-partition",
                value: Some(&partition[..]),
            })
            .insert(Header {
                key: "kafka_dlt-original-offset",
                value: Some(&offset[..]),
            })
            .insert(Header {
                key: ORIGINAL_GROUP,
                value: Some(self.group_id.as_str()),
            })
            .insert(Header {
                key: "kafka_dlt-exception-message",
                value: Some(reason),
            });
        if let Some(trace_id) = &message.trace_id {
            headers = headers.insert(Header {
                key: "trace_id",
                value: Some(trace_id.as_slice()),
            });
        }
        let topic = dead_letter_topic();
        let expected = self.reports.expect();
        let mut record = BaseRecord::with_opaque_to(&topic, expected.opaque)
            .payload(&message.payload[..])
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        // librdkafka's queue may be full for a moment: enqueue again until
        // the confirmation timeout.
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    self.reports.forget(expected);
                    return Err(ErrorKind::Ack);
                }
            }
        }
        self.reports
            .report(expected)
            .await
            .map_err(|_| ErrorKind::Ack)
    }
}

/// A message copied out of librdkafka's buffer.
#[derive(Clone)]
struct Received {
    payload: bytes::Bytes,
    key: Option<Vec<u8>>,
    trace_id: Option<Vec<u8>>,
    /// The group that dead-lettered it, in a dead-letter reader.
    dead_lettered_by: Option<Vec<u8>>,
    partition: i32,
    offset: i64,
}

/// The next message; with `origin`, also its key and the headers a dead
/// letter needs or carries (a group without failures copies only the payload).
async fn receive(consumer: &StreamConsumer, origin: bool) -> Result<Received, ErrorKind> {
    match consumer.recv().await {
        Ok(m) => {
            let header = |name: &str| {
                if !origin {
                    return None;
                }
                m.headers()?
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value.map(<[u8]>::to_vec))
            };
            Ok(Received {
                payload: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                key: m.key().filter(|_| origin).map(<[u8]>::to_vec),
                trace_id: header("trace_id"),
                dead_lettered_by: header(ORIGINAL_GROUP),
                partition: m.partition(),
                offset: m.offset(),
            })
        }
        Err(_) => Err(ErrorKind::Receive),
    }
}

/// Closes `consumer`: librdkafka commits the stored (processed) offsets then;
/// closing blocks, so it runs off the async threads.
async fn close(consumer: Arc<StreamConsumer>) {
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
}

/// Marks `offset` of `partition` processed, and stores the offset below the
/// lowest one still being processed (processing runs concurrently, and a
/// commit must never skip a message).
fn processed(
    consumer: &StreamConsumer,
    offsets: &Mutex<HashMap<i32, PartitionOffsets>>,
    partition: i32,
    offset: i64,
) -> Result<(), ErrorKind> {
    let low = {
        let mut offsets = offsets.lock().expect("offsets lock");
        let p = offsets.get_mut(&partition).expect("offset was recorded");
        p.pending.remove(&offset);
        p.pending.first().copied().unwrap_or(p.next)
    };
    // librdkafka stores (and later commits) the given offset + 1.
    if low > 0 {
        consumer
            .store_offset(EVENT_TYPE, partition, low - 1)
            .map_err(|_| ErrorKind::Ack)?;
    }
    Ok(())
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        let received = match self.first.take() {
            Some(first) => first,
            None => tokio::select! {
                biased;
                Some(retried) = self.retried.recv() => Ok(retried),
                received = receive(&self.consumer, self.dead_letters.is_some()) => received,
            },
        };
        let received = match received {
            Ok(r) => r,
            Err(kind) => return Some(Err(kind)),
        };
        let (partition, offset) = (received.partition, received.offset);
        {
            let mut offsets = self.offsets.lock().expect("offsets lock");
            let p = offsets.entry(partition).or_default();
            p.pending.insert(offset);
            p.next = p.next.max(offset + 1);
        }
        let consumer = Arc::clone(&self.consumer);
        let offsets = Arc::clone(&self.offsets);
        let retry = self.retry.clone();
        let dead_letters = self.dead_letters.clone();
        // Only a group with failures may need the message again.
        let kept = dead_letters.is_some().then(|| received.clone());
        let payload = received.payload;
        let settle: Settler = Box::new(move |how| {
            Box::pin(async move {
                match (how, dead_letters, kept) {
                    (Settle::Refuse, Some(dlq), Some(received)) => {
                        // Not retried: dead-lettered at once, the offset
                        // moving on only once the dead letter is confirmed.
                        dlq.write(&received, "could not decode the event").await?;
                        processed(&consumer, &offsets, partition, offset)
                    }
                    (Settle::Failed { attempt }, Some(dlq), Some(received)) => {
                        if attempt >= dlq.max_deliveries {
                            // The offset moves on only once the dead letter
                            // is confirmed: otherwise this is where it is lost.
                            let reason = format!("processing failed {attempt} times");
                            if dlq.write(&received, &reason).await.is_ok() {
                                return processed(&consumer, &offsets, partition, offset);
                            }
                        }
                        // Delivered again after the delay, its offset held back meanwhile.
                        tokio::time::sleep(dlq.retry_delay).await;
                        let _ = retry.send(received);
                        Ok(())
                    }
                    _ => processed(&consumer, &offsets, partition, offset),
                }
            })
        });
        Some(Ok(Incoming {
            receipt: None,
            payload,
            redelivered: false,
            settle,
        }))
    }

    async fn close(self: Box<Self>) {
        close(self.consumer).await;
    }
}

/// Reads a group's dead letters from the shared dead-letter topic.
struct DeadLetterReader {
    consumer: Arc<StreamConsumer>,
    first: Option<Result<Received, ErrorKind>>,
    group_id: String,
}

#[async_trait]
impl Consumer for DeadLetterReader {
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        loop {
            let received = match self.first.take() {
                Some(first) => first,
                None => receive(&self.consumer, true).await,
            };
            match received {
                Err(kind) => return Some(Err(kind)),
                Ok(r) if r.dead_lettered_by.as_deref() == Some(self.group_id.as_bytes()) => {
                    return Some(Ok(Incoming {
                        receipt: None,
                        payload: r.payload,
                        redelivered: false,
                        settle: Box::new(|_| Box::pin(async { Ok(()) })),
                    }))
                }
                Ok(_) => {} // another group's
            }
        }
    }

    async fn close(self: Box<Self>) {
        close(self.consumer).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::security::{Identity, Mechanism, Secret, Tls};

    /// librdkafka's settings for each combination a targets file can give.
    #[test]
    fn security_becomes_librdkafkas_protocol_and_settings() {
        let configured = |tls: Option<Tls>, auth: Option<Auth>| {
            let mut config = ClientConfig::new();
            secure(&mut config, &Security { tls, auth });
            config
        };
        let user = |mechanism| {
            Some(Auth::Password {
                user: "bench".into(),
                password: Secret::new("s3cret"),
                mechanism,
            })
        };
        let ca = || Tls {
            ca: Some("ca.pem".into()),
            identity: None,
        };

        assert_eq!(configured(None, None).get("security.protocol"), None);
        let plain = configured(None, user(Mechanism::Plain));
        assert_eq!(plain.get("security.protocol"), Some("SASL_PLAINTEXT"));
        assert_eq!(plain.get("sasl.mechanism"), Some("PLAIN"));
        let scram = configured(Some(ca()), user(Mechanism::ScramSha256));
        assert_eq!(scram.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(scram.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(scram.get("sasl.username"), Some("bench"));
        assert_eq!(scram.get("sasl.password"), Some("s3cret"));
        assert_eq!(scram.get("ssl.ca.location"), Some("ca.pem"));
        let mutual = configured(
            Some(Tls {
                ca: None,
                identity: Some(Identity {
                    cert: "client.pem".into(),
                    key: "client-key.pem".into(),
                }),
            }),
            None,
        );
        assert_eq!(mutual.get("security.protocol"), Some("SSL"));
        assert_eq!(mutual.get("ssl.ca.location"), None);
        assert_eq!(mutual.get("ssl.certificate.location"), Some("client.pem"));
        assert_eq!(mutual.get("ssl.key.location"), Some("client-key.pem"));
    }
}
