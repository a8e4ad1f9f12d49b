//! Results: one serializable type, many views.
//!
//! [`Results`] is the contract with users' scripts (`results.json`, described
//! by `schema/results.v1.json`); the terminal table and other exporters only
//! read it. Results are written after every broker, so a later failure or a
//! Ctrl-C loses nothing already measured.

pub mod compare;
pub mod export;
pub(crate) mod figure;
pub mod table;
pub(crate) mod thresholds;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::driver::{ErrorKind, Settings};
use crate::kind::BrokerKind;
use crate::metrics::harness::HarnessUse;
use crate::metrics::{Latency, LatencyIntervals, LatencySummary, Timeline};
use crate::run::{ledger, Measurement};
use crate::scenario::thresholds::{Metric, Unit};
use crate::scenario::{FaultAction, Plan};

/// The schema identifier written at the top of every results file.
pub const SCHEMA: &str = "brokerbench.results/v1";

/// A whole run: one scenario against one or more brokers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// brokerbench version that produced the file.
    pub tool_version: String,
    /// When the run started, RFC 3339 UTC.
    pub started_at: String,
    /// Where the brokers ran: `local` (child processes).
    pub environment: String,
    /// The scenario as resolved (defaults and command-line overrides applied).
    pub scenario: Plan,
    /// One entry per broker measured, in run order.
    pub brokers: Vec<BrokerResult>,
    /// Every broker of the scenario ran to the end.
    pub complete: bool,
    /// Why the run is incomplete, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete_reason: Option<String>,
}

/// One broker's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BrokerResult {
    /// `rabbitmq`, `jetstream` or `kafka`.
    pub broker: BrokerKind,
    /// What actually ran, with its version, e.g. `tansu 0.6.0 (Kafka protocol)`.
    pub implementation: String,
    /// The product that implementation stands in for, when it is not that
    /// product (local tansu: `Apache Kafka`); its figures describe the stand-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stand_in_for: Option<String>,
    /// The address it was measured at.
    pub endpoint: String,
    /// Durability and delivery settings in force.
    pub settings: Settings,
    /// Load: open loop (paced) or closed loop (rate 0, as fast as confirmations allow).
    pub load: LoadResult,
    /// Publish outcomes over all producers.
    pub publish: PublishResult,
    /// One entry per consumer group.
    pub groups: Vec<GroupResult>,
    /// Latency histograms, microseconds.
    pub latency_us: LatencyResults,
    /// Faults applied, in order, with recovery times and the messages of each.
    pub faults: Vec<FaultResult>,
    /// Per-second counts from the start of the load, to chart a run.
    pub series: Series,
    /// Failures by kind, over publishes, deliveries and acks.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Per kind of publish failure, the first thing the broker or its client
    /// said, e.g. `refused`: "stream not found".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub first_errors: BTreeMap<ErrorKind, String>,
    /// The drain after the load.
    pub drain: DrainResult,
    /// Correctness checks and whether they held.
    pub checks: Vec<Check>,
    /// brokerbench's own use of the machine over the steady window, and
    /// whether it may have been the limit (absent from files written before
    /// brokerbench measured itself, and when the run never reached the
    /// steady window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<HarnessUse>,
    /// `run --find-max`: every step of the search and the rate found. The
    /// rest of this result is the step at the rate found (or, if none
    /// held, the last step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find_max: Option<crate::run::find_max::FindMaxResult>,
    /// The broker's run finished: not interrupted, and the broker came back
    /// after every fault.
    pub complete: bool,
}

/// The load as offered and achieved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadResult {
    /// Paced by intended send times (true) or closed loop (false, rate 0).
    pub open_loop: bool,
    /// Target rate, messages/s (0: as fast as possible).
    pub target_rate_per_s: f64,
    /// Payload bytes per message.
    pub message_bytes: usize,
    /// Measured (steady) time, seconds.
    pub steady_seconds: f64,
    /// When the load started (warmup included), RFC 3339 UTC with
    /// milliseconds: second 0 of `series`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

/// Publish outcomes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishResult {
    /// Publishes attempted (warmup included).
    pub attempted: u64,
    /// Confirmed by the broker.
    pub confirmed: u64,
    /// Refused by the broker or not sent.
    pub failed: u64,
    /// No answer by the end of the drain.
    pub unknown: u64,
    /// Sends of a message again after no or a negative confirmation (retry mode).
    pub resent: u64,
    /// Messages that fell due during the load but were not sent by its end
    /// (the producers could not keep up): offered, never attempted.
    pub unsent: u64,
    /// Sends per second during the steady phase (by actual send time).
    pub rate_per_s: f64,
    /// Confirmations per second that arrived during the steady phase.
    pub confirmed_per_s: f64,
    /// Publish only: the messages the broker held at the end, asked once the
    /// producers were done (absent with consumer groups, or when the broker
    /// could not be asked). Fewer than `confirmed` means confirmed messages
    /// are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<u64>,
}

impl PublishResult {
    /// Publish only: confirmed messages the broker no longer holds (at
    /// least); 0 when it was not asked.
    pub fn gone(&self) -> u64 {
        self.stored
            .map_or(0, |stored| self.confirmed.saturating_sub(stored))
    }
}

/// One consumer group's account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupResult {
    /// Group name.
    pub group: String,
    /// The ledger's account (see `docs/architecture.md`, "Ledger").
    #[serde(flatten)]
    pub account: ledger::GroupAccount,
    /// Confirmed, delivered only in the final read.
    pub late: u64,
    /// Confirmed, not delivered, still held by the broker at the end (as it
    /// reports its depth); `None` if the broker could not be asked.
    pub backlog: Option<u64>,
    /// Confirmed and not delivered, when the broker could not be asked
    /// whether it still holds them: neither lost nor backlog, unknown. With
    /// failures, also poison messages not dead-lettered by the end where the
    /// broker cannot report dead letters on their way (RabbitMQ quorum
    /// queues, at least once).
    pub unverified: u64,
    /// First deliveries per second that arrived during the steady phase.
    pub rate_per_s: f64,
}

/// One fault and what it did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultResult {
    /// What was done to the broker.
    pub action: FaultAction,
    /// When, as planned: seconds from the start of the steady phase.
    pub at_s: f64,
    /// Planned down (kill) or frozen (pause) time, seconds.
    pub duration_s: f64,
    /// When it was applied: seconds from the start of the load (the series' clock).
    pub started_s: f64,
    /// From the fault to the broker accepting clients again (kill, restart)
    /// or running again (pause), seconds; null if it never came back.
    pub broker_ready_after_s: Option<f64>,
    /// From the fault to the first publish confirmation after the broker was
    /// ready again, seconds; null if none came.
    pub publish_recovered_after_s: Option<f64>,
    /// Per group, from the fault to the first new delivery after the broker
    /// was ready again, seconds; null if none came.
    pub delivery_recovered_after_s: BTreeMap<String, Option<f64>>,
    /// Why the broker did not come back, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether publishing and every group worked again after the fault:
    /// false if the broker never came back, or came back at least
    /// `recovery.backoff_max` before the end of the load and then never
    /// confirmed a publish or delivered to a group again; null if it came
    /// back later than that, with too little load left to show it.
    pub recovered: Option<bool>,
    /// The messages first sent from this fault until the next one (or the
    /// end); the first fault also owns the messages sent before it.
    pub messages: FaultMessages,
}

/// The account of the messages sent in one fault's window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultMessages {
    /// Publish outcomes.
    #[serde(flatten)]
    pub publish: ledger::PublishAccount,
    /// Per group: lost, duplicates, recovered.
    pub groups: BTreeMap<String, FaultGroup>,
}

/// One group's account of a fault window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultGroup {
    /// Confirmed, never delivered (with failures: neither processed nor
    /// dead-lettered, poison messages included).
    pub lost: u64,
    /// Deliveries beyond the first.
    pub duplicates: u64,
    /// Not confirmed, yet delivered.
    pub recovered: u64,
}

/// Per-second counts from the start of the load (warmup included).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Series {
    /// Seconds per entry.
    pub interval_s: u32,
    /// Where the steady phase starts, seconds from the start of the load.
    pub steady_start_s: f64,
    /// Publish confirmations per second.
    pub confirmed: Vec<u64>,
    /// Publish, receive and ack errors per second.
    pub errors: Vec<u64>,
    /// First deliveries per second, per group.
    pub delivered: BTreeMap<String, Vec<u64>>,
    /// Publish latency (corrected) second by second, by confirmation time.
    #[serde(default)]
    pub publish_latency_us: IntervalSeries,
    /// Per group, end-to-end latency (corrected) second by second, by
    /// delivery time.
    #[serde(default)]
    pub end_to_end_latency_us: BTreeMap<String, IntervalSeries>,
    /// Per group with failures, attempts that failed on purpose per second.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<String, Vec<u64>>,
    /// Per group with failures, messages first read from the dead-letter
    /// destination per second.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dead_lettered: BTreeMap<String, Vec<u64>>,
}

/// A latency second by second, µs: the steady phase's messages, each in the
/// second it completed in (as HdrHistogram interval logs keep them).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IntervalSeries {
    /// Values recorded.
    pub count: Vec<u64>,
    /// Median (0 where none).
    pub p50: Vec<u64>,
    /// 99th percentile.
    pub p99: Vec<u64>,
    /// Maximum.
    pub max: Vec<u64>,
    /// Each second's histogram in HdrHistogram's compressed V2 form, base64,
    /// as interval logs hold it ("" where empty).
    pub hdr: Vec<String>,
}

impl IntervalSeries {
    /// The series of every task's `intervals`, over `seconds` seconds.
    fn of<'a>(intervals: impl IntoIterator<Item = &'a LatencyIntervals>, seconds: usize) -> Self {
        let mut s = IntervalSeries::default();
        LatencyIntervals::merge(intervals, seconds, |latency| s.push(latency));
        s
    }

    /// Adds the next second's histogram.
    pub fn push(&mut self, latency: &Latency) {
        let summary = latency.percentiles();
        self.count.push(summary.count);
        self.p50.push(summary.p50);
        self.p99.push(summary.p99);
        self.max.push(summary.max);
        self.hdr.push(latency.compressed());
    }
}

/// Latency summaries, microseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyResults {
    /// Intended send time to confirmation: corrected for coordinated omission.
    pub publish: LatencySummary,
    /// Actual send time to confirmation: service time, uncorrected.
    pub publish_service: LatencySummary,
    /// Per group, intended send time to delivery: corrected.
    pub end_to_end: BTreeMap<String, LatencySummary>,
    /// Per group, actual send time to delivery: uncorrected.
    pub end_to_end_service: BTreeMap<String, LatencySummary>,
    /// Per group with failures, intended send time to the dead-letter
    /// reader's first read of a message.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub time_to_dead_letter: BTreeMap<String, LatencySummary>,
}

/// The drain after the load.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrainResult {
    /// How long it took, seconds.
    pub seconds: f64,
    /// It ended by the drain timeout with confirmed messages not yet delivered.
    pub timed_out: bool,
    /// How long the final read took after the drain ran out, seconds.
    pub final_read_seconds: f64,
}

/// What a correctness check checks; serialized as the condition it states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    /// No confirmed message of this group was lost.
    #[serde(rename = "lost == 0")]
    NoneLost,
    /// No message this group received was one nobody sent.
    #[serde(rename = "unexpected == 0")]
    NoneUnexpected,
    /// The group had every confirmed message by the end of the final read:
    /// the broker held nothing more for it (its consumers kept up).
    #[serde(rename = "drained")]
    Drained,
    /// The broker's run finished: not interrupted, and the broker came back
    /// after every fault.
    #[serde(rename = "complete")]
    Complete,
    /// After every fault, publishing and every group worked again (the
    /// value counts the faults after which they did not).
    #[serde(rename = "recovered")]
    Recovered,
    /// A limit from the scenario's `[thresholds]` or `--threshold`.
    #[serde(rename = "threshold")]
    Threshold,
    /// Every poison message of this group was dead-lettered or is still
    /// held by the broker: none silently gone.
    #[serde(rename = "poison_lost == 0")]
    NoPoisonLost,
    /// No message this group could process ended in its dead-letter destination.
    #[serde(rename = "dead_lettered_wrongly == 0")]
    NoneDeadLetteredWrongly,
}

/// One check: a correctness condition, or a threshold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    /// What is checked.
    pub check: CheckKind,
    /// For a threshold: the metric it limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// The consumer group, for per-group checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// For a per-fault threshold: the fault's index in `faults`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<usize>,
    /// Whether it held.
    pub passed: bool,
    /// The measured value, in `unit` for a threshold; null when there was
    /// nothing to measure (which fails a threshold).
    #[serde(with = "figure")]
    pub value: Option<f64>,
    /// For a threshold: its limit, in `unit`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "figure")]
    pub limit: Option<f64>,
    /// For a threshold: the unit of `value` and `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
}

impl Check {
    /// A correctness check: passes when `value` is 0, or as `passed` says.
    fn correctness(check: CheckKind, group: Option<String>, passed: bool, value: u64) -> Self {
        Check {
            check,
            metric: None,
            group,
            fault: None,
            passed,
            value: Some(value as f64),
            limit: None,
            unit: None,
        }
    }

    /// What it checks and where, in words: `lost == 0 (billing)`,
    /// `end_to_end_p99 <= 50ms (billing)`, `recovery <= 10s (fault 1: kill at 5s)`.
    pub fn condition(&self, faults: &[FaultResult]) -> String {
        let what = match (self.metric, self.limit, self.unit) {
            (Some(metric), Some(limit), Some(unit)) => format!(
                "{metric} {} {}",
                if metric.is_minimum() { ">=" } else { "<=" },
                figure::show(limit, unit)
            ),
            _ => serde_json::to_value(self.check)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        };
        let mut place = Vec::new();
        if let Some(group) = &self.group {
            place.push(group.clone());
        }
        if let Some(i) = self.fault {
            let fault = faults.get(i).map_or(String::new(), |f| {
                format!(": {} at {}s", f.action.as_str(), f.at_s)
            });
            place.push(format!("fault {}{fault}", i + 1));
        }
        if place.is_empty() {
            what
        } else {
            format!("{what} ({})", place.join(", "))
        }
    }

    /// The measured value in words, in the check's unit.
    pub fn measured(&self) -> String {
        match (self.value, self.unit) {
            (None, _) => "not measured".into(),
            (Some(v), Some(unit)) => figure::show(v, unit),
            (Some(v), None) => format!("{v}"),
        }
    }
}

/// A results file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct ResultsError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// What ran where, as the environment placed it.
#[derive(Clone)]
pub struct Placement {
    /// Implementation and version.
    pub implementation: String,
    /// What it stands in for, if it is a stand-in.
    pub stand_in_for: Option<String>,
    /// Where it was reached, password hidden.
    pub endpoint: String,
}

impl GroupResult {
    /// Confirmed messages gone: `lost`, plus `poison_lost` with failures.
    pub fn lost(&self) -> u64 {
        self.account.gone()
    }
}

impl BrokerResult {
    /// Turns a measurement into results.
    pub fn new(plan: &Plan, broker: BrokerKind, placed: Placement, m: Measurement) -> Self {
        let logs = Arc::clone(&m.publish_logs);
        let account = ledger::publish_account(&logs);
        let steady = m.steady_elapsed.as_secs_f64();
        let per_s = |n: u64| {
            if steady > 0.0 {
                round1(n as f64 / steady)
            } else {
                0.0
            }
        };

        let mut publish = Latency::default();
        let mut publish_service = Latency::default();
        let mut errors: BTreeMap<ErrorKind, u64> = BTreeMap::new();
        let mut add_errors = |counts: &BTreeMap<ErrorKind, u64>| {
            for (kind, n) in counts {
                *errors.entry(*kind).or_default() += n;
            }
        };
        let (mut confirmed_at, mut errors_at) = (Timeline::default(), Timeline::default());
        let (mut steady_sent, mut steady_confirmed, mut resent, mut unsent) = (0, 0, 0, 0);
        let mut first_errors = BTreeMap::new();
        for p in &m.producers {
            publish.merge(&p.publish);
            publish_service.merge(&p.publish_service);
            confirmed_at.merge(&p.confirmed_at);
            errors_at.merge(&p.errors_at);
            steady_sent += p.steady_sent;
            steady_confirmed += p.steady_confirmed;
            resent += p.resent;
            unsent += p.unsent;
            for (kind, why) in &p.first_errors {
                first_errors.entry(*kind).or_insert_with(|| why.clone());
            }
            add_errors(&p.errors);
        }
        let mut groups = Vec::new();
        let mut end_to_end = BTreeMap::new();
        let mut end_to_end_service = BTreeMap::new();
        let mut time_to_dead_letter = BTreeMap::new();
        let mut checks = Vec::new();
        for (outcome, group) in m.groups.iter().zip(&plan.consumers) {
            let mut account = ledger::group_account(&logs, &outcome.log);
            // Confirmed and undelivered (with failures: neither processed nor
            // dead-lettered): still in the broker is backlog, not loss; if the
            // broker could not be asked, nobody knows: unverified.
            let undelivered = account.gone();
            let backlog = outcome.backlog.map(|held| held.min(undelivered));
            let mut unverified = if backlog.is_some() { 0 } else { undelivered };
            let mut not_lost = backlog.unwrap_or(undelivered);
            // The broker says how many it holds, not which: the poison
            // messages, the ones it is still retrying, are counted as held first.
            let mut checked = Vec::new();
            if let Some(f) = account.failures.as_mut() {
                let held = not_lost.min(f.poison_lost);
                f.poison_lost -= held;
                not_lost -= held;
                account.lost -= not_lost;
                // Any message of the group, poison or not, may be a dead
                // letter the broker still holds where it cannot be asked:
                // unverified, not lost.
                if !m.dead_letters_in_flight_seen {
                    unverified += f.poison_lost + account.lost;
                    (f.poison_lost, account.lost) = (0, 0);
                }
                checked.push((CheckKind::NoPoisonLost, f.poison_lost));
                checked.push((CheckKind::NoneDeadLetteredWrongly, f.dead_lettered_wrongly));
            } else {
                account.lost -= not_lost;
            }
            add_errors(&outcome.errors);
            errors_at.merge(&outcome.errors_at);
            for (check, value) in [
                (CheckKind::NoneLost, account.lost),
                (CheckKind::NoneUnexpected, account.unexpected),
                (CheckKind::Drained, backlog.unwrap_or(0) + unverified),
            ]
            .into_iter()
            .chain(checked)
            {
                checks.push(Check::correctness(
                    check,
                    Some(group.group.clone()),
                    value == 0,
                    value,
                ));
            }
            end_to_end.insert(group.group.clone(), outcome.end_to_end.summary());
            end_to_end_service.insert(group.group.clone(), outcome.end_to_end_service.summary());
            if group.failures.is_some() {
                time_to_dead_letter
                    .insert(group.group.clone(), outcome.time_to_dead_letter.summary());
            }
            groups.push(GroupResult {
                group: group.group.clone(),
                account,
                late: outcome.late,
                backlog,
                unverified,
                rate_per_s: per_s(outcome.steady_delivered),
            });
        }
        // Publish only: what the broker no longer holds is lost.
        let published = PublishResult {
            attempted: account.attempted,
            confirmed: account.confirmed,
            failed: account.failed,
            unknown: account.unknown,
            resent,
            unsent,
            rate_per_s: per_s(steady_sent),
            confirmed_per_s: per_s(steady_confirmed),
            stored: m.stored,
        };
        if published.stored.is_some() {
            let gone = published.gone();
            checks.push(Check::correctness(
                CheckKind::NoneLost,
                None,
                gone == 0,
                gone,
            ));
        }
        // Per group, the undelivered that are not lost: held by the broker,
        // or unverified when it could not be asked.
        let held: Vec<u64> = groups
            .iter()
            .map(|g| g.backlog.unwrap_or(0) + g.unverified)
            .collect();
        let faults = fault_results(plan, &m, &logs, &confirmed_at, &held);
        let never_back = faults.iter().any(|f| f.broker_ready_after_s.is_none());
        let complete = !m.cancelled && !never_back;
        let unrecovered = faults.iter().filter(|f| f.recovered == Some(false)).count();
        checks.push(Check::correctness(
            CheckKind::Recovered,
            None,
            unrecovered == 0,
            unrecovered as u64,
        ));
        checks.push(Check::correctness(
            CheckKind::Complete,
            None,
            complete,
            u64::from(complete),
        ));

        let seconds = m
            .groups
            .iter()
            .flat_map(|g| [&g.delivered_at, &g.failed_at, &g.dead_lettered_at])
            .map(Timeline::seconds)
            .chain([confirmed_at.seconds(), errors_at.seconds()]);
        let seconds = seconds.max().unwrap_or(0);
        let failing = m
            .groups
            .iter()
            .zip(&plan.consumers)
            .filter(|(_, c)| c.failures.is_some());
        let series = Series {
            interval_s: 1,
            steady_start_s: round1(
                m.steady_start
                    .saturating_duration_since(m.load_start)
                    .as_secs_f64(),
            ),
            confirmed: confirmed_at.per_second(seconds),
            errors: errors_at.per_second(seconds),
            delivered: m
                .groups
                .iter()
                .zip(&plan.consumers)
                .map(|(g, c)| (c.group.clone(), g.delivered_at.per_second(seconds)))
                .collect(),
            publish_latency_us: IntervalSeries::of(
                m.producers.iter().map(|p| &p.publish_intervals),
                seconds,
            ),
            end_to_end_latency_us: m
                .groups
                .iter()
                .zip(&plan.consumers)
                .map(|(g, c)| {
                    let series = IntervalSeries::of([&g.end_to_end_intervals], seconds);
                    (c.group.clone(), series)
                })
                .collect(),
            failed: failing
                .clone()
                .map(|(g, c)| (c.group.clone(), g.failed_at.per_second(seconds)))
                .collect(),
            dead_lettered: failing
                .map(|(g, c)| (c.group.clone(), g.dead_lettered_at.per_second(seconds)))
                .collect(),
        };
        let mut result = BrokerResult {
            broker,
            implementation: placed.implementation,
            stand_in_for: placed.stand_in_for,
            endpoint: placed.endpoint,
            settings: m.settings,
            load: LoadResult {
                open_loop: plan.load.open_loop(),
                target_rate_per_s: plan.load.rate,
                message_bytes: m.message_bytes,
                steady_seconds: round1(steady),
                started_at: Some(
                    humantime::format_rfc3339_millis(
                        std::time::SystemTime::now() - m.load_start.elapsed(),
                    )
                    .to_string(),
                ),
            },
            publish: published,
            groups,
            latency_us: LatencyResults {
                publish: publish.summary(),
                publish_service: publish_service.summary(),
                end_to_end,
                end_to_end_service,
                time_to_dead_letter,
            },
            faults,
            series,
            errors,
            first_errors,
            drain: DrainResult {
                seconds: round1(m.drain_elapsed.as_secs_f64()),
                timed_out: m.drain_timed_out,
                final_read_seconds: round1(m.final_read_elapsed.as_secs_f64()),
            },
            checks,
            harness: m.harness.as_ref().map(|(start, end)| {
                let delivered: u64 = m.groups.iter().map(|g| g.steady_delivered).sum();
                HarnessUse::between(start, end, steady_confirmed + delivered)
            }),
            find_max: None,
            complete,
        };
        let limits = plan.thresholds.for_broker(broker);
        let threshold_checks = thresholds::checks(&limits, &result);
        result.checks.extend(threshold_checks);
        result
    }

    /// The slowest group's end-to-end latencies: each percentile the worst
    /// over the groups, the count over all of them.
    pub fn worst_end_to_end(&self) -> LatencySummary {
        let mut worst = LatencySummary::default();
        for s in self.latency_us.end_to_end.values() {
            worst.count += s.count;
            worst.p50 = worst.p50.max(s.p50);
            worst.p99 = worst.p99.max(s.p99);
            worst.p999 = worst.p999.max(s.p999);
            worst.max = worst.max.max(s.max);
        }
        worst
    }

    /// Confirmed messages lost, over every group (publish only: those the
    /// broker no longer holds).
    pub fn lost(&self) -> u64 {
        self.groups.iter().map(GroupResult::lost).sum::<u64>() + self.publish.gone()
    }

    /// Duplicate deliveries, over every group.
    pub fn duplicates(&self) -> u64 {
        self.groups.iter().map(|g| g.account.duplicates).sum()
    }

    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The whole seconds of a per-second `series` that fall within the
    /// steady (measured) phase.
    pub fn steady<'a, T>(&self, series: &'a [T]) -> &'a [T] {
        let start = self.series.steady_start_s.ceil() as usize;
        let end = (self.series.steady_start_s + self.load.steady_seconds).floor() as usize;
        let end = end.min(series.len());
        &series[start.min(end)..end]
    }

    /// The longest time any fault took until publishing was confirmed again;
    /// `None` without faults, infinite if publishing never recovered.
    pub fn worst_recovery_s(&self) -> Option<f64> {
        self.faults
            .iter()
            .map(|f| f.publish_recovered_after_s.unwrap_or(f64::INFINITY))
            .reduce(f64::max)
    }
}

/// Each fault with its recovery times and the account of its messages: those
/// first sent from it until the next fault (or the end); the first fault also
/// owns the messages before it, whose acknowledgements a crash can lose.
fn fault_results(
    plan: &Plan,
    m: &Measurement,
    logs: &[ledger::ProducerLog],
    confirmed_at: &Timeline,
    held: &[u64],
) -> Vec<FaultResult> {
    // What the broker still holds for a group is its newest messages (queues
    // and logs are first in, first out): it leaves the last windows' lost first.
    let mut still_held = held.to_vec();
    let secs = |d: std::time::Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    let load_end = m.steady_start + plan.load.duration;
    let ends: Vec<Vec<u64>> = m
        .faults
        .iter()
        .skip(1)
        .map(|f| f.window_start.clone())
        .chain([logs.iter().map(ledger::ProducerLog::attempted).collect()])
        .collect();
    let mut results: Vec<FaultResult> = m
        .faults
        .iter()
        .zip(ends)
        .map(|(event, end)| {
            let started = event.started.saturating_duration_since(m.load_start);
            let from = if std::ptr::eq(event, &m.faults[0]) {
                vec![0; end.len()]
            } else {
                event.window_start.clone()
            };
            let window: Vec<(u64, u64)> = from.into_iter().zip(end).collect();
            // Recovery counts from the fault; the first sign is looked for once the broker is back.
            let back = event
                .ready
                .map(|r| r.saturating_duration_since(m.load_start));
            // (A 10 ms bucket can start before the moment the broker was back.)
            let recovered = |timeline: &Timeline| {
                let first = back.and_then(|b| Some(timeline.first_at_or_after(b)?.max(b)));
                first.map(|t| secs(t.saturating_sub(started)))
            };
            let groups = m
                .groups
                .iter()
                .zip(&plan.consumers)
                .map(|(g, c)| {
                    let a = ledger::group_account_in(logs, &g.log, &window);
                    (
                        c.group.clone(),
                        FaultGroup {
                            lost: a.gone(),
                            duplicates: a.duplicates,
                            recovered: a.recovered,
                        },
                    )
                })
                .collect();
            let publish_recovered_after_s = recovered(confirmed_at);
            let delivery_recovered_after_s: BTreeMap<String, Option<f64>> = m
                .groups
                .iter()
                .zip(&plan.consumers)
                .map(|(g, c)| (c.group.clone(), recovered(&g.delivered_at)))
                .collect();
            // Judged only when the broker was back long enough before the end
            // of the load for every client to have tried again (its longest
            // backoff): after that, there may be nothing new to publish.
            let back_in_load = event
                .ready
                .is_some_and(|r| r + plan.recovery.backoff_max <= load_end);
            let worked_again = publish_recovered_after_s.is_some()
                && delivery_recovered_after_s.values().all(Option::is_some);
            FaultResult {
                action: event.fault.action,
                recovered: match event.ready {
                    None => Some(false),
                    Some(_) if back_in_load => Some(worked_again),
                    Some(_) => None,
                },
                at_s: secs(event.fault.at),
                duration_s: secs(event.fault.duration),
                started_s: secs(started),
                broker_ready_after_s: event
                    .ready
                    .map(|r| secs(r.saturating_duration_since(event.started))),
                publish_recovered_after_s,
                delivery_recovered_after_s,
                error: event.error.clone(),
                messages: FaultMessages {
                    publish: ledger::publish_account_in(logs, &window),
                    groups,
                },
            }
        })
        .collect();
    for fault in results.iter_mut().rev() {
        for (group, held) in plan.consumers.iter().zip(still_held.iter_mut()) {
            if let Some(g) = fault.messages.groups.get_mut(&group.group) {
                let taken = (*held).min(g.lost);
                g.lost -= taken;
                *held -= taken;
            }
        }
    }
    results
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Results {
    /// Results of a run that is about to start.
    pub fn new(plan: &Plan, environment: &str) -> Self {
        Results {
            schema: SCHEMA.to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            environment: environment.to_string(),
            scenario: plan.clone(),
            brokers: Vec::new(),
            complete: false,
            incomplete_reason: Some("the run has not finished".into()),
        }
    }

    /// Whether every check of every broker held and the run completed.
    pub fn passed(&self) -> bool {
        self.complete && self.brokers.iter().all(BrokerResult::passed)
    }

    /// The directory `results/<scenario>-<UTC timestamp>` under `parent`.
    pub fn directory(&self, parent: &Path) -> PathBuf {
        let stamp: String = self
            .started_at
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        parent.join(format!("{}-{stamp}", self.scenario.name))
    }

    /// Reads a `results.json` written by `brokerbench run`; the error names
    /// the file and, for a file that is not one, the line and column.
    pub fn read(path: &Path) -> Result<Results, ResultsError> {
        let text = std::fs::read_to_string(path).map_err(|e| ResultsError {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let at = |e: serde_json::Error| ResultsError {
            file: path.to_path_buf(),
            message: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(at)?;
        let schema = value.get("schema").and_then(|s| s.as_str());
        if schema != Some(SCHEMA) {
            return Err(ResultsError {
                file: path.to_path_buf(),
                message: format!(
                    "is not a brokerbench results file: its schema is {}, expected {SCHEMA}",
                    schema.map_or("missing".into(), |s| format!("'{s}'"))
                ),
            });
        }
        serde_json::from_str(&text).map_err(at)
    }

    /// Writes `results.json` into `dir` (atomically: a reader never sees half a file).
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create '{}'", dir.display()))?;
        let path = dir.join("results.json");
        let tmp = dir.join(".results.json.tmp");
        let json = serde_json::to_vec_pretty(self).context("serializing results")?;
        std::fs::write(&tmp, json)
            .with_context(|| format!("could not write '{}'", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("could not write '{}'", path.display()))?;
        Ok(path)
    }
}
