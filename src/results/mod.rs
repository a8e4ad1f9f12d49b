//! Results: the one model of a run, and the one reader and writer of
//! `results.json`.
//!
//! [`Results`] is the contract with users' scripts (`results.json`, described
//! by `schema/results.v1.json`). The run engine builds it (`run::account`);
//! the terminal table, the exporters, `compare` and the advisor only read it.
//! Results are written after every broker, so a later failure or a Ctrl-C
//! loses nothing already measured.

pub(crate) mod account;
pub(crate) mod figure;
pub(crate) mod find_max;
pub(crate) mod thresholds;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::driver::{ErrorKind, Settings};
use crate::kind::BrokerKind;
use crate::metrics::harness::HarnessUse;
use crate::metrics::{Latency, LatencyIntervals, LatencySummary};
use crate::scenario::thresholds::{Metric, Unit};
use crate::scenario::{FaultAction, Plan};

/// The schema identifier written at the top of every results file.
pub(crate) const SCHEMA: &str = "brokerbench.results/v1";

/// The most runs of one scenario started in one second that keep a
/// directory each.
const MAX_SAME_SECOND: usize = 1000;

/// A whole run: one scenario against one or more brokers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Results {
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
pub(crate) struct BrokerResult {
    /// `rabbitmq`, `jetstream` or `kafka`.
    pub broker: BrokerKind,
    /// What actually ran, with its version, e.g. `Apache Kafka 4.4.0`.
    pub implementation: String,
    /// The product that implementation stands in for, when it is not that
    /// product (a Kafka-protocol broker run as `Apache Kafka`); its figures
    /// describe the stand-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stand_in_for: Option<String>,
    /// The address it was measured at.
    pub endpoint: String,
    /// A cluster's nodes (node N is the Nth), by the names the broker
    /// reports leaders with; absent for a single node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Present when every client connection went through brokerbench's
    /// fault proxy (the scenario has network faults): where the broker
    /// itself listened, and what the proxy saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyResult>,
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
    pub find_max: Option<find_max::FindMaxResult>,
    /// The broker's run finished: not interrupted, and the broker came back
    /// after every fault.
    pub complete: bool,
}

/// The load as offered and achieved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LoadResult {
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
pub(crate) struct PublishResult {
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
    pub(crate) fn gone(&self) -> u64 {
        self.stored
            .map_or(0, |stored| self.confirmed.saturating_sub(stored))
    }
}

/// One consumer group's account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct GroupResult {
    /// Group name.
    pub group: String,
    /// The ledger's account (see `docs/architecture.md`, "Ledger").
    #[serde(flatten)]
    pub account: account::GroupAccount,
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
    /// Deliveries of this run's messages the group's typed decoder refused
    /// (docs/cross-language.md, schema evolution).
    #[serde(default)]
    pub decode_failed: u64,
    /// The language of the group's consumer (absent: brokerbench's own, Rust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// A group in another language: its agent's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentResult>,
}

/// What a consumer agent in another language cost, and how it ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct AgentResult {
    /// The client library it consumed with.
    #[serde(default)]
    pub client: String,
    /// Its CPU time, user and system, seconds, read just before it was stopped.
    pub cpu_s: Option<f64>,
    /// Its CPU time per delivery, microseconds.
    pub cpu_per_message_us: Option<f64>,
    /// Why it stopped before it was told to, with the tail of its stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// One fault and what it did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FaultResult {
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
    /// The node it was aimed at on a cluster, as written: `leader`,
    /// `follower`, `any` or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aimed_at: Option<crate::scenario::NodeChoice>,
    /// On a cluster: who led what the run uses just before the fault, as
    /// the broker reported it; null if it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leadership_before: Option<crate::driver::Leadership>,
    /// On a cluster: each node the fault hit, in order (a rolling restart
    /// hits every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeFault>,
    /// A network fault (delay, cut, black hole): what the fault proxy did,
    /// and what it showed in the figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkFault>,
}

/// What a network fault injected, and what it did to the clients.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct NetworkFault {
    /// Delay: added each way, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Delay: the most it varied either way, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    /// Client connections open through the proxy when it started.
    pub connections_open: u64,
    /// Connections the cut reset.
    pub connections_cut: u64,
    /// Connections reset as they arrived while the link was down.
    pub connections_refused: u64,
    /// Connections the clients made through the proxy from the fault until
    /// they were reconnected (or the next fault, or the end).
    pub connections_new: u64,
    /// From the fault to as many connections open through the proxy as
    /// before it (after a cut: the clients reconnected), seconds; null if
    /// not before the next fault or the end of the run.
    pub reconnected_after_s: Option<f64>,
    /// Publishes that timed out, from this fault until the next one (or
    /// the end): a black hole shows here.
    pub publish_timeouts: u64,
    /// Publish latency (corrected) p50 in the whole seconds before the
    /// fault and during it, milliseconds: a delay of X each way adds about
    /// 2X (a confirmation is one round trip).
    pub publish_p50_ms: Option<BeforeDuring>,
    /// Per group, end-to-end latency p50 before and during, milliseconds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub end_to_end_p50_ms: BTreeMap<String, BeforeDuring>,
}

/// A figure in the whole seconds before a fault and during it, as many of
/// each (up to the start of the steady phase).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct BeforeDuring {
    /// Before the fault.
    pub before: f64,
    /// During it.
    pub during: f64,
}

/// The fault proxy the clients went through.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ProxyResult {
    /// Where the broker itself listened (the endpoint is the proxy's).
    pub in_front_of: String,
    /// What the proxy saw over the whole run.
    #[serde(flatten)]
    pub counts: crate::env::proxy::ProxyCounts,
}

/// One node of a cluster that a fault hit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NodeFault {
    /// Which node, counting from 1.
    pub node: usize,
    /// Its name, as the broker reports leaders.
    pub name: String,
    /// Whether it was the leader the broker reported just before it was hit.
    pub was_leader: bool,
    /// When it was hit: seconds from the start of the load.
    pub hit_s: f64,
    /// From the hit to the node accepting clients again, seconds: its
    /// unavailability. Null if it never came back.
    pub ready_after_s: Option<f64>,
    /// The first leader other than this node the broker reported after the
    /// hit; null if none was.
    pub new_leader: Option<String>,
    /// From the hit to that report (Kafka: once every partition the node
    /// led had another leader), seconds.
    pub new_leader_after_s: Option<f64>,
    /// Kafka: the partitions the node led that had moved by then.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_partitions: Vec<i32>,
    /// From the hit to the broker reporting the node's copy caught up again
    /// (rejoined), seconds; null if it never did before the end of the run.
    pub rejoined_after_s: Option<f64>,
}

/// The account of the messages sent in one fault's window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FaultMessages {
    /// Publish outcomes.
    #[serde(flatten)]
    pub publish: account::PublishAccount,
    /// Per group: lost, duplicates, recovered.
    pub groups: BTreeMap<String, FaultGroup>,
}

/// One group's account of a fault window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FaultGroup {
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
pub(crate) struct Series {
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
pub(crate) struct IntervalSeries {
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
    pub(crate) fn of<'a>(
        intervals: impl IntoIterator<Item = &'a LatencyIntervals>,
        seconds: usize,
    ) -> Self {
        let mut s = IntervalSeries::default();
        LatencyIntervals::merge(intervals, seconds, |latency| s.push(latency));
        s
    }

    /// The median of seconds `range` together (from their histograms),
    /// microseconds; `None` when they hold no value.
    pub(crate) fn p50_over(&self, range: std::ops::Range<usize>) -> Option<u64> {
        let mut merged: Option<hdrhistogram::Histogram<u64>> = None;
        for encoded in self.hdr.get(range)?.iter().filter(|e| !e.is_empty()) {
            let h = crate::metrics::decode_histogram(encoded)?;
            match &mut merged {
                Some(m) => m.add(&h).ok()?,
                None => merged = Some(h),
            }
        }
        merged
            .filter(|m| !m.is_empty())
            .map(|m| m.value_at_quantile(0.5))
    }

    /// Adds the next second's histogram.
    pub(crate) fn push(&mut self, latency: &Latency) {
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
pub(crate) struct LatencyResults {
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
pub(crate) struct DrainResult {
    /// How long it took, seconds.
    pub seconds: f64,
    /// It ended by the drain timeout with confirmed messages not yet delivered.
    pub timed_out: bool,
    /// How long the final read took after the drain ran out, seconds.
    pub final_read_seconds: f64,
}

/// What a correctness check checks; serialized as the condition it states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum CheckKind {
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
pub(crate) struct Check {
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
    pub(crate) fn correctness(
        check: CheckKind,
        group: Option<String>,
        passed: bool,
        value: u64,
    ) -> Self {
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
    pub(crate) fn condition(&self, faults: &[FaultResult]) -> String {
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
    pub(crate) fn measured(&self) -> String {
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
pub(crate) struct ResultsError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

impl GroupResult {
    /// Confirmed messages gone: `lost`, plus `poison_lost` with failures.
    pub(crate) fn lost(&self) -> u64 {
        self.account.gone()
    }
}

impl BrokerResult {
    /// The slowest group's end-to-end latencies: each percentile the worst
    /// over the groups, the count over all of them.
    pub(crate) fn worst_end_to_end(&self) -> LatencySummary {
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
    pub(crate) fn lost(&self) -> u64 {
        self.groups.iter().map(GroupResult::lost).sum::<u64>() + self.publish.gone()
    }

    /// Duplicate deliveries, over every group.
    pub(crate) fn duplicates(&self) -> u64 {
        self.groups.iter().map(|g| g.account.duplicates).sum()
    }

    /// Whether every check held.
    pub(crate) fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// The whole seconds of a per-second `series` that fall within the
    /// steady (measured) phase.
    pub(crate) fn steady<'a, T>(&self, series: &'a [T]) -> &'a [T] {
        let start = self.series.steady_start_s.ceil() as usize;
        let end = (self.series.steady_start_s + self.load.steady_seconds).floor() as usize;
        let end = end.min(series.len());
        &series[start.min(end)..end]
    }

    /// The longest time any fault took until publishing was confirmed again;
    /// `None` without faults, infinite if publishing never recovered.
    pub(crate) fn worst_recovery_s(&self) -> Option<f64> {
        self.faults
            .iter()
            .map(|f| f.publish_recovered_after_s.unwrap_or(f64::INFINITY))
            .reduce(f64::max)
    }
}

impl Results {
    /// Results of a run that is about to start.
    pub(crate) fn new(plan: &Plan, environment: &str) -> Self {
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
    pub(crate) fn passed(&self) -> bool {
        self.complete && self.brokers.iter().all(BrokerResult::passed)
    }

    /// Creates this run's directory under `parent`, `<scenario>-<UTC
    /// second>`, and returns it. The directory is created exclusively: when
    /// another run of the scenario started in the same second has it
    /// already (a CI matrix, a quick loop), this one takes `-2`, `-3` and so
    /// on, so that neither run's results replace the other's.
    pub(crate) fn claim_directory(&self, parent: &Path) -> Result<PathBuf> {
        let stamp: String = self
            .started_at
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let base = format!("{}-{stamp}", self.scenario.name);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("could not create '{}'", parent.display()))?;
        for n in 1..=MAX_SAME_SECOND {
            let dir = match n {
                1 => parent.join(&base),
                n => parent.join(format!("{base}-{n}")),
            };
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("could not create '{}'", dir.display()))
                }
            }
        }
        anyhow::bail!(
            "'{}' and {} more directories named after it exist already",
            parent.join(&base).display(),
            MAX_SAME_SECOND - 1
        )
    }

    /// Reads a `results.json` written by `brokerbench run`; the error names
    /// the file and, for a file that is not one, the line and column.
    pub(crate) fn read(path: &Path) -> Result<Results, ResultsError> {
        let text = std::fs::read_to_string(path).map_err(|e| ResultsError {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// The results in `text`, read from `path`.
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Results, ResultsError> {
        let at = |e: serde_json::Error| ResultsError {
            file: path.to_path_buf(),
            message: e.to_string(),
        };
        let value: serde_json::Value = serde_json::from_str(text).map_err(at)?;
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
        serde_json::from_str(text).map_err(at)
    }

    /// Writes `results.json` into `dir`, this run's own (see
    /// [`Results::claim_directory`]), atomically: written to a file beside
    /// it, then renamed over it, so that a reader, or a brokerbench killed
    /// while writing, never leaves half a file.
    pub(crate) fn write(&self, dir: &Path) -> Result<PathBuf> {
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
