//! A run session: one scenario against each broker in turn, in the manner of
//! hyperfine's `Scheduler`.
//!
//! The session places each broker through an [`Environment`], connects a
//! driver, measures it within a bound so that no client call can hang the
//! run, stops the broker, turns the measurement into a [`BrokerResult`] and
//! writes `results.json` after every broker, so a later failure or a Ctrl-C
//! loses nothing. It decides whether the run is complete and says why not.
//! The command around it only parses arguments and prints.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use super::account::{broker_result, Placement};
use super::events::{Event, Observer};
use super::find_max::{self, Search};
use super::{measure, Measurement, Progress};
use crate::env::{Environment, Placed};
use crate::kind::BrokerKind;
use crate::metrics::live::LiveMetrics;
use crate::results::find_max::FindMaxResult;
use crate::results::{BrokerResult, Results};
use crate::scenario::Plan;

/// Beyond the load and the drain timeout: a broker's start deadline (90 s for
/// RabbitMQ) after a fault, and a few 10 s call timeouts while closing.
pub(crate) const MEASURE_SLACK: Duration = Duration::from_secs(150);

/// Stops a session early, and remembers why (the signal's name).
#[derive(Clone, Default)]
pub(crate) struct Stop {
    token: CancellationToken,
    why: Arc<std::sync::OnceLock<String>>,
}

impl Stop {
    /// Stops the session: the load stops, what was measured is written,
    /// marked incomplete with `why` (the first reason given is kept).
    pub(crate) fn stop(&self, why: &str) {
        let _ = self.why.set(why.to_string());
        self.token.cancel();
    }

    /// Whether it was stopped.
    pub(crate) fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why it was stopped, if it was.
    pub(crate) fn why(&self) -> Option<&str> {
        self.why.get().map(String::as_str)
    }
}

/// What a session produced.
pub(crate) struct Outcome {
    /// The results, as written.
    pub results: Results,
    /// Where they were written.
    pub path: PathBuf,
    /// Why the session stopped before the last broker: a broker could not
    /// be started, reached or set up. The results so far are written.
    pub failure: Option<anyhow::Error>,
}

/// One scenario, run against the plan's brokers in turn.
pub(crate) struct Session<'a> {
    plan: &'a Plan,
    run_id: u64,
    stop: Stop,
    out: PathBuf,
    slack: Duration,
    live: Option<Arc<LiveMetrics>>,
}

impl<'a> Session<'a> {
    /// A session for `plan`, writing `results.json` into
    /// `<out>/<scenario>-<UTC time>/`; `stop` stops it (the first signal).
    pub(crate) fn new(plan: &'a Plan, out: PathBuf, stop: Stop) -> Self {
        Session {
            plan,
            run_id: rand::random(),
            stop,
            out,
            slack: MEASURE_SLACK,
            live: None,
        }
    }

    /// Updates `live` (served by `--metrics-addr`) as brokers are measured.
    pub(crate) fn with_live_metrics(mut self, live: Arc<LiveMetrics>) -> Self {
        self.live = Some(live);
        self
    }

    /// Time allowed beyond the load and the drain timeout before a broker's
    /// measurement is abandoned as hung (default [`MEASURE_SLACK`]).
    #[cfg(test)]
    pub(crate) fn with_slack(mut self, slack: Duration) -> Self {
        self.slack = slack;
        self
    }

    /// Measures every broker of the plan, placed by `env`. `Err` only when
    /// the results cannot be written.
    pub(crate) async fn run(
        &self,
        env: &mut dyn Environment,
        observer: &dyn Observer,
    ) -> Result<Outcome> {
        let plan = self.plan;
        let mut results = Results::new(plan, env.name());
        let dir = results.claim_directory(&self.out)?;
        let mut failure = None;
        let mut unfinished: Vec<String> = Vec::new();
        for &kind in &plan.brokers {
            if self.stop.is_stopped() {
                break;
            }
            let placed = match env.place(kind).await {
                Ok(placed) => placed,
                Err(err) => {
                    failure = Some(err.context(format!("{kind} could not be started")));
                    break;
                }
            };
            match self.measure_one(kind, placed, observer).await {
                Measured::Done(result) => {
                    observer.event(Event::BrokerDone { result: &result });
                    results.brokers.push(*result);
                    results.write(&dir)?;
                }
                Measured::Hung(reason) => {
                    observer.event(Event::Hung {
                        kind,
                        reason: &reason,
                    });
                    unfinished.push(reason);
                }
                Measured::Failed(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        self.conclude(&mut results, failure.as_ref(), &unfinished);
        let path = results.write(&dir)?;
        Ok(Outcome {
            results,
            path,
            failure,
        })
    }

    /// Measures one placed broker (once, or with `--find-max` step by
    /// step), then lets it go.
    async fn measure_one(
        &self,
        kind: BrokerKind,
        mut placed: Box<dyn Placed>,
        observer: &dyn Observer,
    ) -> Measured {
        let placement = Placement {
            implementation: placed.implementation().to_string(),
            stand_in_for: placed.stand_in_for().map(str::to_string),
            endpoint: placed.endpoint().shown(),
            nodes: placed.node_names(),
            behind_proxy: placed.behind_proxy().map(|e| e.shown()),
        };
        observer.event(Event::Placed {
            kind,
            implementation: &placement.implementation,
            endpoint: &placement.endpoint,
        });
        let measured = match &self.plan.find_max {
            None => {
                let (plan, run_id) = (self.plan, self.run_id);
                self.measure_plan(kind, plan, run_id, placed.as_mut(), &placement, observer)
                    .await
            }
            Some(_) => {
                self.find_max(kind, placed.as_mut(), &placement, observer)
                    .await
            }
        };
        if let Err(err) = placed.shutdown().await {
            observer.event(Event::Warning {
                kind,
                doing: "stopping",
                error: &err,
            });
        }
        measured
    }

    /// Connects to the placed broker and measures `plan` on it once.
    async fn measure_plan(
        &self,
        kind: BrokerKind,
        plan: &Plan,
        run_id: u64,
        placed: &mut dyn Placed,
        placement: &Placement,
        observer: &dyn Observer,
    ) -> Measured {
        let progress = Arc::new(Progress {
            live: self.live.as_ref().map(|l| l.for_broker(kind, plan)),
            ..Progress::new(plan.consumers.len(), plan.load.producers as usize)
        });
        observer.event(Event::Measuring {
            kind,
            progress: progress.clone(),
        });
        let shown = placement.endpoint.clone();
        // The run's own deadlines end it; this bound only guards against a
        // client call that never returns, so that no run can hang.
        let load = &plan.load;
        let bound = load.warmup + load.duration + load.drain_timeout + load.final_read + self.slack;
        let measured = tokio::time::timeout(bound, async {
            let driver = placed
                .connect(plan, run_id)
                .await
                .with_context(|| format!("cannot reach {kind} at {shown}"))?;
            let measured: Result<Measurement> = measure(
                plan,
                driver.as_ref(),
                placed,
                run_id,
                &self.stop.token,
                &progress,
                observer,
            )
            .await;
            measured.with_context(|| format!("{kind} at {shown}"))
        })
        .await;
        observer.event(Event::Measured);
        let proxied = placed.proxy().map(|p| p.counts());
        let measured = measured.map(|m| {
            m.map(|m| Measurement {
                proxy: proxied,
                ..m
            })
        });
        match measured {
            Err(_elapsed) => Measured::Hung(format!(
                "{kind} did not finish within {} (load, drain timeout, final read and {} for \
                 starts and closes); its results are lost",
                humantime::format_duration(bound),
                humantime::format_duration(self.slack)
            )),
            Ok(Ok(m)) => Measured::Done(Box::new(broker_result(plan, kind, placement.clone(), m))),
            Ok(Err(err)) => Measured::Failed(err),
        }
    }

    /// `--find-max`: measures step after step on the placed broker as the
    /// [`Search`] directs. The result is the step at the highest rate that
    /// held (or the last step), with every step in its `find_max`.
    async fn find_max(
        &self,
        kind: BrokerKind,
        placed: &mut dyn Placed,
        placement: &Placement,
        observer: &dyn Observer,
    ) -> Measured {
        let mut search = Search::default();
        let mut steps = Vec::new();
        let (mut found, mut last): (Option<BrokerResult>, Option<BrokerResult>) = (None, None);
        let mut stopped = None;
        while let Some((phase, rate)) = search.next() {
            if self.stop.is_stopped() {
                break;
            }
            let plan = self.plan.find_max_step(rate);
            // A run id per step: no step reads another's messages as its own.
            let run_id = self.run_id.wrapping_add(steps.len() as u64 + 1);
            let result = match self
                .measure_plan(kind, &plan, run_id, placed, placement, observer)
                .await
            {
                Measured::Done(result) => *result,
                // What was measured stands; the search says why it stopped.
                Measured::Hung(reason) if !steps.is_empty() => {
                    stopped = Some(reason);
                    break;
                }
                Measured::Failed(err) if !steps.is_empty() => {
                    stopped = Some(format!("{err:#}"));
                    break;
                }
                other => return other,
            };
            let step = find_max::judge_step(phase, rate, self.plan, &result);
            observer.event(Event::Step {
                kind,
                number: steps.len() + 1,
                step: &step,
            });
            search.record(phase, rate, step.held, result.publish.confirmed_per_s);
            if step.held {
                found = Some(result);
            } else {
                last = Some(result);
            }
            steps.push(step);
        }
        let Some(mut result) = found.or(last) else {
            return Measured::Failed(anyhow::anyhow!(
                "{kind}: stopped before the search measured anything"
            ));
        };
        if let Some(why) = &stopped {
            observer.event(Event::SearchStopped { kind, why });
            result.complete = false;
        }
        result.find_max = Some(FindMaxResult {
            slo: self
                .plan
                .find_max
                .as_ref()
                .map(|f| f.slo.clone())
                .unwrap_or_default(),
            closed_loop_per_s: search.closed_loop(),
            found_per_s: search.found(),
            steps,
            stopped,
            step_limit_reached: search.step_limit_reached(),
        });
        Measured::Done(Box::new(result))
    }

    /// Whether the run is complete, and if not, why.
    fn conclude(
        &self,
        results: &mut Results,
        failure: Option<&anyhow::Error>,
        unfinished: &[String],
    ) {
        let cancelled = self.stop.is_stopped();
        results.complete = failure.is_none()
            && unfinished.is_empty()
            && !cancelled
            && results.brokers.len() == self.plan.brokers.len()
            && results.brokers.iter().all(|b| b.complete);
        results.incomplete_reason = match (failure, cancelled) {
            _ if results.complete => None,
            (Some(err), _) => Some(format!("{err:#}")),
            _ if !unfinished.is_empty() => Some(unfinished.join("; ")),
            (None, true) => Some(format!(
                "interrupted by {}",
                self.stop.why().unwrap_or("a stop request")
            )),
            (None, false) => Some(
                results
                    .brokers
                    .iter()
                    .filter(|b| !b.complete)
                    .map(|b| match b.faults.iter().find_map(|f| f.error.as_deref()) {
                        Some(error) => format!("{}: {error}", b.broker),
                        None => format!("{}: did not finish", b.broker),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
    }
}

/// How one broker's measurement ended.
enum Measured {
    /// Measured; its results.
    Done(Box<BrokerResult>),
    /// It ran past its bound: a client call that never returned.
    Hung(String),
    /// It could not be reached or set up.
    Failed(anyhow::Error),
}
