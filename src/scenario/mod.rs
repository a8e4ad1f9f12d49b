//! Scenario files: what the user's traffic looks like.
//!
//! A `ScenarioFile` is what the TOML says (serde, unknown fields refused,
//! durations as strings like `"30s"`); a [`Plan`] is what the run uses (real
//! `Duration`s, defaults filled in, command-line overrides merged in one
//! place). Every error names the file, line, column and field, so a typo in
//! a long scenario is found without guessing.

mod error;
mod file;
pub(crate) mod thresholds;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use error::RawError;
pub use error::ScenarioError;
pub use thresholds::Thresholds;

pub use crate::event::{Encoding, EventVersion};
use crate::kind::BrokerKind;

/// The subject / routing key / topic every event is published to.
pub const EVENT_TYPE: &str = "events.order.created.v1";

/// A validated scenario, ready to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Scenario name; names the results directory.
    pub name: String,
    /// What the scenario models, in the user's words.
    pub description: String,
    /// The file it came from.
    pub source: PathBuf,
    /// Brokers to measure, in order.
    pub brokers: Vec<BrokerKind>,
    /// The offered load.
    pub load: Load,
    /// One consumer group each; every group receives every event.
    pub consumers: Vec<ConsumerGroup>,
    /// RabbitMQ settings.
    pub rabbitmq: RabbitmqSettings,
    /// NATS JetStream settings.
    pub jetstream: JetstreamSettings,
    /// Kafka settings.
    pub kafka: KafkaSettings,
    /// Faults injected during the steady phase, in time order.
    pub faults: Vec<Fault>,
    /// How many nodes each broker runs on. Results files written before it
    /// existed read as single nodes.
    #[serde(default, skip_serializing_if = "Cluster::is_single")]
    pub cluster: Cluster,
    /// How clients recover from faults.
    pub recovery: Recovery,
    /// When brokers write to disk before they confirm. Results files written
    /// before it existed read as the brokers' defaults.
    #[serde(default)]
    pub durability: Durability,
    /// TLS and authentication on the local brokers. Results files written
    /// before it existed read as neither.
    #[serde(default, skip_serializing_if = "LocalSecurity::is_plain")]
    pub security: LocalSecurity,
    /// Limits on measured figures; each becomes a check.
    #[serde(default, skip_serializing_if = "Thresholds::is_empty")]
    pub thresholds: Thresholds,
    /// How failed messages are retried and dead-lettered, for groups with
    /// `failures`.
    #[serde(default)]
    pub dead_letter: DeadLetter,
    /// `run --find-max`: search each broker's highest sustainable rate
    /// instead of running the load once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find_max: Option<FindMax>,
    /// `run --keep-data`: the run's queues, streams and topics stay in the
    /// broker afterwards, with their messages.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_data: bool,
}

/// `run --find-max [--slo METRIC<VALUE]`: what a rate must meet to hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FindMax {
    /// The service-level objectives as written, e.g. `end_to_end_p99<50ms`.
    pub slo: Vec<String>,
    /// The limits they set.
    #[serde(skip)]
    pub limits: Thresholds,
}

impl FindMax {
    /// The search with `slo`, each `[BROKER.]METRIC<VALUE`: the figure may
    /// not exceed the value.
    pub fn new(slo: &[String]) -> Result<FindMax, String> {
        let mut limits = Thresholds::default();
        for objective in slo {
            let (metric, value) = objective.split_once('<').ok_or_else(|| {
                format!("'{objective}' is not METRIC<VALUE, e.g. end_to_end_p99<50ms")
            })?;
            let key = metric.rsplit('.').next().unwrap_or(metric).trim();
            let known = thresholds::Metric::from_key(key)?;
            if known.is_minimum() || known.scope() == thresholds::Scope::Fault {
                return Err(format!(
                    "{key} cannot be an SLO of --find-max: use a latency or a count \
                     (e.g. end_to_end_p99<50ms, publish_p99<20ms)"
                ));
            }
            limits.set_from_flag(&format!("{}={}", metric.trim(), value.trim()))?;
        }
        Ok(FindMax {
            slo: slo.to_vec(),
            limits,
        })
    }
}

/// How failed messages are retried and dead-lettered (`[dead_letter]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Deliveries of a message before it is dead-lettered: the first one and
    /// `max_deliveries - 1` retries.
    pub max_deliveries: u32,
    /// The wait before a failed message is delivered again: the broker's own
    /// (JetStream's NAK delay) or the consumer's, before it hands the
    /// message back (RabbitMQ, Kafka).
    #[serde(with = "human_duration")]
    pub retry_delay: Duration,
}

impl Default for DeadLetter {
    fn default() -> Self {
        DeadLetter {
            max_deliveries: 5,
            retry_delay: Duration::from_millis(100),
        }
    }
}

/// What a consumer group fails to process, on purpose (`[consumers.failures]`).
/// Which messages fail is decided by [`Failures::fate`] from the message's
/// producer and sequence number and the group's name alone, so every broker
/// and every rerun fails the same messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failures {
    /// Fraction of messages the group can never process.
    pub poison: f64,
    /// Fraction that fails the first `transient_attempts` times, then succeeds.
    pub transient: f64,
    /// Failed attempts of a transient message before it succeeds.
    pub transient_attempts: u32,
}

/// What processing one message does in a group with [`Failures`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Processed on the first attempt.
    Fine,
    /// Fails the first `transient_attempts` attempts, then is processed.
    Transient,
    /// Fails every attempt: it should end in the dead-letter destination.
    Poison,
}

impl Failures {
    /// The fate of message `seq` of `producer` in group `group`: a hash of
    /// the three, so the same messages fail on every broker and every run.
    pub fn fate(&self, group: &str, producer: u32, seq: u64) -> Fate {
        self.fate_of(Failures::seed(group), producer, seq)
    }

    /// The group's part of its messages' fates: FNV-1a over its name, worked
    /// out once rather than for every message.
    pub fn seed(group: &str) -> u64 {
        group.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// [`Failures::fate`], with the group's [`Failures::seed`].
    pub fn fate_of(&self, seed: u64, producer: u32, seq: u64) -> Fate {
        let u = unit_hash(seed, producer, seq);
        if u < self.poison {
            Fate::Poison
        } else if u < self.poison + self.transient {
            Fate::Transient
        } else {
            Fate::Fine
        }
    }

    /// Whether attempt `failed + 1` of a message with `fate` fails, when
    /// `failed` attempts of it failed already.
    pub fn fails(&self, fate: Fate, failed: u32) -> bool {
        match fate {
            Fate::Fine => false,
            Fate::Transient => failed < self.transient_attempts,
            Fate::Poison => true,
        }
    }
}

/// A number in [0, 1) from a group's `seed`, `producer` and `seq`, the same
/// on every platform and version: SplitMix64's finalizer over the seed and
/// the message's number.
fn unit_hash(seed: u64, producer: u32, seq: u64) -> f64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let z = mix(mix(seed ^ u64::from(producer)) ^ seq);
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// What a fault does to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultAction {
    /// A crash: SIGKILL (local), `docker compose kill -s KILL`, then a start
    /// after `duration` on the same port and data.
    Kill,
    /// A graceful stop and start (SIGTERM, `docker compose restart`).
    Restart,
    /// The broker freezes for `duration` (SIGSTOP/SIGCONT, `docker compose pause`).
    Pause,
    /// Every node of a cluster in turn: a graceful stop and start, then a
    /// wait until it has rejoined before the next, as an upgrade goes.
    #[serde(rename = "rolling-restart")]
    RollingRestart,
    /// Every byte between the clients and the brokers arrives `latency`
    /// (± `jitter`) later, each way, for `duration` (the fault proxy).
    Delay,
    /// Every client connection is reset at once; for `duration`, new
    /// connections are reset as they arrive (the fault proxy).
    Cut,
    /// Nothing passes between the clients and the brokers for `duration`,
    /// yet connections stay open, so that only the clients' timeouts can
    /// tell (the fault proxy).
    Blackhole,
    /// A node of a cluster cut off from the others for `duration`, then
    /// healed; the clients still reach it (network namespaces).
    Partition,
}

impl FaultAction {
    /// The name used in scenario files and results.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultAction::Kill => "kill",
            FaultAction::Restart => "restart",
            FaultAction::Pause => "pause",
            FaultAction::RollingRestart => "rolling-restart",
            FaultAction::Delay => "delay",
            FaultAction::Cut => "cut",
            FaultAction::Blackhole => "blackhole",
            FaultAction::Partition => "partition",
        }
    }

    /// Whether it is done to the network between the clients and the
    /// brokers (through the fault proxy) rather than to the brokers.
    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultAction::Delay | FaultAction::Cut | FaultAction::Blackhole
        )
    }
}

/// One fault on the timeline.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fault {
    /// When, from the start of the steady (measured) phase.
    #[serde(with = "human_duration")]
    pub at: Duration,
    /// What happens.
    pub action: FaultAction,
    /// Kill: time down before the start. Pause: time frozen. Delay, cut
    /// and black hole: how long the network is so. Restart and rolling
    /// restart: unused.
    #[serde(with = "human_duration")]
    pub duration: Duration,
    /// Delay: added each way, and by how much it varies either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Which node of a cluster it hits; `None` on a single node (and for a
    /// rolling restart, which hits every node in turn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeChoice>,
}

/// What a delay fault adds to the network, each way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delay {
    /// Added to every byte each way.
    #[serde(with = "human_duration")]
    pub latency: Duration,
    /// The most it varies from `latency`, either way (uniformly), never
    /// reordering bytes.
    #[serde(with = "human_duration")]
    pub jitter: Duration,
}

/// Which node of a cluster a fault hits, chosen when the fault starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeChoice {
    /// The node that leads what the scenario uses (the queue, the stream,
    /// most of the topic's partitions), as the broker reports it then.
    Leader,
    /// A node that does not lead it.
    Follower,
    /// Any node, chosen at random.
    Any,
    /// Node N, counting from 1.
    Number(u8),
}

impl NodeChoice {
    /// As scenarios and results write it: `leader`, `follower`, `any`, `2`.
    pub fn name(self) -> String {
        match self {
            NodeChoice::Leader => "leader".into(),
            NodeChoice::Follower => "follower".into(),
            NodeChoice::Any => "any".into(),
            NodeChoice::Number(n) => n.to_string(),
        }
    }

    /// `leader`, `follower`, `any` or a node number from 1 to `nodes`.
    pub fn parse(text: &str, nodes: u8) -> Result<Self, String> {
        match text {
            "leader" => Ok(NodeChoice::Leader),
            "follower" => Ok(NodeChoice::Follower),
            "any" => Ok(NodeChoice::Any),
            number => match number.parse::<u8>() {
                Ok(n) if (1..=nodes).contains(&n) => Ok(NodeChoice::Number(n)),
                _ => Err(format!(
                    "must be \"leader\", \"follower\", \"any\" or a node number from 1 to {nodes}, got {number:?}"
                )),
            },
        }
    }
}

impl Serialize for NodeChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for NodeChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        NodeChoice::parse(&text, u8::MAX).map_err(serde::de::Error::custom)
    }
}

/// `[cluster]`: how many nodes each broker runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Nodes per broker; 1 is a single node. Every queue, stream and topic
    /// is replicated on all of them.
    pub nodes: u8,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster { nodes: 1 }
    }
}

impl Cluster {
    /// The most nodes a local cluster may have.
    pub const MAX_NODES: u8 = 5;

    /// Whether this is a single node.
    pub fn is_single(&self) -> bool {
        self.nodes <= 1
    }
}

/// What a producer does with a message the broker did not confirm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unconfirmed {
    /// Send it again until confirmed (at-least-once; may duplicate).
    Retry,
    /// Give up on it: counted as failed (it may still arrive: "recovered").
    Drop,
}

/// How clients recover from broker faults.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recovery {
    /// What producers do with unconfirmed messages.
    pub on_unconfirmed: Unconfirmed,
    /// Longest wait between reconnection attempts (1 s, 2 s, 4 s, ... up to this).
    #[serde(with = "human_duration")]
    pub backoff_max: Duration,
    /// Stop reconnecting after this long without success.
    #[serde(with = "human_duration")]
    pub give_up: Duration,
    /// How long a publish waits for the broker's answer before it counts
    /// as timed out (and, with `retry`, is sent again); `None`: each
    /// client's own (30 s; JetStream 5 s; Kafka librdkafka's
    /// `message.timeout.ms`, at least `give_up`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_duration"
    )]
    pub confirm_timeout: Option<Duration>,
}

/// `[security]`: TLS and authentication on the local brokers, so that a run
/// measures what they cost. Brokers the user runs take theirs from the
/// targets file (`[BROKER.tls]`, `[BROKER.auth]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSecurity {
    /// Clients reach the brokers over TLS only, with certificates made
    /// for the run.
    #[serde(default)]
    pub tls: bool,
    /// Clients log in as a user made for the run, its password from
    /// `BROKERBENCH_LOCAL_PASSWORD` or random.
    #[serde(default)]
    pub auth: bool,
}

impl LocalSecurity {
    /// Neither TLS nor authentication.
    pub fn is_plain(&self) -> bool {
        !self.tls && !self.auth
    }
}

/// `[durability]`: what a broker's confirmation means for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Durability {
    /// Whether each broker syncs a message to disk before confirming it.
    #[serde(default)]
    pub sync: SyncPolicy,
}

/// When a broker syncs (fsyncs) a message it confirms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPolicy {
    /// Each broker's own flush policy: RabbitMQ fsyncs before confirming
    /// persistent messages (quorum queues always), JetStream syncs every
    /// 2 minutes, Kafka leaves it to the page cache and replication.
    #[default]
    BrokerDefault,
    /// Sync before confirming wherever the broker can: JetStream's
    /// server-wide `sync_interval: always`, Kafka's topic `flush.messages=1`;
    /// RabbitMQ does so already for persistent messages.
    BeforeConfirm,
}

impl SyncPolicy {
    /// The value as written in scenarios.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPolicy::BrokerDefault => "broker-default",
            SyncPolicy::BeforeConfirm => "before-confirm",
        }
    }
}

/// The offered load.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Load {
    /// Target rate in messages per second over all producers; 0 means as fast
    /// as possible (closed loop).
    pub rate: f64,
    /// How long the measured load runs.
    #[serde(with = "human_duration")]
    pub duration: Duration,
    /// Load that runs before the measured part; its messages are accounted
    /// for but not in latencies or rates.
    #[serde(with = "human_duration")]
    pub warmup: Duration,
    /// Producer tasks, each with its own channel/publisher over the one connection.
    pub producers: u32,
    /// Payload size in bytes (the event is padded to it, never cut).
    pub message_size: usize,
    /// `json` (the versioned event, at least about 264 bytes) or `binary`
    /// (the envelope and trace id alone, 62 bytes, for small messages).
    #[serde(default)]
    pub encoding: Encoding,
    /// Whether each message carries its order id and trace id in headers or
    /// properties as well (AMQP `message-id` and a `trace_id` header,
    /// JetStream `Nats-Msg-Id` for the server's duplicate detection and
    /// `trace_id`, a Kafka `trace_id` header). Off, the payload alone
    /// carries them, as the brokers' reference clients send no headers:
    /// for like-for-like comparisons.
    #[serde(default = "yes")]
    pub headers: bool,
    /// The event the producers publish first: `v1`, its compatible
    /// evolution `v2`, or the negative control `v2-broken` that every typed
    /// decoder must refuse (docs/cross-language.md, schema evolution).
    #[serde(default)]
    pub event_version: EventVersion,
    /// Later versions the producers switch to during the measured phase,
    /// in order: a rolling deploy of the producing service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evolution: Vec<Evolution>,
    /// Distinct `user_id` values; the partition key, and per-key order is checked.
    pub keys: u64,
    /// Publishes awaiting confirmation per producer before it waits.
    pub max_in_flight: usize,
    /// After the load, how long to wait for outstanding confirms and deliveries.
    #[serde(with = "human_duration")]
    pub drain_timeout: Duration,
    /// When the drain runs out with confirmed messages undelivered, how long
    /// the groups read on at full speed (no processing time) before the
    /// broker is asked what it still holds (Jepsen's final read).
    #[serde(with = "human_duration")]
    pub final_read: Duration,
}

impl Load {
    /// Whether the pacer sets the send times (open loop) or the brokers do.
    pub fn open_loop(&self) -> bool {
        self.rate > 0.0
    }

    /// The event version of a message meant to be sent `since` the start
    /// of the measured phase (`None`: during the warmup).
    pub fn event_version_at(&self, since: Option<Duration>) -> EventVersion {
        let Some(since) = since else {
            return self.event_version;
        };
        self.evolution
            .iter()
            .take_while(|step| step.at <= since)
            .last()
            .map_or(self.event_version, |step| step.event_version)
    }
}

/// A step of `[[load.evolution]]`: from `at` (counted from the start of the
/// measured phase, as faults are) the producers publish `event_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evolution {
    #[serde(with = "human_duration")]
    pub at: Duration,
    pub event_version: EventVersion,
}

/// A consumer group: a service that must see every event.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsumerGroup {
    /// Group name (queue, durable consumer or Kafka group id).
    pub group: String,
    /// Simulated work per message before the acknowledgement.
    #[serde(with = "human_duration")]
    pub processing_time: Duration,
    /// Messages processed at the same time.
    pub concurrency: usize,
    /// Messages this group fails to process, on purpose; `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<Failures>,
    /// The language the group's consumer is written in: brokerbench's own
    /// (Rust), or an agent in `agents/` (docs/cross-language.md).
    #[serde(default, skip_serializing_if = "Language::is_rust")]
    pub language: Language,
}

/// The language of a consumer group's consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// brokerbench's own consumer, in this process.
    #[default]
    Rust,
    /// `agents/go`.
    Go,
    /// `agents/python`.
    Python,
    /// `agents/node`.
    Node,
}

impl Language {
    /// brokerbench's own consumer.
    pub fn is_rust(&self) -> bool {
        *self == Language::Rust
    }

    /// As scenarios and results write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Go => "go",
            Language::Python => "python",
            Language::Node => "node",
        }
    }
}

/// RabbitMQ queue type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Raft-replicated, durable; RabbitMQ's recommendation for data safety.
    Quorum,
    /// The original queue type; durability depends on `persistent`.
    Classic,
}

/// Where RabbitMQ publishes go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exchange {
    /// A topic exchange each group's queue binds with the event type, as
    /// event-driven services route by event type.
    #[default]
    Topic,
    /// A direct exchange bound the same way: an exact match, cheaper for the
    /// broker to route.
    Direct,
    /// RabbitMQ's nameless default exchange, straight to the one queue (publish
    /// only, or a single group), as the brokers' reference publishers send:
    /// the least routing work.
    Default,
}

/// RabbitMQ settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RabbitmqSettings {
    /// Queue type of each group's queue.
    pub queue_type: QueueType,
    /// Publish with delivery mode 2 (persistent).
    pub persistent: bool,
    /// Unacknowledged deliveries per consumer (basic.qos).
    pub prefetch: u16,
    /// Quorum queues: whether dead-lettering is confirmed (at least once) or
    /// fire-and-forget (at most once, RabbitMQ's default). Classic queues
    /// can only do at most once.
    #[serde(default)]
    pub dead_letter_strategy: DeadLetterStrategy,
    /// Declare the dead-letter exchange the queues name. `false` leaves it
    /// undeclared, as a set-up with a typo in its name would: with at-most-once
    /// dead-lettering RabbitMQ then drops dead letters without a word (with
    /// at-least-once it keeps them in the source queue, retrying, so that
    /// combination is refused).
    #[serde(default = "yes")]
    pub declare_dead_letter_exchange: bool,
    /// Where publishes go.
    #[serde(default)]
    pub exchange: Exchange,
}

fn yes() -> bool {
    true
}

/// RabbitMQ's `x-dead-letter-strategy` for quorum queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeadLetterStrategy {
    /// The dead-letter queue confirms each dead letter before the source
    /// queue lets go of it (needs `x-overflow = reject-publish`).
    #[default]
    AtLeastOnce,
    /// Dead letters are published without confirmation: a crash can drop them.
    AtMostOnce,
}

impl DeadLetterStrategy {
    /// The value of `x-dead-letter-strategy`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterStrategy::AtLeastOnce => "at-least-once",
            DeadLetterStrategy::AtMostOnce => "at-most-once",
        }
    }
}

/// JetStream storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk; survives a restart.
    File,
    /// In memory; lost on restart.
    Memory,
}

/// NATS JetStream settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JetstreamSettings {
    /// Stream storage.
    pub storage: Storage,
    /// Unacknowledged messages per consumer.
    pub max_ack_pending: i64,
    /// With failures: on a message's last delivery (`max_deliver`), a failed
    /// attempt is terminated (`+TERM`, whose advisory is sent at once)
    /// rather than NAKed. nats-server 2.9 sends the max-deliveries advisory
    /// only while a pull request waits, which can hold a dead letter back for
    /// the pull's whole expiry (30 s) once the load stops.
    #[serde(default = "yes")]
    pub terminate_last_delivery: bool,
}

/// Kafka producer acknowledgements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acks {
    /// All in-sync replicas; with the idempotent producer.
    #[serde(rename = "all")]
    All,
    /// The partition leader only.
    #[serde(rename = "1")]
    Leader,
    /// No acknowledgement at all.
    #[serde(rename = "0")]
    None,
}

impl Acks {
    /// The librdkafka `acks` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
            Acks::None => "0",
        }
    }
}

/// Kafka compression codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression.
    None,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// What a Kafka message is keyed by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    /// `user-<key>`: each user's orders in one partition, in order.
    #[default]
    UserId,
    /// No key, as Kafka's `ProducerPerformance` sends: librdkafka's sticky
    /// partitioner fills one partition's batch at a time, and order holds
    /// within a partition only.
    None,
}

impl KafkaKey {
    /// As the results name it.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaKey::UserId => "user_id",
            KafkaKey::None => "none",
        }
    }
}

/// Kafka settings. Fields missing from results files written before they
/// existed read as their defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// Partitions of the topic.
    pub partitions: i32,
    /// What messages are keyed by.
    pub key: KafkaKey,
    /// Producer acknowledgements.
    pub acks: Acks,
    /// Producer compression.
    pub compression: Compression,
    /// Consumer `fetch.wait.max.ms`: how long a fetch may wait for data.
    /// Apache Kafka answers as soon as `fetch.min.bytes` = 1 is met; some
    /// Kafka-protocol brokers hold every fetch this long, so it bounds their
    /// end-to-end latency.
    #[serde(with = "human_duration")]
    pub fetch_wait_max: Duration,
    /// The idempotent producer (`enable.idempotence`); needs acks = all.
    pub idempotent: bool,
    /// `linger.ms`: how long the producer waits to fill a batch.
    #[serde(with = "human_duration")]
    pub linger: Duration,
    /// `batch.size`: the most bytes in one batch per partition.
    pub batch_size: u32,
    /// `batch.num.messages`: the most messages in one batch.
    pub batch_messages: u32,
}

// The defaults of everything a scenario file may leave out, one `Default`
// per section; `file.rs` fills gaps from these and docs/scenarios.md lists them.

impl Default for Load {
    /// `rate` and `duration` have no default: a scenario must give them.
    fn default() -> Self {
        Load {
            rate: 0.0,
            duration: Duration::ZERO,
            warmup: Duration::ZERO,
            producers: 1,
            message_size: 512,
            encoding: Encoding::Json,
            headers: true,
            event_version: EventVersion::V1,
            evolution: Vec::new(),
            keys: 1000,
            max_in_flight: 1000,
            drain_timeout: Duration::from_secs(30),
            final_read: Duration::from_secs(30),
        }
    }
}

impl ConsumerGroup {
    /// Group `name` with the default processing time (none) and concurrency.
    pub fn named(name: String) -> Self {
        ConsumerGroup {
            group: name,
            processing_time: Duration::ZERO,
            concurrency: 16,
            failures: None,
            language: Language::Rust,
        }
    }
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            on_unconfirmed: Unconfirmed::Retry,
            backoff_max: Duration::from_secs(8),
            give_up: Duration::from_secs(60),
            confirm_timeout: None,
        }
    }
}

impl Default for RabbitmqSettings {
    fn default() -> Self {
        RabbitmqSettings {
            queue_type: QueueType::Quorum,
            persistent: true,
            prefetch: 100,
            dead_letter_strategy: DeadLetterStrategy::AtLeastOnce,
            declare_dead_letter_exchange: true,
            exchange: Exchange::Topic,
        }
    }
}

impl Default for JetstreamSettings {
    fn default() -> Self {
        JetstreamSettings {
            storage: Storage::File,
            max_ack_pending: 1000,
            terminate_last_delivery: true,
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            partitions: 6,
            key: KafkaKey::UserId,
            acks: Acks::All,
            compression: Compression::None,
            fetch_wait_max: Duration::from_millis(10),
            idempotent: true,
            linger: Duration::from_millis(5),
            batch_size: 1_000_000,
            batch_messages: 10_000,
        }
    }
}

/// Command-line values that replace the file's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--brokers`
    pub brokers: Option<Vec<BrokerKind>>,
    /// `--rate`
    pub rate: Option<f64>,
    /// `--duration`
    pub duration: Option<Duration>,
    /// `--threshold [BROKER.]METRIC=VALUE`, in order.
    pub thresholds: Vec<String>,
    /// `--publish-only`: the file's consumer groups are left out.
    pub publish_only: bool,
    /// `--find-max`: search each broker's highest sustainable rate.
    pub find_max: bool,
    /// `--slo METRIC<VALUE`, for `--find-max`.
    pub slo: Vec<String>,
    /// `--keep-data`: leave the run's data in the broker.
    pub keep_data: bool,
}

impl Plan {
    /// Whether any fault is a partition, so that each node of a local
    /// cluster runs in a network namespace of its own.
    pub fn has_partitions(&self) -> bool {
        self.faults
            .iter()
            .any(|f| f.action == FaultAction::Partition)
    }

    /// Whether any fault is done to the network, so that every client
    /// connection goes through the fault proxy.
    pub fn has_network_faults(&self) -> bool {
        self.faults.iter().any(|f| f.action.is_network())
    }

    /// Whether the run only publishes: no consumer group.
    pub fn publish_only(&self) -> bool {
        self.consumers.is_empty()
    }

    /// Whether any group fails messages on purpose: then dead letters are
    /// set up and read.
    pub fn has_failures(&self) -> bool {
        self.consumers.iter().any(|c| c.failures.is_some())
    }

    /// Whether brokers are to sync each message before confirming it
    /// (`[durability] sync = "before-confirm"`).
    pub fn syncs_before_confirm(&self) -> bool {
        self.durability.sync == SyncPolicy::BeforeConfirm
    }

    /// Reads, parses and validates a scenario file, then applies `overrides`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Plan, ScenarioError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ScenarioError::unreadable(path, &e))?;
        Plan::parse(path, &text, overrides)
    }

    /// Parses and validates scenario `text` (named `path` in errors).
    pub fn parse(path: &Path, text: &str, overrides: &Overrides) -> Result<Plan, ScenarioError> {
        let mut plan = file::ScenarioFile::parse(text)
            .and_then(|f| f.into_plan(path, overrides.rate))
            .map_err(|e| e.in_file(path, text))?;
        plan.apply(overrides)?;
        Ok(plan)
    }

    /// Merges command-line overrides: the one place they enter the plan.
    fn apply(&mut self, overrides: &Overrides) -> Result<(), ScenarioError> {
        if let Some(brokers) = &overrides.brokers {
            self.brokers = dedup(brokers.clone());
        }
        if let Some(rate) = overrides.rate {
            if !(rate.is_finite() && rate >= 0.0) {
                return Err(ScenarioError::flag(
                    "--rate",
                    format!("must be 0 or more, got {rate}"),
                ));
            }
            self.load.rate = rate;
        }
        if overrides.publish_only {
            self.consumers.clear();
        }
        self.keep_data = overrides.keep_data;
        if let Some(duration) = overrides.duration {
            if duration.is_zero() {
                return Err(ScenarioError::flag(
                    "--duration",
                    "must be more than 0".into(),
                ));
            }
            self.load.duration = duration;
        }
        if overrides.find_max {
            let search =
                FindMax::new(&overrides.slo).map_err(|e| ScenarioError::flag("--slo", e))?;
            let per_group = search
                .limits
                .iter()
                .find(|(_, m, _)| m.scope() == thresholds::Scope::Group);
            if let (true, Some((_, metric, _))) = (self.consumers.is_empty(), per_group) {
                return Err(ScenarioError::flag(
                    "--slo",
                    format!("{metric} is measured per consumer group, and this run publishes only"),
                ));
            }
            self.find_max = Some(search);
        }
        for assignment in &overrides.thresholds {
            self.thresholds
                .set_from_flag(assignment)
                .map_err(|e| ScenarioError::flag("--threshold", e))?;
        }
        let rate_ratio = thresholds::Metric::RateRatio;
        if !self.load.open_loop() && self.thresholds.iter().any(|(_, m, _)| m == rate_ratio) {
            return Err(ScenarioError::flag(
                if overrides.rate.is_some() {
                    "--rate"
                } else {
                    "--threshold"
                },
                format!(
                    "{rate_ratio} needs a target rate, and the rate is 0 (as fast as possible)"
                ),
            ));
        }
        Ok(())
    }
}

/// `brokers` without repeats, in first-seen order.
pub fn dedup(brokers: Vec<BrokerKind>) -> Vec<BrokerKind> {
    let mut seen = Vec::new();
    for b in brokers {
        if !seen.contains(&b) {
            seen.push(b);
        }
    }
    seen
}

/// Parses `"30s"`, `"250ms"`, `"1m 30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("'{text}' is not a duration ({e}); write it like \"30s\", \"250ms\" or \"2m\"")
    })
}

/// Durations in results and resolved scenarios read like the file: `"30s"`.
pub(crate) mod human_duration {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod optional_duration {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::human_duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = serde::Deserialize::deserialize(d)?;
        text.map(|t| super::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests;
