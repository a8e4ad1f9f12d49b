//! Taking the account: a [`Measurement`] becomes a [`BrokerResult`].
//!
//! The engine measures; this module turns what it measured into the one
//! result type that `results.json`, the table and every exporter read. It is
//! split by what it accounts for: the producers' publishes, each consumer
//! group (with the broker's backlog, so that what it still holds is never
//! called lost), each fault's window, and the per-second series.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::faults::{FaultEvent, NetworkEvent};
use super::ledger::{self, ProducerLog};
use super::{GroupOutcome, Measurement};
use crate::driver::ErrorKind;
use crate::kind::BrokerKind;
use crate::metrics::harness::HarnessUse;
use crate::metrics::{Latency, Timeline};
use crate::results::account::GroupAccount;
use crate::results::{
    thresholds, AgentResult, BeforeDuring, BrokerResult, Check, CheckKind, DrainResult, FaultGroup,
    FaultMessages, FaultResult, GroupResult, IntervalSeries, LatencyResults, LoadResult,
    NetworkFault, NodeFault, ProxyResult, PublishResult, Series,
};
use crate::scenario::{Language, Plan};

/// What ran where, as the environment placed it.
#[derive(Clone)]
pub(crate) struct Placement {
    /// Implementation and version.
    pub implementation: String,
    /// What it stands in for, if it is a stand-in.
    pub stand_in_for: Option<String>,
    /// Where it was reached, password hidden.
    pub endpoint: String,
    /// A cluster's nodes, by the names the broker reports leaders with, in
    /// node order; empty for a single node.
    pub nodes: Vec<String>,
    /// Where the broker itself listened, when clients went through the
    /// fault proxy (password hidden).
    pub behind_proxy: Option<String>,
}

/// Turns a measurement into results.
pub(crate) fn broker_result(
    plan: &Plan,
    broker: BrokerKind,
    placed: Placement,
    m: Measurement,
) -> BrokerResult {
    let logs = Arc::clone(&m.publish_logs);
    let steady = m.steady_elapsed.as_secs_f64();
    let mut totals = ProducerTotals::of(&m);
    let mut checks = Vec::new();
    let groups = group_results(plan, &m, &logs, &mut totals, &mut checks);
    let publish = publish_result(&logs, &totals, m.stored, steady);
    if publish.stored.is_some() {
        let gone = publish.gone();
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
        .results
        .iter()
        .map(|g| g.backlog.unwrap_or(0) + g.unverified)
        .collect();
    let faults = fault_results(plan, &m, &logs, &totals.confirmed_at, &held);
    let complete = !m.cancelled && faults.iter().all(|f| f.broker_ready_after_s.is_some());
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
    let series = series(plan, &m, &totals.confirmed_at, &totals.errors_at);
    let mut faults = faults;
    observe_network_faults(&mut faults, &series);
    let mut result = BrokerResult {
        broker,
        implementation: placed.implementation,
        stand_in_for: placed.stand_in_for,
        endpoint: placed.endpoint,
        nodes: placed.nodes,
        proxy: placed.behind_proxy.map(|in_front_of| ProxyResult {
            in_front_of,
            counts: m.proxy.unwrap_or_default(),
        }),
        load: load_result(plan, &m, steady),
        publish,
        groups: groups.results,
        latency_us: LatencyResults {
            publish: totals.publish.summary(),
            publish_service: totals.publish_service.summary(),
            end_to_end: groups.end_to_end,
            end_to_end_service: groups.end_to_end_service,
            time_to_dead_letter: groups.time_to_dead_letter,
        },
        faults,
        series,
        errors: totals.errors,
        first_errors: totals.first_errors,
        drain: DrainResult {
            seconds: round1(m.drain_elapsed.as_secs_f64()),
            timed_out: m.drain_timed_out,
            final_read_seconds: round1(m.final_read_elapsed.as_secs_f64()),
        },
        checks,
        harness: m.harness.as_ref().map(|(start, end)| {
            let delivered: u64 = m.groups.iter().map(|g| g.steady_delivered).sum();
            HarnessUse::between(start, end, totals.steady_confirmed + delivered)
        }),
        find_max: None,
        complete,
        settings: m.settings,
    };
    let limits = plan.thresholds.for_broker(broker);
    let threshold_checks = thresholds::checks(&limits, &result);
    result.checks.extend(threshold_checks);
    result
}

/// The producers' figures added up; the groups add their errors to it.
struct ProducerTotals {
    publish: Latency,
    publish_service: Latency,
    errors: BTreeMap<ErrorKind, u64>,
    first_errors: BTreeMap<ErrorKind, String>,
    confirmed_at: Timeline,
    errors_at: Timeline,
    steady_sent: u64,
    steady_confirmed: u64,
    resent: u64,
    unsent: u64,
}

impl ProducerTotals {
    fn of(m: &Measurement) -> Self {
        let mut t = ProducerTotals {
            publish: Latency::default(),
            publish_service: Latency::default(),
            errors: BTreeMap::new(),
            first_errors: BTreeMap::new(),
            confirmed_at: Timeline::default(),
            errors_at: Timeline::default(),
            steady_sent: 0,
            steady_confirmed: 0,
            resent: 0,
            unsent: 0,
        };
        for p in &m.producers {
            t.publish.merge(&p.publish);
            t.publish_service.merge(&p.publish_service);
            t.confirmed_at.merge(&p.confirmed_at);
            t.errors_at.merge(&p.errors_at);
            t.steady_sent += p.steady_sent;
            t.steady_confirmed += p.steady_confirmed;
            t.resent += p.resent;
            t.unsent += p.unsent;
            for (kind, why) in &p.first_errors {
                t.first_errors.entry(*kind).or_insert_with(|| why.clone());
            }
            t.add_errors(&p.errors);
        }
        t
    }

    fn add_errors(&mut self, counts: &BTreeMap<ErrorKind, u64>) {
        for (kind, n) in counts {
            *self.errors.entry(*kind).or_default() += n;
        }
    }
}

/// Publish outcomes; publish only, what the broker no longer holds is lost.
fn publish_result(
    logs: &[ProducerLog],
    totals: &ProducerTotals,
    stored: Option<u64>,
    steady: f64,
) -> PublishResult {
    let account = ledger::publish_account(logs);
    PublishResult {
        attempted: account.attempted,
        confirmed: account.confirmed,
        failed: account.failed,
        unknown: account.unknown,
        resent: totals.resent,
        unsent: totals.unsent,
        rate_per_s: per_s(totals.steady_sent, steady),
        confirmed_per_s: per_s(totals.steady_confirmed, steady),
        stored,
    }
}

/// Every group's account and latencies.
struct Groups {
    results: Vec<GroupResult>,
    end_to_end: BTreeMap<String, crate::metrics::LatencySummary>,
    end_to_end_service: BTreeMap<String, crate::metrics::LatencySummary>,
    time_to_dead_letter: BTreeMap<String, crate::metrics::LatencySummary>,
}

/// Each group's account, its latencies and its correctness checks; its
/// errors go into `totals`.
fn group_results(
    plan: &Plan,
    m: &Measurement,
    logs: &[ProducerLog],
    totals: &mut ProducerTotals,
    checks: &mut Vec<Check>,
) -> Groups {
    let mut groups = Groups {
        results: Vec::new(),
        end_to_end: BTreeMap::new(),
        end_to_end_service: BTreeMap::new(),
        time_to_dead_letter: BTreeMap::new(),
    };
    let steady = m.steady_elapsed.as_secs_f64();
    for (outcome, group) in m.groups.iter().zip(&plan.consumers) {
        let name = &group.group;
        let (mut result, group_checks) = group_result(name, m, logs, outcome, steady);
        if group.language != Language::Rust {
            result.language = Some(group.language.as_str().to_string());
            result.agent = Some(agent_result(outcome));
        }
        for (check, value) in group_checks {
            checks.push(Check::correctness(
                check,
                Some(name.clone()),
                value == 0,
                value,
            ));
        }
        totals.add_errors(&outcome.errors);
        totals.errors_at.merge(&outcome.errors_at);
        groups
            .end_to_end
            .insert(name.clone(), outcome.end_to_end.summary());
        groups
            .end_to_end_service
            .insert(name.clone(), outcome.end_to_end_service.summary());
        if group.failures.is_some() {
            groups
                .time_to_dead_letter
                .insert(name.clone(), outcome.time_to_dead_letter.summary());
        }
        groups.results.push(result);
    }
    groups
}

/// One group's account, and the values of its correctness checks (each
/// passes at 0).
fn group_result(
    name: &str,
    m: &Measurement,
    logs: &[ProducerLog],
    outcome: &GroupOutcome,
    steady: f64,
) -> (GroupResult, Vec<(CheckKind, u64)>) {
    let mut account: GroupAccount = ledger::group_account(logs, &outcome.log);
    // Confirmed and undelivered (with failures: neither processed nor
    // dead-lettered): still in the broker is backlog, not loss; if the
    // broker could not be asked, nobody knows: unverified.
    let undelivered = account.gone();
    let backlog = outcome.backlog.map(|held| held.min(undelivered));
    let mut unverified = if backlog.is_some() { 0 } else { undelivered };
    let mut not_lost = backlog.unwrap_or(undelivered);
    // The broker says how many it holds, not which: the poison
    // messages, the ones it is still retrying, are counted as held first.
    // An agent that died may have acknowledged messages whose receipts it
    // had not written yet: what its group lacks beyond the broker's backlog
    // is unverified, not lost.
    let agent_died = outcome.agent.as_ref().is_some_and(|a| a.failure.is_some());
    let mut failure_checks = Vec::new();
    if let Some(f) = account.failures.as_mut() {
        let held = not_lost.min(f.poison_lost);
        f.poison_lost -= held;
        not_lost -= held;
        account.lost -= not_lost;
        // Any message of the group, poison or not, may be a dead
        // letter the broker still holds where it cannot be asked:
        // unverified, not lost. So may one an agent that died settled.
        if !m.dead_letters_in_flight_seen || agent_died {
            unverified += f.poison_lost + account.lost;
            (f.poison_lost, account.lost) = (0, 0);
        }
        failure_checks.push((CheckKind::NoPoisonLost, f.poison_lost));
        failure_checks.push((CheckKind::NoneDeadLetteredWrongly, f.dead_lettered_wrongly));
    } else {
        account.lost -= not_lost;
        if agent_died {
            unverified += account.lost;
            account.lost = 0;
        }
    }
    let checks = [
        (CheckKind::NoneLost, account.lost),
        (CheckKind::NoneUnexpected, account.unexpected),
        (CheckKind::Drained, backlog.unwrap_or(0) + unverified),
    ]
    .into_iter()
    .chain(failure_checks)
    .collect();
    let result = GroupResult {
        group: name.to_string(),
        account,
        late: outcome.late,
        backlog,
        unverified,
        rate_per_s: per_s(outcome.steady_delivered, steady),
        decode_failed: outcome.decode_failed,
        language: None,
        agent: None,
    };
    (result, checks)
}

/// A group agent's cost per delivery, and its failure if it had one.
fn agent_result(outcome: &GroupOutcome) -> AgentResult {
    let state = outcome.agent.clone().unwrap_or_default();
    let cpu = state.cpu.map(|c| c.as_secs_f64());
    let deliveries = outcome.log.deliveries();
    AgentResult {
        client: state.client,
        cpu_s: cpu.map(round3),
        cpu_per_message_us: cpu
            .filter(|_| deliveries > 0)
            .map(|c| round1(c * 1e6 / deliveries as f64)),
        failure: state.failure,
    }
}

/// The load as offered and achieved.
fn load_result(plan: &Plan, m: &Measurement, steady: f64) -> LoadResult {
    LoadResult {
        open_loop: plan.load.open_loop(),
        target_rate_per_s: plan.load.rate,
        message_bytes: m.message_bytes,
        steady_seconds: round1(steady),
        started_at: Some(
            humantime::format_rfc3339_millis(std::time::SystemTime::now() - m.load_start.elapsed())
                .to_string(),
        ),
    }
}

/// Per-second counts and latencies from the start of the load.
fn series(plan: &Plan, m: &Measurement, confirmed_at: &Timeline, errors_at: &Timeline) -> Series {
    let seconds = m
        .groups
        .iter()
        .flat_map(|g| [&g.delivered_at, &g.failed_at, &g.dead_lettered_at])
        .map(Timeline::seconds)
        .chain([confirmed_at.seconds(), errors_at.seconds()]);
    let seconds = seconds.max().unwrap_or(0);
    let groups = || m.groups.iter().zip(&plan.consumers);
    let failing = || groups().filter(|(_, c)| c.failures.is_some());
    Series {
        interval_s: 1,
        steady_start_s: round1(
            m.steady_start
                .saturating_duration_since(m.load_start)
                .as_secs_f64(),
        ),
        confirmed: confirmed_at.per_second(seconds),
        errors: errors_at.per_second(seconds),
        delivered: groups()
            .map(|(g, c)| (c.group.clone(), g.delivered_at.per_second(seconds)))
            .collect(),
        publish_latency_us: IntervalSeries::of(
            m.producers.iter().map(|p| &p.publish_intervals),
            seconds,
        ),
        end_to_end_latency_us: groups()
            .map(|(g, c)| {
                let series = IntervalSeries::of([&g.end_to_end_intervals], seconds);
                (c.group.clone(), series)
            })
            .collect(),
        failed: failing()
            .map(|(g, c)| (c.group.clone(), g.failed_at.per_second(seconds)))
            .collect(),
        dead_lettered: failing()
            .map(|(g, c)| (c.group.clone(), g.dead_lettered_at.per_second(seconds)))
            .collect(),
    }
}

/// Each fault with its recovery times and the account of its messages: those
/// first sent from it until the next fault (or the end); the first fault also
/// owns the messages before it, whose acknowledgements a crash can lose.
fn fault_results(
    plan: &Plan,
    m: &Measurement,
    logs: &[ProducerLog],
    confirmed_at: &Timeline,
    held: &[u64],
) -> Vec<FaultResult> {
    let ends: Vec<Vec<u64>> = m
        .faults
        .iter()
        .skip(1)
        .map(|f| f.window_start.clone())
        .chain([logs.iter().map(ProducerLog::attempted).collect()])
        .collect();
    let mut results: Vec<FaultResult> = m
        .faults
        .iter()
        .enumerate()
        .zip(ends)
        .map(|((i, event), end)| {
            let from = if i == 0 {
                vec![0; end.len()]
            } else {
                event.window_start.clone()
            };
            let window: Vec<(u64, u64)> = from.into_iter().zip(end).collect();
            let mut result = fault_result(plan, m, logs, confirmed_at, event, &window);
            result.network = event.network.as_ref().map(|network| {
                let timeouts_end = m
                    .faults
                    .get(i + 1)
                    .map_or_else(|| publish_timeouts(m), |next| next.timeouts_at_start);
                network_fault(event, network, timeouts_end - event.timeouts_at_start)
            });
            result
        })
        .collect();
    // What the broker still holds for a group is its newest messages (queues
    // and logs are first in, first out): it leaves the last windows' lost first.
    let mut still_held = held.to_vec();
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

/// One fault: when it came, when the broker, publishing and each group came
/// back, whether that counts as recovered, and its window's messages.
fn fault_result(
    plan: &Plan,
    m: &Measurement,
    logs: &[ProducerLog],
    confirmed_at: &Timeline,
    event: &super::faults::FaultEvent,
    window: &ledger::Window,
) -> FaultResult {
    let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    let load_end = m.steady_start + plan.load.duration;
    let started = event.started.saturating_duration_since(m.load_start);
    // Recovery counts from the fault; the first sign is looked for once the
    // broker serves again (on a cluster: once another node leads).
    let back = event
        .serving()
        .map(|r| r.saturating_duration_since(m.load_start));
    // (A 10 ms bucket can start before the moment the broker was back.)
    let recovered = |timeline: &Timeline| {
        let first = back.and_then(|b| Some(timeline.first_at_or_after(b)?.max(b)));
        first.map(|t| secs(t.saturating_sub(started)))
    };
    let groups = m.groups.iter().zip(&plan.consumers);
    let messages = FaultMessages {
        publish: ledger::publish_account_in(logs, window),
        groups: groups
            .clone()
            .map(|(g, c)| {
                let a = ledger::group_account_in(logs, &g.log, window);
                let group = FaultGroup {
                    lost: a.gone(),
                    duplicates: a.duplicates,
                    recovered: a.recovered,
                };
                (c.group.clone(), group)
            })
            .collect(),
    };
    let publish_recovered_after_s = recovered(confirmed_at);
    let delivery_recovered_after_s: BTreeMap<String, Option<f64>> = groups
        .map(|(g, c)| (c.group.clone(), recovered(&g.delivered_at)))
        .collect();
    // Judged only when the broker was back long enough before the end
    // of the load for every client to have tried again (its longest
    // backoff): after that, there may be nothing new to publish.
    let back_in_load = event
        .serving()
        .is_some_and(|r| r + plan.recovery.backoff_max <= load_end);
    // On a cluster that reports its replicas, a node that never caught up
    // again leaves the cluster short of a copy: not recovered.
    let rejoined =
        event.leadership_before.is_none() || event.nodes.iter().all(|n| n.rejoined.is_some());
    let worked_again = publish_recovered_after_s.is_some()
        && delivery_recovered_after_s.values().all(Option::is_some)
        && rejoined;
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
        messages,
        aimed_at: event.fault.node,
        leadership_before: event.leadership_before.clone(),
        nodes: event
            .nodes
            .iter()
            .map(|n| {
                let after = |at: Instant| secs(at.saturating_duration_since(n.hit));
                NodeFault {
                    node: n.number,
                    name: n.name.clone(),
                    was_leader: n.was_leader,
                    hit_s: secs(n.hit.saturating_duration_since(m.load_start)),
                    ready_after_s: n.ready.map(after),
                    new_leader: n
                        .led_by_another
                        .as_ref()
                        .and_then(|(now, _)| now.leader.clone()),
                    moved_partitions: moved_partitions(event.leadership_before.as_ref(), n),
                    new_leader_after_s: n.led_by_another.as_ref().map(|(_, at)| after(*at)),
                    rejoined_after_s: n.rejoined.map(after),
                }
            })
            .collect(),
        network: None,
    }
}

/// Publishes that timed out in the whole run.
fn publish_timeouts(m: &Measurement) -> u64 {
    m.producers
        .iter()
        .filter_map(|p| p.errors.get(&ErrorKind::Timeout))
        .sum()
}

/// What the fault proxy did in a network fault; its latency figures are
/// filled in from the series ([`observe_network_faults`]).
fn network_fault(
    event: &FaultEvent,
    network: &NetworkEvent,
    publish_timeouts: u64,
) -> NetworkFault {
    let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let (before, after) = (network.before, network.after);
    NetworkFault {
        latency_ms: event.fault.delay.map(|d| ms(d.latency)),
        jitter_ms: event.fault.delay.map(|d| ms(d.jitter)),
        connections_open: before.open,
        connections_cut: after.cut - before.cut,
        connections_refused: after.refused - before.refused,
        connections_new: after.relayed - before.relayed,
        reconnected_after_s: network.reconnected.map(|at| {
            (at.saturating_duration_since(event.started).as_secs_f64() * 1e3).round() / 1e3
        }),
        publish_timeouts,
        publish_p50_ms: None,
        end_to_end_p50_ms: BTreeMap::new(),
    }
}

/// Each network fault's p50s in the whole seconds of the series during it,
/// and in as many whole seconds just before it (within the steady phase).
fn observe_network_faults(faults: &mut [FaultResult], series: &Series) {
    for fault in faults {
        let Some(network) = &mut fault.network else {
            continue;
        };
        // Whole seconds: the first that starts at or after the fault, up to
        // the last that ends by its end.
        let first = fault.started_s.ceil() as usize;
        let last = (fault.started_s + fault.duration_s).floor() as usize;
        let steady = series.steady_start_s.ceil() as usize;
        let length = last.saturating_sub(first);
        let before_from = first.saturating_sub(length).max(steady);
        let (before, during) = (before_from..first.max(before_from), first..last);
        let figure = |s: &IntervalSeries| {
            Some(BeforeDuring {
                before: s.p50_over(before.clone())? as f64 / 1e3,
                during: s.p50_over(during.clone())? as f64 / 1e3,
            })
        };
        network.publish_p50_ms = figure(&series.publish_latency_us);
        network.end_to_end_p50_ms = series
            .end_to_end_latency_us
            .iter()
            .filter_map(|(group, s)| Some((group.clone(), figure(s)?)))
            .collect();
    }
}

/// Kafka: the partitions `node` led before the fault that another led
/// when the broker first reported the move.
fn moved_partitions(
    before: Option<&crate::driver::Leadership>,
    node: &super::faults::NodeEvent,
) -> Vec<i32> {
    let (Some(before), Some((after, _))) = (before, &node.led_by_another) else {
        return Vec::new();
    };
    before
        .partitions
        .iter()
        .filter(|(_, leader)| **leader == node.name)
        .filter(|(p, _)| {
            after
                .partitions
                .get(p)
                .is_some_and(|now| *now != node.name && now != crate::driver::NO_LEADER)
        })
        .map(|(p, _)| *p)
        .collect()
}

/// Messages per second over the steady phase, to a tenth.
fn per_s(n: u64, steady: f64) -> f64 {
    if steady > 0.0 {
        round1(n as f64 / steady)
    } else {
        0.0
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
