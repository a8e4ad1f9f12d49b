//! The scenario file as written, and its validation into a [`Plan`].

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::RawError;
use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScenarioFile {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    brokers: Option<Spanned<Vec<Spanned<String>>>>,
    load: LoadFile,
    #[serde(default)]
    consumers: Vec<ConsumerFile>,
    #[serde(default)]
    rabbitmq: RabbitmqFile,
    #[serde(default)]
    jetstream: JetstreamFile,
    #[serde(default)]
    kafka: KafkaFile,
    #[serde(default)]
    faults: Vec<FaultFile>,
    #[serde(default)]
    recovery: RecoveryFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    at: Spanned<String>,
    action: Spanned<FaultAction>,
    duration: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryFile {
    on_unconfirmed: Option<Unconfirmed>,
    backoff_max: Option<Spanned<String>>,
    give_up: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadFile {
    rate: Spanned<f64>,
    duration: Spanned<String>,
    warmup: Option<Spanned<String>>,
    producers: Option<Spanned<i64>>,
    message_size: Option<Spanned<i64>>,
    keys: Option<Spanned<i64>>,
    max_in_flight: Option<Spanned<i64>>,
    drain_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerFile {
    group: Spanned<String>,
    processing_time: Option<Spanned<String>>,
    concurrency: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RabbitmqFile {
    queue_type: Option<QueueType>,
    persistent: Option<bool>,
    prefetch: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JetstreamFile {
    storage: Option<Storage>,
    max_ack_pending: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaFile {
    partitions: Option<Spanned<i64>>,
    acks: Option<Acks>,
    compression: Option<Compression>,
    fetch_wait_max: Option<Spanned<String>>,
}

impl ScenarioFile {
    pub fn parse(text: &str) -> Result<Self, RawError> {
        toml::from_str(text).map_err(|e| RawError::toml(&e))
    }

    pub fn into_plan(self, path: &Path) -> Result<Plan, RawError> {
        let name = self.name.get_ref().trim().to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(RawError::at(
                self.name.span(),
                "must be non-empty and use only letters, digits, '-', '_' and '.' (it names the results directory)",
            ));
        }
        let brokers = match self.brokers {
            None => crate::broker::ALL.to_vec(),
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(RawError::at(
                        list.span(),
                        "lists no broker; leave it out to measure all three",
                    ));
                }
                let mut kinds = Vec::new();
                for b in list.into_inner() {
                    kinds.push(
                        b.get_ref()
                            .parse::<BrokerKind>()
                            .map_err(|e| RawError::at(b.span(), e))?,
                    );
                }
                dedup(kinds)
            }
        };
        let l = self.load;
        let rate = *l.rate.get_ref();
        if !(rate.is_finite() && rate >= 0.0) {
            return Err(RawError::at(
                l.rate.span(),
                format!("must be 0 (as fast as possible) or more, got {rate}"),
            ));
        }
        let duration = duration(&l.duration)?;
        if duration.is_zero() {
            return Err(RawError::at(l.duration.span(), "must be more than 0"));
        }
        let load = Load {
            rate,
            duration,
            warmup: optional_duration(&l.warmup, Duration::ZERO)?,
            producers: positive(&l.producers, 1, 1024)? as u32,
            message_size: positive(&l.message_size, 512, 16 << 20)? as usize,
            keys: positive(&l.keys, 1000, 1 << 32)? as u64,
            max_in_flight: positive(&l.max_in_flight, 1000, 1 << 20)? as usize,
            drain_timeout: optional_duration(&l.drain_timeout, Duration::from_secs(30))?,
        };
        if self.consumers.is_empty() {
            return Err(RawError::field(
                "consumers",
                None,
                "no consumer group: add at least one [[consumers]] with a `group`",
            ));
        }
        let mut consumers: Vec<ConsumerGroup> = Vec::new();
        for c in self.consumers {
            let group = c.group.get_ref().clone();
            if group.is_empty()
                || !group
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch))
            {
                return Err(RawError::at(
                    c.group.span(),
                    "must be non-empty and use only letters, digits, '-' and '_' (it names queues and consumers)",
                ));
            }
            if consumers.iter().any(|g| g.group == group) {
                return Err(RawError::at(
                    c.group.span(),
                    format!("group '{group}' appears twice"),
                ));
            }
            consumers.push(ConsumerGroup {
                group,
                processing_time: optional_duration(&c.processing_time, Duration::ZERO)?,
                concurrency: positive(&c.concurrency, 16, 100_000)? as usize,
            });
        }
        let faults = faults(&self.faults, load.duration)?;
        let recovery = Recovery {
            on_unconfirmed: self.recovery.on_unconfirmed.unwrap_or(Unconfirmed::Retry),
            backoff_max: optional_duration(&self.recovery.backoff_max, Duration::from_secs(8))?,
            give_up: optional_duration(&self.recovery.give_up, Duration::from_secs(60))?,
        };
        if recovery.backoff_max < Duration::from_secs(1) {
            let span = self.recovery.backoff_max.as_ref().map(|s| s.span());
            return Err(RawError::field(
                "recovery.backoff_max",
                span,
                "must be at least 1s (the first wait)",
            ));
        }
        Ok(Plan {
            name,
            description: self.description,
            source: path.to_path_buf(),
            brokers,
            load,
            consumers,
            rabbitmq: RabbitmqSettings {
                queue_type: self.rabbitmq.queue_type.unwrap_or(QueueType::Quorum),
                persistent: self.rabbitmq.persistent.unwrap_or(true),
                prefetch: positive(&self.rabbitmq.prefetch, 100, u16::MAX as i64)? as u16,
            },
            jetstream: JetstreamSettings {
                storage: self.jetstream.storage.unwrap_or(Storage::File),
                max_ack_pending: positive(&self.jetstream.max_ack_pending, 1000, 1 << 30)?,
            },
            kafka: KafkaSettings {
                partitions: positive(&self.kafka.partitions, 6, 10_000)? as i32,
                acks: self.kafka.acks.unwrap_or(Acks::All),
                compression: self.kafka.compression.unwrap_or(Compression::None),
                fetch_wait_max: optional_duration(
                    &self.kafka.fetch_wait_max,
                    Duration::from_millis(10),
                )?,
            },
            faults,
            recovery,
        })
    }
}

/// The fault timeline: in order, within the load, not overlapping.
fn faults(written: &[FaultFile], load: Duration) -> Result<Vec<Fault>, RawError> {
    let mut faults: Vec<Fault> = Vec::new();
    for f in written {
        let at = duration(&f.at)?;
        if at >= load {
            let end = humantime::format_duration(load);
            return Err(RawError::at(
                f.at.span(),
                format!("is at or after the end of the load ({end}); faults happen during the measured phase"),
            ));
        }
        let action = *f.action.get_ref();
        let length = match (&f.duration, action) {
            (Some(d), FaultAction::Restart) => {
                return Err(RawError::at(
                    d.span(),
                    "a restart has no duration (it takes as long as it takes)",
                ))
            }
            (None, FaultAction::Pause) => {
                return Err(RawError::at(f.action.span(), "a pause needs a `duration`"))
            }
            (Some(d), _) => duration(d)?,
            (None, _) => Duration::ZERO,
        };
        if let Some(previous) = faults.last() {
            if at < previous.at + previous.duration {
                return Err(RawError::at(
                    f.at.span(),
                    "starts before the previous fault is over (or is out of order)",
                ));
            }
        }
        faults.push(Fault {
            at,
            action,
            duration: length,
        });
    }
    Ok(faults)
}

fn duration(value: &Spanned<String>) -> Result<Duration, RawError> {
    parse_duration(value.get_ref()).map_err(|e| RawError::at(value.span(), e))
}

fn optional_duration(
    value: &Option<Spanned<String>>,
    default: Duration,
) -> Result<Duration, RawError> {
    value.as_ref().map_or(Ok(default), duration)
}

/// A whole number from 1 to `max`, or `default` when absent.
fn positive(value: &Option<Spanned<i64>>, default: i64, max: i64) -> Result<i64, RawError> {
    let Some(v) = value else { return Ok(default) };
    let n = *v.get_ref();
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(RawError::at(
            v.span(),
            format!("must be from 1 to {max}, got {n}"),
        ))
    }
}
