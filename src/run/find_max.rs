//! `run --find-max`: each broker's highest sustainable open-loop rate.
//!
//! A closed-loop window first measures the most the broker confirms. Open-loop
//! windows then start at that rate and halve it (the coarse step) until one
//! holds, and bisect between the highest rate that held and the lowest that
//! did not, to within 3%. A rate holds when at least 99% of the target rate
//! was both sent and confirmed, every SLO limit holds, no confirmed message is lost and the
//! window completes. A rate below the ceiling that did not hold is measured
//! once more, and fails only if it fails again: on a shared machine one
//! noisy window (a latency spike at its end leaves 1-2% of a 2 s window's
//! confirmations outside it) would otherwise end the search far below the
//! broker's rate. So a rate found held in one window of at most two.
//! Every window is a step in the results, held or not.

use std::time::Duration;

use crate::results::figure::show;
use crate::results::find_max::{Phase, Step, MAX_STEPS};
use crate::results::BrokerResult;
use crate::scenario::thresholds::Metric;
use crate::scenario::Plan;

/// The most a step's measured window lasts (the scenario's duration if shorter).
pub(crate) const STEP_WINDOW: Duration = Duration::from_secs(5);
/// The most a step's warmup lasts.
pub(crate) const STEP_WARMUP: Duration = Duration::from_secs(1);
/// The most a step's drain and final read last.
pub(crate) const STEP_DRAIN: Duration = Duration::from_secs(10);
/// The share of the target rate a step must achieve.
pub(crate) const ACHIEVED: f64 = 0.99;
/// The search ends when the lowest rate that failed is within this factor
/// of the highest that held.
pub(crate) const PRECISION: f64 = 1.03;
/// No step below this rate, msg/s.
pub(crate) const MIN_RATE: f64 = 10.0;

/// The step at `target` (0: closed loop), judged from its result
/// against the plan's SLO limits.
pub(crate) fn judge_step(phase: Phase, target: f64, plan: &Plan, b: &BrokerResult) -> Step {
    let end_to_end = b.worst_end_to_end();
    let end_to_end_p99_us = (end_to_end.count > 0).then_some(end_to_end.p99);
    let publish = &b.latency_us.publish;
    let mut why_not = Vec::new();
    // Sent on time is not enough: the broker must confirm at the rate too.
    let achieved = b.publish.rate_per_s.min(b.publish.confirmed_per_s);
    if phase != Phase::ClosedLoop && achieved < ACHIEVED * target {
        why_not.push(format!(
            "{:.1}% of the target sent and confirmed",
            100.0 * achieved / target
        ));
    }
    let lost = b.lost();
    if lost > 0 {
        why_not.push(format!("{lost} lost"));
    }
    if !b.complete {
        why_not.push("the window did not complete".into());
    }
    let harness_limited = b.harness.as_ref().is_some_and(|h| h.limited);
    let limits = plan
        .find_max
        .as_ref()
        .map(|f| f.limits.for_broker(b.broker))
        .unwrap_or_default();
    for check in crate::results::thresholds::checks(&limits, b) {
        if check.passed {
            continue;
        }
        let metric = check.metric.map_or("?", Metric::key);
        why_not.push(match (check.value, check.limit, check.unit) {
            (Some(v), Some(l), Some(unit)) => {
                format!("{metric} {} over {}", show(v, unit), show(l, unit))
            }
            _ => format!("{metric} not measured"),
        });
    }
    Step {
        phase,
        target_per_s: target,
        achieved_per_s: b.publish.rate_per_s,
        confirmed_per_s: b.publish.confirmed_per_s,
        publish_p99_us: (publish.count > 0).then_some(publish.p99),
        end_to_end_p99_us,
        lost,
        held: phase != Phase::ClosedLoop && why_not.is_empty(),
        harness_limited,
        why_not,
    }
}

/// Where the search stands: which rate to try next.
#[derive(Debug, Default)]
pub(crate) struct Search {
    closed_loop: Option<f64>,
    /// The highest rate that held.
    held: Option<f64>,
    /// The lowest rate that did not hold (twice, below the ceiling).
    failed: Option<f64>,
    /// A rate that did not hold once, to be measured again.
    again: Option<f64>,
    steps: usize,
}

impl Search {
    /// The next step and its target rate (0: closed loop); none when done.
    /// A rate to measure again is measured even at the step limit.
    pub(crate) fn next(&self) -> Option<(Phase, f64)> {
        if let Some(rate) = self.again {
            return Some((Phase::Repeat, rate));
        }
        if self.steps >= MAX_STEPS {
            return None;
        }
        self.next_unlimited()
    }

    /// Whether the step limit, rather than the precision, ended the search.
    pub(crate) fn step_limit_reached(&self) -> bool {
        self.again.is_none() && self.steps >= MAX_STEPS && self.next_unlimited().is_some()
    }

    /// The next step but for the step limit and a rate to measure again.
    fn next_unlimited(&self) -> Option<(Phase, f64)> {
        let Some(ceiling) = self.closed_loop else {
            return Some((Phase::ClosedLoop, 0.0));
        };
        match (self.held, self.failed) {
            (None, None) => Some((Phase::Coarse, whole(ceiling.max(MIN_RATE)))),
            (None, Some(failed)) => {
                let half = whole(failed / 2.0);
                (half >= MIN_RATE).then_some((Phase::Coarse, half))
            }
            // Held at the closed-loop rate: no open-loop rate above it is offered.
            (Some(_), None) => None,
            (Some(held), Some(failed)) => {
                let middle = whole((held + failed) / 2.0);
                (failed > held * PRECISION && middle > held && middle < failed)
                    .then_some((Phase::Bisect, middle))
            }
        }
    }

    /// What step (`phase`, `target`) came to: `confirmed_per_s` for the
    /// closed-loop window, whether it held for the others. A rate fails
    /// when it did not hold twice in a row; but the closed-loop rate, the
    /// first open-loop step, is measured once: open loop seldom holds right
    /// at the ceiling, and the bisection below it finds how close it comes.
    pub(crate) fn record(&mut self, phase: Phase, target: f64, held: bool, confirmed_per_s: f64) {
        self.steps += 1;
        self.again = None;
        let first = self.held.is_none() && self.failed.is_none();
        match phase {
            Phase::ClosedLoop => self.closed_loop = Some(confirmed_per_s),
            _ if held => self.held = Some(self.held.map_or(target, |h| h.max(target))),
            Phase::Coarse if first => self.failed = Some(target),
            Phase::Repeat => self.failed = Some(self.failed.map_or(target, |f| f.min(target))),
            _ => self.again = Some(target),
        }
    }

    /// The highest rate that held.
    pub(crate) fn found(&self) -> Option<f64> {
        self.held
    }

    /// The closed-loop window's confirmed rate.
    pub(crate) fn closed_loop(&self) -> f64 {
        self.closed_loop.unwrap_or(0.0)
    }
}

/// A rate in whole messages per second.
fn whole(rate: f64) -> f64 {
    rate.round().max(1.0)
}

impl Plan {
    /// The plan of one step at `rate` (0: closed loop): a short window
    /// ([`STEP_WARMUP`], [`STEP_WINDOW`], [`STEP_DRAIN`], or the
    /// scenario's own if shorter) and no faults.
    pub(crate) fn find_max_step(&self, rate: f64) -> Plan {
        let mut step = self.clone();
        let load = &mut step.load;
        load.rate = rate;
        load.warmup = load.warmup.min(STEP_WARMUP);
        load.duration = load.duration.min(STEP_WINDOW);
        load.drain_timeout = load.drain_timeout.min(STEP_DRAIN);
        load.final_read = load.final_read.min(STEP_DRAIN);
        step.faults.clear();
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a broker that holds any rate up to `capacity`,
    /// but for the windows numbered in `noisy` (from 0, the closed loop):
    /// the steps, the rate found and whether the step limit ended it.
    fn search_all(
        closed_loop: f64,
        capacity: f64,
        noisy: &[usize],
    ) -> (Vec<(Phase, f64)>, Option<f64>, bool) {
        let mut search = Search::default();
        let mut steps = Vec::new();
        while let Some((phase, rate)) = search.next() {
            let held = rate <= capacity && !noisy.contains(&steps.len());
            steps.push((phase, rate));
            search.record(phase, rate, held, closed_loop);
        }
        (steps, search.found(), search.step_limit_reached())
    }

    /// As [`search_all`], without the step limit's verdict.
    fn search_noisy(
        closed_loop: f64,
        capacity: f64,
        noisy: &[usize],
    ) -> (Vec<(Phase, f64)>, Option<f64>) {
        let (steps, found, _) = search_all(closed_loop, capacity, noisy);
        (steps, found)
    }

    /// Runs a search against a broker that holds any rate up to `capacity`.
    fn search(closed_loop: f64, capacity: f64) -> (Vec<(Phase, f64)>, Option<f64>) {
        search_noisy(closed_loop, capacity, &[])
    }

    /// The steps of `phase`, by rate.
    fn rates(steps: &[(Phase, f64)], phase: Phase) -> Vec<f64> {
        steps
            .iter()
            .filter(|(p, _)| *p == phase)
            .map(|(_, r)| *r)
            .collect()
    }

    #[test]
    fn it_halves_from_the_closed_loop_rate_then_bisects_to_within_three_percent() {
        let (steps, found) = search(10_000.0, 9_000.0);
        assert_eq!(steps[0], (Phase::ClosedLoop, 0.0));
        assert_eq!(steps[1], (Phase::Coarse, 10_000.0));
        assert_eq!(steps[2], (Phase::Coarse, 5_000.0));
        // Each rate below the ceiling that did not hold was measured twice.
        for (n, (phase, rate)) in steps.iter().enumerate().skip(2) {
            if *rate > 9_000.0 && *phase != Phase::Repeat {
                assert_eq!(steps.get(n + 1), Some(&(Phase::Repeat, *rate)), "{steps:?}");
            }
        }
        assert!(steps[3..]
            .iter()
            .all(|(p, _)| matches!(p, Phase::Bisect | Phase::Repeat)));
        let found = found.unwrap();
        assert!((9_000.0 / PRECISION..=9_000.0).contains(&found), "{found}");
    }

    #[test]
    fn a_tight_slo_goes_down_in_halves_and_a_loose_one_stops_at_the_ceiling() {
        let (steps, found) = search(10_000.0, 1_000.0);
        let coarse = rates(&steps, Phase::Coarse);
        assert_eq!(coarse, [10_000.0, 5_000.0, 2_500.0, 1_250.0, 625.0]);
        assert_eq!(rates(&steps, Phase::Repeat)[..3], coarse[1..4]);
        let found = found.unwrap();
        assert!((1_000.0 / PRECISION..=1_000.0).contains(&found), "{found}");

        let (steps, found) = search(10_000.0, 20_000.0);
        assert_eq!(steps.len(), 2, "held at the closed-loop rate: done");
        assert_eq!(found, Some(10_000.0));
    }

    #[test]
    fn nothing_holds_down_to_the_lowest_rate() {
        let (steps, found) = search(100.0, 0.0);
        assert_eq!(found, None);
        assert!(steps.iter().all(|(_, r)| *r == 0.0 || *r >= MIN_RATE));
        assert_eq!(
            steps.last().unwrap(),
            &(Phase::Repeat, 13.0),
            "100, then 50, 25, 13 (12.5 rounded) twice each, then below 10"
        );
    }

    #[test]
    fn one_noisy_window_does_not_end_the_search_below_the_brokers_rate() {
        // The first window at half the ceiling is noisy: measured again, it
        // holds, and the search goes on up to the capacity.
        let (steps, found) = search_noisy(10_000.0, 9_000.0, &[2]);
        assert_eq!(steps[2], (Phase::Coarse, 5_000.0));
        assert_eq!(steps[3], (Phase::Repeat, 5_000.0));
        let found = found.unwrap();
        assert!((9_000.0 / PRECISION..=9_000.0).contains(&found), "{found}");
        // A rate that fails twice is not retried a third time.
        let (steps, _) = search_noisy(10_000.0, 9_000.0, &[2, 3]);
        assert_eq!(steps[4], (Phase::Coarse, 2_500.0), "{steps:?}");
    }

    #[test]
    fn every_rate_below_the_ceiling_that_did_not_hold_is_measured_again_even_at_the_limit() {
        let (mut limited, mut repeat_past_the_limit) = (0, 0);
        for k in 1..=300 {
            // Capacities from 1/1400 of the ceiling to a fifth of it.
            let capacity = f64::from(k) * 5_000.0 / 7.0;
            let (steps, found, limit) = search_all(1_000_000.0, capacity, &[]);
            for (n, &(phase, rate)) in steps.iter().enumerate().skip(2) {
                if phase != Phase::Repeat && rate > capacity {
                    let next = steps.get(n + 1);
                    assert_eq!(next, Some(&(Phase::Repeat, rate)), "{capacity}: {steps:?}");
                }
            }
            assert!(steps.len() <= MAX_STEPS + 1, "{steps:?}");
            repeat_past_the_limit += usize::from(steps.len() == MAX_STEPS + 1);
            if limit {
                limited += 1;
            } else if let Some(found) = found {
                // Ended by the precision: within 3% below the capacity.
                assert!(
                    (capacity / PRECISION..=capacity).contains(&found),
                    "{capacity}: {steps:?}"
                );
            }
        }
        assert!(limited > 0 && repeat_past_the_limit > 0);
        // A search that ends within 3%, or at the ceiling, is not limited.
        assert!(!search_all(10_000.0, 9_000.0, &[]).2);
        assert!(!search_all(10_000.0, 20_000.0, &[]).2);
    }
}
