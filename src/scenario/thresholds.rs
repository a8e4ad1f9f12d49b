//! Thresholds: limits on measured figures that fail a run when crossed, as
//! k6's thresholds and Gatling's assertions do.
//!
//! ```toml
//! [thresholds]
//! end_to_end_p99 = "50ms"   # every group, every broker
//! rate_ratio = 0.99         # achieved / target
//! [thresholds.kafka]        # this broker's own limits win
//! end_to_end_p99 = "200ms"
//! ```
//!
//! Each metric is defined once here: its key, what its limit is, and which
//! way is worse. `crate::report` measures it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::kind::BrokerKind;

/// A figure a threshold can limit; written as its [`Metric::key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Metric {
    /// Publish latency (corrected for coordinated omission), median.
    PublishP50,
    /// Publish latency, 90th percentile.
    PublishP90,
    /// Publish latency, 99th percentile.
    PublishP99,
    /// Publish latency, 99.9th percentile.
    PublishP999,
    /// Publish latency, maximum.
    PublishMax,
    /// End-to-end latency (corrected), median, per group.
    EndToEndP50,
    /// End-to-end latency, 90th percentile, per group.
    EndToEndP90,
    /// End-to-end latency, 99th percentile, per group.
    EndToEndP99,
    /// End-to-end latency, 99.9th percentile, per group.
    EndToEndP999,
    /// End-to-end latency, maximum, per group.
    EndToEndMax,
    /// Achieved send rate over the target rate (open loop only); a minimum.
    RateRatio,
    /// Confirmed messages lost, per group.
    Lost,
    /// Deliveries beyond the first, per group.
    Duplicates,
    /// Deliveries the broker flagged as redeliveries, per group.
    Redelivered,
    /// Deliveries out of per-key order, per group.
    OutOfOrder,
    /// Publishes refused or not sent.
    Failed,
    /// Messages that fell due but were never sent (the producers fell behind).
    Unsent,
    /// Per fault, from the fault to the first publish confirmation after it.
    Recovery,
}

/// What a metric's limit is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A duration, e.g. `"50ms"`; measured in microseconds (latency) or seconds (recovery).
    Time,
    /// A whole number of messages.
    Count,
    /// A fraction from 0 to 1.
    Ratio,
}

/// What a metric is counted over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Once per broker.
    Broker,
    /// Once per consumer group.
    Group,
    /// Once per fault.
    Fault,
}

impl Metric {
    /// Every metric, in the order reports list them.
    pub const ALL: [Metric; 18] = [
        Metric::PublishP50,
        Metric::PublishP90,
        Metric::PublishP99,
        Metric::PublishP999,
        Metric::PublishMax,
        Metric::EndToEndP50,
        Metric::EndToEndP90,
        Metric::EndToEndP99,
        Metric::EndToEndP999,
        Metric::EndToEndMax,
        Metric::RateRatio,
        Metric::Lost,
        Metric::Duplicates,
        Metric::Redelivered,
        Metric::OutOfOrder,
        Metric::Failed,
        Metric::Unsent,
        Metric::Recovery,
    ];

    /// The key in scenario files and results, e.g. `end_to_end_p99`.
    pub fn key(self) -> &'static str {
        match self {
            Metric::PublishP50 => "publish_p50",
            Metric::PublishP90 => "publish_p90",
            Metric::PublishP99 => "publish_p99",
            Metric::PublishP999 => "publish_p999",
            Metric::PublishMax => "publish_max",
            Metric::EndToEndP50 => "end_to_end_p50",
            Metric::EndToEndP90 => "end_to_end_p90",
            Metric::EndToEndP99 => "end_to_end_p99",
            Metric::EndToEndP999 => "end_to_end_p999",
            Metric::EndToEndMax => "end_to_end_max",
            Metric::RateRatio => "rate_ratio",
            Metric::Lost => "lost",
            Metric::Duplicates => "duplicates",
            Metric::Redelivered => "redelivered",
            Metric::OutOfOrder => "out_of_order",
            Metric::Failed => "failed",
            Metric::Unsent => "unsent",
            Metric::Recovery => "recovery",
        }
    }

    /// The metric named `key`.
    pub fn from_key(key: &str) -> Result<Metric, String> {
        Metric::ALL
            .into_iter()
            .find(|m| m.key() == key)
            .ok_or_else(|| {
                let keys: Vec<&str> = Metric::ALL.iter().map(|m| m.key()).collect();
                format!("unknown threshold '{key}'; one of {}", keys.join(", "))
            })
    }

    /// What its limit is.
    pub fn kind(self) -> Kind {
        match self {
            Metric::RateRatio => Kind::Ratio,
            Metric::Lost
            | Metric::Duplicates
            | Metric::Redelivered
            | Metric::OutOfOrder
            | Metric::Failed
            | Metric::Unsent => Kind::Count,
            _ => Kind::Time,
        }
    }

    /// What it is counted over.
    pub fn scope(self) -> Scope {
        match self {
            Metric::EndToEndP50
            | Metric::EndToEndP90
            | Metric::EndToEndP99
            | Metric::EndToEndP999
            | Metric::EndToEndMax
            | Metric::Lost
            | Metric::Duplicates
            | Metric::Redelivered
            | Metric::OutOfOrder => Scope::Group,
            Metric::Recovery => Scope::Fault,
            _ => Scope::Broker,
        }
    }

    /// The limit is a minimum (the figure must not fall below it), not a maximum.
    pub fn is_minimum(self) -> bool {
        self == Metric::RateRatio
    }

    /// The unit its measured value and limit are given in, in results.
    pub fn unit(self) -> Unit {
        match (self.kind(), self) {
            (_, Metric::Recovery) => Unit::S,
            (Kind::Time, _) => Unit::Us,
            (Kind::Count, _) => Unit::Count,
            (Kind::Ratio, _) => Unit::Ratio,
        }
    }

    /// Reads a limit for this metric: a duration like `"50ms"`, a whole
    /// number, or a fraction, as its kind says. Command-line text is
    /// accepted for numbers too.
    pub fn limit(self, value: Written<'_>) -> Result<Limit, String> {
        match (self.kind(), value) {
            (Kind::Time, Written::Text(text)) => {
                let d = super::parse_duration(text)?;
                if d.is_zero() {
                    return Err("must be more than 0".into());
                }
                Ok(Limit::Time(d))
            }
            (Kind::Time, _) => Err("must be a duration like \"50ms\" or \"10s\"".into()),
            (Kind::Count, Written::Integer(n)) => u64::try_from(n)
                .map(Limit::Count)
                .map_err(|_| format!("must be 0 or more, got {n}")),
            (Kind::Count, Written::Text(text)) => text
                .trim()
                .parse()
                .map(Limit::Count)
                .map_err(|_| format!("must be a whole number of messages, got '{text}'")),
            (Kind::Count, Written::Float(_)) => Err("must be a whole number of messages".into()),
            (Kind::Ratio, value) => {
                let r = match value {
                    Written::Float(r) => r,
                    Written::Integer(n) => n as f64,
                    Written::Text(text) => text
                        .trim()
                        .parse()
                        .map_err(|_| format!("must be a number from 0 to 1, got '{text}'"))?,
                };
                if r > 0.0 && r <= 1.0 {
                    Ok(Limit::Ratio(r))
                } else {
                    Err(format!("must be more than 0 and at most 1, got {r}"))
                }
            }
        }
    }
}

impl From<Metric> for &'static str {
    fn from(metric: Metric) -> Self {
        metric.key()
    }
}

impl TryFrom<String> for Metric {
    type Error = String;

    fn try_from(key: String) -> Result<Self, String> {
        Metric::from_key(&key)
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A limit as written in a file or on the command line.
#[derive(Clone, Copy, Debug)]
pub enum Written<'a> {
    /// A string (or any command-line value).
    Text(&'a str),
    /// A TOML integer.
    Integer(i64),
    /// A TOML float.
    Float(f64),
}

/// The unit of a measured value and its limit in results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Microseconds.
    Us,
    /// Seconds.
    S,
    /// Messages.
    Count,
    /// A fraction.
    Ratio,
}

/// One metric's limit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Limit {
    /// A duration, written like the scenario: `"50ms"`.
    Time(#[serde(with = "super::human_duration")] Duration),
    /// A number of messages.
    Count(u64),
    /// A fraction.
    Ratio(f64),
}

impl Limit {
    /// The limit in `unit`, to compare with a measured value.
    pub fn value_in(self, unit: Unit) -> f64 {
        match (self, unit) {
            // Exact: whole microseconds, and nanoseconds to seconds by division.
            (Limit::Time(d), Unit::Us) => d.as_nanos() as f64 / 1e3,
            (Limit::Time(d), _) => d.as_nanos() as f64 / 1e9,
            (Limit::Count(n), _) => n as f64,
            (Limit::Ratio(r), _) => r,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Time(d) => write!(f, "{}", humantime::format_duration(*d)),
            Limit::Count(n) => write!(f, "{n}"),
            Limit::Ratio(r) => write!(f, "{r}"),
        }
    }
}

/// The scenario's thresholds: for every broker, and per broker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Limits on every broker.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub all: BTreeMap<Metric, Limit>,
    /// Limits on one broker, which replace `all`'s for the same metric.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_broker: BTreeMap<BrokerKind, BTreeMap<Metric, Limit>>,
}

impl Thresholds {
    /// The limits that hold for `broker`.
    pub fn for_broker(&self, broker: BrokerKind) -> BTreeMap<Metric, Limit> {
        let mut limits = self.all.clone();
        if let Some(own) = self.per_broker.get(&broker) {
            limits.extend(own.iter().map(|(m, l)| (*m, *l)));
        }
        limits
    }

    /// Whether any limit is set.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.per_broker.values().all(BTreeMap::is_empty)
    }

    /// Every limit with the broker it is for (`None`: all).
    pub fn iter(&self) -> impl Iterator<Item = (Option<BrokerKind>, Metric, Limit)> + '_ {
        let all = self.all.iter().map(|(m, l)| (None, *m, *l));
        let own = self
            .per_broker
            .iter()
            .flat_map(|(b, limits)| limits.iter().map(move |(m, l)| (Some(*b), *m, *l)));
        all.chain(own)
    }

    /// Sets one limit from `--threshold [BROKER.]METRIC=VALUE`.
    pub fn set_from_flag(&mut self, assignment: &str) -> Result<(), String> {
        let (key, value) = assignment.split_once('=').ok_or_else(|| {
            format!("'{assignment}' is not METRIC=VALUE, e.g. end_to_end_p99=50ms")
        })?;
        let key = key.trim();
        let (broker, metric) = match key.split_once('.') {
            Some((broker, metric)) => (Some(broker.parse::<BrokerKind>()?), metric),
            None => (None, key),
        };
        let metric = Metric::from_key(metric)?;
        let limit = metric
            .limit(Written::Text(value))
            .map_err(|e| format!("{key}: {e}"))?;
        match broker {
            None => self.all.insert(metric, limit),
            Some(b) => self.per_broker.entry(b).or_default().insert(metric, limit),
        };
        Ok(())
    }
}
