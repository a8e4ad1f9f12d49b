//! Scenario files: what the user's traffic looks like.
//!
//! A `ScenarioFile` is what the TOML says (serde, unknown fields refused,
//! durations as strings like `"30s"`); a [`Plan`] is what the run uses (real
//! `Duration`s, defaults filled in, command-line overrides merged in one
//! place). Every error names the file, line, column and field, so a typo in
//! a long scenario is found without guessing.

mod error;
mod file;
pub mod thresholds;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use error::RawError;
pub use error::ScenarioError;
pub use thresholds::Thresholds;

use crate::broker::BrokerKind;

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
    /// How clients recover from faults.
    pub recovery: Recovery,
    /// Limits on measured figures; each becomes a check.
    #[serde(default, skip_serializing_if = "Thresholds::is_empty")]
    pub thresholds: Thresholds,
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
}

impl FaultAction {
    /// The name used in scenario files and results.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultAction::Kill => "kill",
            FaultAction::Restart => "restart",
            FaultAction::Pause => "pause",
        }
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
    /// Kill: time down before the start. Pause: time frozen. Restart: unused.
    #[serde(with = "human_duration")]
    pub duration: Duration,
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
    /// Payload size in bytes (the JSON event is padded to it).
    pub message_size: usize,
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

/// RabbitMQ settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RabbitmqSettings {
    /// Queue type of each group's queue.
    pub queue_type: QueueType,
    /// Publish with delivery mode 2 (persistent).
    pub persistent: bool,
    /// Unacknowledged deliveries per consumer (basic.qos).
    pub prefetch: u16,
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

/// Kafka settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KafkaSettings {
    /// Partitions of the topic; messages are keyed by `user_id`.
    pub partitions: i32,
    /// Producer acknowledgements.
    pub acks: Acks,
    /// Producer compression.
    pub compression: Compression,
    /// Consumer `fetch.wait.max.ms`: how long a fetch may wait for data.
    /// tansu 0.6 holds every fetch this long even when data is there
    /// (Apache Kafka answers as soon as `fetch.min.bytes` = 1 is met), so it
    /// bounds end-to-end latency on tansu.
    #[serde(with = "human_duration")]
    pub fetch_wait_max: Duration,
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
        }
    }
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            on_unconfirmed: Unconfirmed::Retry,
            backoff_max: Duration::from_secs(8),
            give_up: Duration::from_secs(60),
        }
    }
}

impl Default for RabbitmqSettings {
    fn default() -> Self {
        RabbitmqSettings {
            queue_type: QueueType::Quorum,
            persistent: true,
            prefetch: 100,
        }
    }
}

impl Default for JetstreamSettings {
    fn default() -> Self {
        JetstreamSettings {
            storage: Storage::File,
            max_ack_pending: 1000,
        }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            partitions: 6,
            acks: Acks::All,
            compression: Compression::None,
            fetch_wait_max: Duration::from_millis(10),
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
}

impl Plan {
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
        if let Some(duration) = overrides.duration {
            if duration.is_zero() {
                return Err(ScenarioError::flag(
                    "--duration",
                    "must be more than 0".into(),
                ));
            }
            self.load.duration = duration;
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

#[cfg(test)]
mod tests;
