//! The scenario file as written, and its validation into a [`Plan`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::RawError;
use super::thresholds::{Limit, Metric, Thresholds, Written};
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
    #[serde(default)]
    durability: Durability,
    #[serde(default)]
    security: LocalSecurity,
    #[serde(default)]
    thresholds: BTreeMap<Spanned<String>, Spanned<Entry>>,
    dead_letter: Option<Spanned<DeadLetterFile>>,
    cluster: Option<ClusterFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    nodes: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterFile {
    max_deliveries: Option<Spanned<i64>>,
    retry_delay: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailuresFile {
    poison: Option<Spanned<f64>>,
    transient: Option<Spanned<f64>>,
    transient_attempts: Option<Spanned<i64>>,
}

/// A value under `[thresholds]`: a limit, or a broker's table of limits.
#[derive(Debug)]
enum Entry {
    Text(String),
    Integer(i64),
    Float(f64),
    Table(BTreeMap<Spanned<String>, Spanned<Entry>>),
    Other(&'static str),
}

// By hand rather than `untagged`, so that the keys and values inside a
// broker's table keep their places in the file for error messages.
impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a limit or a broker's table of limits")
            }
            fn visit_str<E>(self, v: &str) -> Result<Entry, E> {
                Ok(Entry::Text(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Entry, E> {
                Ok(Entry::Integer(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Entry, E> {
                Ok(Entry::Integer(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Entry, E> {
                Ok(Entry::Float(v))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Entry, E> {
                Ok(Entry::Other("a boolean"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Entry, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Entry::Other("an array"))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entry, A::Error> {
                let mut table = BTreeMap::new();
                while let Some((k, v)) = map.next_entry()? {
                    table.insert(k, v);
                }
                Ok(Entry::Table(table))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    at: Spanned<String>,
    action: Spanned<FaultAction>,
    duration: Option<Spanned<String>>,
    /// `"leader"`, `"follower"`, `"any"` or a node number.
    node: Option<Spanned<toml::Value>>,
    /// Delay: added each way.
    latency: Option<Spanned<String>>,
    /// Delay: how much the latency varies either way.
    jitter: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryFile {
    on_unconfirmed: Option<Unconfirmed>,
    backoff_max: Option<Spanned<String>>,
    give_up: Option<Spanned<String>>,
    confirm_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadFile {
    rate: Spanned<f64>,
    duration: Spanned<String>,
    warmup: Option<Spanned<String>>,
    producers: Option<Spanned<i64>>,
    message_size: Option<Spanned<i64>>,
    encoding: Option<Encoding>,
    headers: Option<bool>,
    event_version: Option<Spanned<EventVersion>>,
    #[serde(default)]
    evolution: Vec<EvolutionFile>,
    keys: Option<Spanned<i64>>,
    max_in_flight: Option<Spanned<i64>>,
    drain_timeout: Option<Spanned<String>>,
    final_read: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvolutionFile {
    at: Spanned<String>,
    event_version: Spanned<EventVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerFile {
    group: Spanned<String>,
    processing_time: Option<Spanned<String>>,
    concurrency: Option<Spanned<i64>>,
    failures: Option<Spanned<FailuresFile>>,
    language: Option<Spanned<Language>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RabbitmqFile {
    queue_type: Option<QueueType>,
    persistent: Option<bool>,
    prefetch: Option<Spanned<i64>>,
    dead_letter_strategy: Option<DeadLetterStrategy>,
    declare_dead_letter_exchange: Option<Spanned<bool>>,
    exchange: Option<Spanned<Exchange>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JetstreamFile {
    storage: Option<Storage>,
    max_ack_pending: Option<Spanned<i64>>,
    terminate_last_delivery: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaFile {
    partitions: Option<Spanned<i64>>,
    key: Option<KafkaKey>,
    acks: Option<Spanned<Acks>>,
    compression: Option<Compression>,
    fetch_wait_max: Option<Spanned<String>>,
    idempotent: Option<Spanned<bool>>,
    linger: Option<Spanned<String>>,
    batch_size: Option<Spanned<i64>>,
    batch_messages: Option<Spanned<i64>>,
}

impl ScenarioFile {
    pub fn parse(text: &str) -> Result<Self, RawError> {
        toml::from_str(text).map_err(|e| RawError::toml(&e))
    }

    /// The plan of this file; `rate_flag` is `--rate`, when given, which
    /// decides instead of the file whether a `rate_ratio` has a target.
    pub fn into_plan(self, path: &Path, rate_flag: Option<f64>) -> Result<Plan, RawError> {
        let name = plan_name(&self.name)?;
        let brokers = brokers(self.brokers)?;
        let load = load(self.load)?;
        // No [[consumers]]: publish only, as the brokers' own publish
        // benchmarks measure.
        let dead_letter = dead_letter(self.dead_letter.as_ref())?;
        let cluster = cluster(self.cluster.as_ref())?;
        check_languages_on_cluster(&self.consumers, cluster)?;
        let consumers = consumer_groups(self.consumers, &dead_letter, load.encoding)?;
        let failing = consumers.iter().any(|c| c.failures.is_some());
        let (rabbitmq, kafka) = broker_settings(
            self.rabbitmq,
            self.kafka,
            &brokers,
            consumers.len(),
            failing,
        )?;
        check_dead_letter_used(self.dead_letter.as_ref(), failing)?;
        let faults = faults(&self.faults, load.duration, cluster)?;
        let recovery = recovery(&self.recovery)?;
        let thresholds = thresholds(&self.thresholds)?;
        check_rate_ratio_target(&self.thresholds, &load, rate_flag)?;
        Ok(Plan {
            name,
            description: self.description,
            source: path.to_path_buf(),
            brokers,
            load,
            consumers,
            rabbitmq,
            jetstream: self.jetstream.into_settings()?,
            kafka,
            faults,
            cluster,
            recovery,
            durability: self.durability,
            security: self.security,
            thresholds,
            dead_letter,
            find_max: None,
            keep_data: false,
        })
    }
}

/// The scenario's `name`, trimmed, if it can name the results directory.
fn plan_name(written: &Spanned<String>) -> Result<String, RawError> {
    let name = written.get_ref().trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(RawError::at(
            written.span(),
            "must be non-empty and use only letters, digits, '-', '_' and '.' (it names the results directory)",
        ));
    }
    Ok(name)
}

/// The `brokers` to measure, without repeats; all of them when left out.
fn brokers(written: Option<Spanned<Vec<Spanned<String>>>>) -> Result<Vec<BrokerKind>, RawError> {
    let Some(list) = written else {
        return Ok(crate::kind::ALL.to_vec());
    };
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
    Ok(dedup(kinds))
}

/// `[load]`, its unwritten settings at their defaults.
fn load(l: LoadFile) -> Result<Load, RawError> {
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
    let d = Load::default();
    let encoding = l.encoding.unwrap_or(d.encoding);
    let event_version = l
        .event_version
        .as_ref()
        .map_or(d.event_version, |v| *v.get_ref());
    let evolution = evolution(&l.evolution, duration)?;
    let changed = l
        .event_version
        .as_ref()
        .filter(|v| *v.get_ref() != EventVersion::V1);
    let changed = changed
        .map(Spanned::span)
        .or(l.evolution.first().map(|e| e.at.span()));
    if let (Some(span), Encoding::Binary) = (changed, encoding) {
        return Err(RawError::at(
            span,
            "event versions are of the JSON event: needs load.encoding = \"json\"",
        ));
    }
    Ok(Load {
        rate,
        duration,
        warmup: optional_duration(&l.warmup, d.warmup)?,
        producers: positive(&l.producers, d.producers.into(), 1024)? as u32,
        message_size: positive(&l.message_size, d.message_size as i64, 16 << 20)? as usize,
        encoding,
        headers: l.headers.unwrap_or(d.headers),
        event_version,
        evolution,
        keys: positive(&l.keys, d.keys as i64, 1 << 32)? as u64,
        max_in_flight: positive(&l.max_in_flight, d.max_in_flight as i64, 1 << 20)? as usize,
        drain_timeout: optional_duration(&l.drain_timeout, d.drain_timeout)?,
        final_read: optional_duration(&l.final_read, d.final_read)?,
    })
}

/// A timeline's `at`, counted from the start of the measured phase, which
/// must fall within its `load`; the error says what `happens` there.
fn during_the_load(
    at: &Spanned<String>,
    load: Duration,
    happens: &str,
) -> Result<Duration, RawError> {
    let time = duration(at)?;
    if time >= load {
        let end = humantime::format_duration(load);
        return Err(RawError::at(
            at.span(),
            format!(
                "is at or after the end of the load ({end}); {happens} during the measured phase"
            ),
        ));
    }
    Ok(time)
}

/// `[[load.evolution]]`: steps in order, each during the measured phase.
fn evolution(written: &[EvolutionFile], load: Duration) -> Result<Vec<Evolution>, RawError> {
    let mut steps: Vec<Evolution> = Vec::new();
    for step in written {
        let at = during_the_load(&step.at, load, "a step happens")?;
        if steps.last().is_some_and(|previous| at <= previous.at) {
            return Err(RawError::at(
                step.at.span(),
                "is not after the previous step: steps go in order",
            ));
        }
        steps.push(Evolution {
            at,
            event_version: *step.event_version.get_ref(),
        });
    }
    Ok(steps)
}

/// The `[[consumers]]` groups, in order, each named once.
fn consumer_groups(
    written: Vec<ConsumerFile>,
    dead_letter: &DeadLetter,
    encoding: Encoding,
) -> Result<Vec<ConsumerGroup>, RawError> {
    let mut consumers: Vec<ConsumerGroup> = Vec::new();
    for c in written {
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
        let d = ConsumerGroup::named(group);
        let language = c.language.as_ref().map_or(d.language, |l| *l.get_ref());
        if let (Some(written), Encoding::Binary) = (&c.language, encoding) {
            if language != Language::Rust {
                return Err(RawError::at(
                    written.span(),
                    "consumers in other languages decode the JSON event: needs load.encoding = \"json\"",
                ));
            }
        }
        consumers.push(ConsumerGroup {
            language,
            processing_time: optional_duration(&c.processing_time, d.processing_time)?,
            concurrency: positive(&c.concurrency, d.concurrency as i64, 100_000)? as usize,
            failures: c
                .failures
                .as_ref()
                .map(|f| failures(f, dead_letter))
                .transpose()?,
            ..d
        });
    }
    Ok(consumers)
}

/// `[rabbitmq]` and `[kafka]`, refused where they cannot count the `groups`
/// consumer groups' events (`failing`: some group fails messages).
fn broker_settings(
    rabbitmq: RabbitmqFile,
    kafka: KafkaFile,
    brokers: &[BrokerKind],
    groups: usize,
    failing: bool,
) -> Result<(RabbitmqSettings, KafkaSettings), RawError> {
    let declare_span = rabbitmq
        .declare_dead_letter_exchange
        .as_ref()
        .map(Spanned::span);
    let acks_span = kafka.acks.as_ref().map(Spanned::span);
    let exchange_span = rabbitmq.exchange.as_ref().map(Spanned::span);
    let rabbitmq = rabbitmq.into_settings()?;
    let kafka = kafka.into_settings()?;
    if failing
        && brokers.contains(&BrokerKind::Rabbitmq)
        && !rabbitmq.declare_dead_letter_exchange
        && rabbitmq.queue_type == QueueType::Quorum
        && rabbitmq.dead_letter_strategy == DeadLetterStrategy::AtLeastOnce
    {
        return Err(RawError::field(
            "rabbitmq.declare_dead_letter_exchange",
            declare_span,
            "is false with dead_letter_strategy \"at-least-once\": RabbitMQ would keep every dead letter in the source queue, retrying, where brokerbench cannot count it; set dead_letter_strategy = \"at-most-once\" to see a missing exchange drop them",
        ));
    }
    if rabbitmq.exchange == Exchange::Default
        && groups > 1
        && brokers.contains(&BrokerKind::Rabbitmq)
    {
        return Err(RawError::field(
            "rabbitmq.exchange",
            exchange_span,
            format!("is \"default\", which routes to one queue, and {groups} consumer groups each need every event; use \"topic\" or \"direct\""),
        ));
    }
    if failing && brokers.contains(&BrokerKind::Kafka) && kafka.acks == Acks::None {
        return Err(RawError::field(
            "kafka.acks",
            acks_span,
            "is \"0\", and a group fails messages: a dead letter's write must be confirmed before its offset moves on; use \"1\" or \"all\"",
        ));
    }
    Ok((rabbitmq, kafka))
}

/// Refuses a written `[dead_letter]` when no group fails messages.
fn check_dead_letter_used(
    written: Option<&Spanned<DeadLetterFile>>,
    failing: bool,
) -> Result<(), RawError> {
    if let Some(written) = written {
        if !failing {
            return Err(RawError::field(
                "dead_letter",
                Some(written.span()),
                "no group fails messages: [dead_letter] applies to groups with [consumers.failures]",
            ));
        }
    }
    Ok(())
}

/// `[recovery]`, or its defaults.
fn recovery(written: &RecoveryFile) -> Result<Recovery, RawError> {
    let d = Recovery::default();
    let recovery = Recovery {
        on_unconfirmed: written.on_unconfirmed.unwrap_or(d.on_unconfirmed),
        backoff_max: optional_duration(&written.backoff_max, d.backoff_max)?,
        give_up: optional_duration(&written.give_up, d.give_up)?,
        confirm_timeout: written.confirm_timeout.as_ref().map(duration).transpose()?,
    };
    if let Some(timeout) = recovery.confirm_timeout {
        if timeout < Duration::from_secs(1) {
            let span = written.confirm_timeout.as_ref().map(|s| s.span());
            return Err(RawError::field(
                "recovery.confirm_timeout",
                span,
                "must be at least 1s",
            ));
        }
    }
    if recovery.backoff_max < Duration::from_secs(1) {
        let span = written.backoff_max.as_ref().map(|s| s.span());
        return Err(RawError::field(
            "recovery.backoff_max",
            span,
            "must be at least 1s (the first wait)",
        ));
    }
    Ok(recovery)
}

/// Refuses a `rate_ratio` limit when the load has no target rate.
fn check_rate_ratio_target(
    written: &BTreeMap<Spanned<String>, Spanned<Entry>>,
    load: &Load,
    rate_flag: Option<f64>,
) -> Result<(), RawError> {
    // With --rate, `Plan::apply` checks the rate that will be used.
    if !load.open_loop() && rate_flag.is_none() {
        // At the top level or in a broker's table.
        let top = written.keys();
        let nested = written.values().flat_map(|e| match e.get_ref() {
            Entry::Table(t) => t.keys().collect(),
            _ => Vec::new(),
        });
        if let Some(key) = top
            .chain(nested)
            .find(|k| k.get_ref() == Metric::RateRatio.key())
        {
            return Err(RawError::at(
                key.span(),
                "needs a target rate: load.rate is 0 (as fast as possible)",
            ));
        }
    }
    Ok(())
}

/// `[dead_letter]`, or its defaults.
fn dead_letter(written: Option<&Spanned<DeadLetterFile>>) -> Result<DeadLetter, RawError> {
    let d = DeadLetter::default();
    let Some(written) = written else {
        return Ok(d);
    };
    let w = written.get_ref();
    let retry_delay = optional_duration(&w.retry_delay, d.retry_delay)?;
    if retry_delay > Duration::from_secs(3600) {
        let span = w.retry_delay.as_ref().map(|s| s.span());
        return Err(RawError::field(
            "dead_letter.retry_delay",
            span,
            "must be at most 1h",
        ));
    }
    Ok(DeadLetter {
        // The ledger counts up to 127 deliveries of a message.
        max_deliveries: positive(&w.max_deliveries, d.max_deliveries.into(), 100)? as u32,
        retry_delay,
    })
}

/// A group's `[consumers.failures]`.
fn failures(
    written: &Spanned<FailuresFile>,
    dead_letter: &DeadLetter,
) -> Result<Failures, RawError> {
    let w = written.get_ref();
    let fraction = |value: &Option<Spanned<f64>>| -> Result<f64, RawError> {
        let Some(v) = value else { return Ok(0.0) };
        let x = *v.get_ref();
        if (0.0..=1.0).contains(&x) {
            Ok(x)
        } else {
            Err(RawError::at(
                v.span(),
                format!("is a fraction of the messages: from 0 to 1, got {x}"),
            ))
        }
    };
    let poison = fraction(&w.poison)?;
    let transient = fraction(&w.transient)?;
    if poison + transient > 1.0 {
        let span = w.transient.as_ref().map_or(written.span(), |t| t.span());
        return Err(RawError::at(
            span,
            format!("poison ({poison}) and transient ({transient}) add up to more than 1"),
        ));
    }
    let transient_attempts = positive(&w.transient_attempts, 1, 100)? as u32;
    if transient > 0.0 && transient_attempts >= dead_letter.max_deliveries {
        let span = w
            .transient_attempts
            .as_ref()
            .map_or(written.span(), |t| t.span());
        return Err(RawError::at(
            span,
            format!(
                "is {transient_attempts}, and dead_letter.max_deliveries is {}: every transient message would be dead-lettered; make it less",
                dead_letter.max_deliveries
            ),
        ));
    }
    Ok(Failures {
        poison,
        transient,
        transient_attempts,
    })
}

/// `[thresholds]` and its per-broker tables.
fn thresholds(written: &BTreeMap<Spanned<String>, Spanned<Entry>>) -> Result<Thresholds, RawError> {
    let mut thresholds = Thresholds::default();
    for (key, entry) in written {
        if let Entry::Table(table) = entry.get_ref() {
            let broker = key.get_ref().parse::<BrokerKind>().map_err(|e| {
                RawError::at(
                    key.span(),
                    format!("{e}: a table under [thresholds] names the broker its limits are for"),
                )
            })?;
            let mut limits = BTreeMap::new();
            for (key, entry) in table {
                let (metric, limit) = limit(key, entry, &format!("thresholds.{broker}"))?;
                limits.insert(metric, limit);
            }
            thresholds.per_broker.insert(broker, limits);
        } else {
            let (metric, limit) = limit(key, entry, "thresholds")?;
            thresholds.all.insert(metric, limit);
        }
    }
    Ok(thresholds)
}

/// One `metric = limit` line of table `table`.
fn limit(
    key: &Spanned<String>,
    entry: &Spanned<Entry>,
    table: &str,
) -> Result<(Metric, Limit), RawError> {
    let field = format!("{table}.{}", key.get_ref());
    let metric = Metric::from_key(key.get_ref())
        .map_err(|e| RawError::field(field.clone(), Some(key.span()), e))?;
    let written = match entry.get_ref() {
        Entry::Text(text) => Written::Text(text),
        Entry::Integer(n) => Written::Integer(*n),
        Entry::Float(x) => Written::Float(*x),
        Entry::Table(_) => Err(RawError::field(
            field.clone(),
            Some(entry.span()),
            "is a table; a limit is a value like \"50ms\", 0 or 0.99",
        ))?,
        Entry::Other(what) => Err(RawError::field(
            field.clone(),
            Some(entry.span()),
            format!("is {what}; a limit is a value like \"50ms\", 0 or 0.99"),
        ))?,
    };
    let limit = metric
        .limit(written)
        .map_err(|e| RawError::field(field, Some(entry.span()), e))?;
    Ok((metric, limit))
}

impl RabbitmqFile {
    fn into_settings(self) -> Result<RabbitmqSettings, RawError> {
        let d = RabbitmqSettings::default();
        Ok(RabbitmqSettings {
            queue_type: self.queue_type.unwrap_or(d.queue_type),
            persistent: self.persistent.unwrap_or(d.persistent),
            prefetch: positive(&self.prefetch, d.prefetch.into(), u16::MAX as i64)? as u16,
            dead_letter_strategy: self.dead_letter_strategy.unwrap_or(d.dead_letter_strategy),
            declare_dead_letter_exchange: self
                .declare_dead_letter_exchange
                .map_or(d.declare_dead_letter_exchange, Spanned::into_inner),
            exchange: self.exchange.map_or(d.exchange, Spanned::into_inner),
        })
    }
}

impl JetstreamFile {
    fn into_settings(self) -> Result<JetstreamSettings, RawError> {
        let d = JetstreamSettings::default();
        Ok(JetstreamSettings {
            storage: self.storage.unwrap_or(d.storage),
            max_ack_pending: positive(&self.max_ack_pending, d.max_ack_pending, 1 << 30)?,
            terminate_last_delivery: self
                .terminate_last_delivery
                .unwrap_or(d.terminate_last_delivery),
        })
    }
}

impl KafkaFile {
    fn into_settings(self) -> Result<KafkaSettings, RawError> {
        let d = KafkaSettings::default();
        let acks = self.acks.as_ref().map_or(d.acks, |a| *a.get_ref());
        if let Some(idempotent) = self.idempotent.as_ref().filter(|i| *i.get_ref()) {
            if acks != Acks::All {
                return Err(RawError::at(
                    idempotent.span(),
                    format!(
                        "is true with acks = \"{}\": the idempotent producer needs acks = \"all\"",
                        acks.as_str()
                    ),
                ));
            }
        }
        if let Some(linger) = &self.linger {
            if duration(linger)? > Duration::from_secs(900) {
                return Err(RawError::at(
                    linger.span(),
                    "must be at most 900s (librdkafka's limit)",
                ));
            }
        }
        Ok(KafkaSettings {
            partitions: positive(&self.partitions, d.partitions.into(), 10_000)? as i32,
            key: self.key.unwrap_or(d.key),
            acks,
            compression: self.compression.unwrap_or(d.compression),
            fetch_wait_max: optional_duration(&self.fetch_wait_max, d.fetch_wait_max)?,
            // The idempotent producer needs acks = all: on by default then.
            idempotent: self
                .idempotent
                .as_ref()
                .map_or(acks == Acks::All, |i| *i.get_ref()),
            linger: optional_duration(&self.linger, d.linger)?,
            batch_size: positive(&self.batch_size, d.batch_size.into(), 2_147_483_647)? as u32,
            batch_messages: positive(&self.batch_messages, d.batch_messages.into(), 1_000_000)?
                as u32,
        })
    }
}

/// `[cluster]`, or a single node.
fn cluster(written: Option<&ClusterFile>) -> Result<Cluster, RawError> {
    let Some(file) = written else {
        return Ok(Cluster::default());
    };
    let nodes = positive(&Some(file.nodes.clone()), 1, Cluster::MAX_NODES.into())?;
    if nodes == 2 {
        return Err(RawError::at(
            file.nodes.span(),
            "2 nodes have no majority once one is down (a Raft quorum, Kafka's min ISR of 2, \
             RabbitMQ's pause_minority): use 3",
        ));
    }
    Ok(Cluster { nodes: nodes as u8 })
}

/// Consumers in other languages take one broker address so far; a
/// cluster's clients need every node's.
fn check_languages_on_cluster(written: &[ConsumerFile], cluster: Cluster) -> Result<(), RawError> {
    if cluster.is_single() {
        return Ok(());
    }
    match written
        .iter()
        .filter_map(|c| c.language.as_ref())
        .find(|l| *l.get_ref() != Language::Rust)
    {
        Some(language) => Err(RawError::at(
            language.span(),
            "consumers in other languages do not run on a cluster yet ([cluster] nodes > 1); leave `language` out for brokerbench's own",
        )),
        None => Ok(()),
    }
}

/// The fault timeline: in order, within the load, not overlapping, each
/// aimed at a node the cluster has.
fn faults(written: &[FaultFile], load: Duration, cluster: Cluster) -> Result<Vec<Fault>, RawError> {
    let mut faults: Vec<Fault> = Vec::new();
    for f in written {
        let at = during_the_load(&f.at, load, "faults happen")?;
        let action = *f.action.get_ref();
        let length = match (&f.duration, action) {
            (Some(d), FaultAction::Restart | FaultAction::RollingRestart) => {
                return Err(RawError::at(
                    d.span(),
                    "a restart has no duration (it takes as long as it takes)",
                ))
            }
            (
                None,
                FaultAction::Pause
                | FaultAction::Delay
                | FaultAction::Blackhole
                | FaultAction::Partition,
            ) => {
                return Err(RawError::at(
                    f.action.span(),
                    format!("a {} needs a `duration`", action.as_str()),
                ))
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
            delay: fault_delay(f)?,
            node: fault_node(f, cluster)?,
        });
    }
    Ok(faults)
}

/// The most a delay fault may add each way.
const MAX_LATENCY: Duration = Duration::from_secs(10);

/// A delay fault's latency and jitter; none for other faults, which may
/// not have them.
fn fault_delay(f: &FaultFile) -> Result<Option<Delay>, RawError> {
    if *f.action.get_ref() != FaultAction::Delay {
        return match f.latency.as_ref().or(f.jitter.as_ref()) {
            Some(v) => Err(RawError::at(
                v.span(),
                format!(
                    "only a delay has a latency and jitter, not a {}",
                    f.action.get_ref().as_str()
                ),
            )),
            None => Ok(None),
        };
    }
    let Some(written) = &f.latency else {
        return Err(RawError::at(
            f.action.span(),
            "a delay needs a `latency` (added each way, e.g. \"20ms\")",
        ));
    };
    let latency = duration(written)?;
    if latency.is_zero() || latency > MAX_LATENCY {
        return Err(RawError::at(
            written.span(),
            format!("must be more than 0 and at most {MAX_LATENCY:?}"),
        ));
    }
    let jitter = optional_duration(&f.jitter, Duration::ZERO)?;
    if jitter > latency {
        let at = f.jitter.as_ref().map_or(written.span(), |j| j.span());
        return Err(RawError::at(at, "may not be more than the latency"));
    }
    Ok(Some(Delay { latency, jitter }))
}

/// The node a fault is aimed at: on a cluster, the one written (the leader
/// when none is); on a single node, none.
fn fault_node(f: &FaultFile, cluster: Cluster) -> Result<Option<NodeChoice>, RawError> {
    let rolling = *f.action.get_ref() == FaultAction::RollingRestart;
    let partition = *f.action.get_ref() == FaultAction::Partition;
    if (rolling || partition) && cluster.is_single() {
        return Err(RawError::at(
            f.action.span(),
            format!(
                "a {} needs a cluster: set `[cluster] nodes = 3`",
                if rolling {
                    "rolling restart"
                } else {
                    "partition"
                }
            ),
        ));
    }
    let network = f.action.get_ref().is_network();
    let Some(node) = &f.node else {
        return Ok((!cluster.is_single() && !rolling && !network).then_some(NodeChoice::Leader));
    };
    if network {
        return Err(RawError::at(
            node.span(),
            format!(
                "a {} is done to every client connection, whatever the node; it takes no `node`",
                f.action.get_ref().as_str()
            ),
        ));
    }
    if rolling {
        return Err(RawError::at(
            node.span(),
            "a rolling restart restarts every node in turn; it takes no `node`",
        ));
    }
    if cluster.is_single() {
        return Err(RawError::at(
            node.span(),
            "names a node, but the brokers run on a single node: set `[cluster] nodes = 3`",
        ));
    }
    let text = match node.get_ref() {
        toml::Value::String(text) => text.clone(),
        toml::Value::Integer(n) => n.to_string(),
        other => other.to_string(),
    };
    NodeChoice::parse(&text, cluster.nodes)
        .map(Some)
        .map_err(|e| RawError::at(node.span(), e))
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
