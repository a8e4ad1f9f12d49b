//! How a run looks on the terminal: the engine's events as lines on stdout
//! (stderr with `--json`, so that stdout carries only JSON), and a progress
//! bar per measurement when stdout is a terminal.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::table;
use crate::run::events::{Event, Observer};
use crate::run::{Phase, Progress};
use crate::scenario::Plan;

/// The terminal.
pub(crate) struct Screen {
    json: bool,
    load: Duration,
    bar: Mutex<Option<(ProgressBar, tokio::task::JoinHandle<()>)>>,
    /// What runs now, as placed: the progress bar names it.
    placed: Mutex<String>,
}

impl Screen {
    pub(crate) fn new(plan: &Plan, json: bool) -> Self {
        Screen {
            json,
            load: plan.load.warmup + plan.load.duration,
            bar: Mutex::new(None),
            placed: Mutex::new(String::new()),
        }
    }

    /// A line of output.
    pub(crate) fn line(&self, line: String) {
        if self.json {
            eprintln!("{line}")
        } else {
            println!("{line}")
        }
    }

    /// A line above the progress bar, on a terminal only: the fault
    /// timeline as it happens (the results keep it for every output).
    fn over_bar(&self, line: String) {
        let bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((bar, _)) = bar.as_ref().filter(|(bar, _)| !bar.is_hidden()) {
            bar.println(line);
        }
    }
}

impl Observer for Screen {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::Measuring { kind, progress } => {
                let placed = self
                    .placed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let bar = progress_bar(self.load, kind.as_str(), &placed, self.json);
                let ticker = tokio::spawn(tick(bar.clone(), progress, self.load));
                *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some((bar, ticker));
            }
            Event::Measured => {
                let taken = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some((bar, ticker)) = taken {
                    ticker.abort();
                    bar.finish_and_clear();
                }
            }
            Event::FaultApplied { action, at } => self.over_bar(format!(
                "{} at {}",
                action.as_str(),
                humantime::format_duration(at)
            )),
            Event::Recovered {
                action,
                after,
                error,
            } => self.over_bar(match (after, error) {
                (Some(after), _) => format!(
                    "back {:.1} s after the {}",
                    after.as_secs_f64(),
                    action.as_str()
                ),
                (None, error) => format!(
                    "not back after the {}: {}",
                    action.as_str(),
                    error.unwrap_or("no reason given")
                ),
            }),
            Event::Step { kind, number, step } => self.line(table::step_line(kind, number, step)),
            Event::SearchStopped { kind, why } => {
                self.line(format!("{kind}: the search stopped early: {why}"))
            }
            Event::BrokerDone { result } => {
                self.line(table::headline(result));
                if let Some(search) = &result.find_max {
                    self.line(table::found(result.broker, search));
                }
            }
            Event::Hung { kind, reason } => self.line(format!("{kind}: {reason}")),
            Event::Warning { kind, doing, error } => {
                self.line(format!("warning: {doing} {kind}: {error:#}"))
            }
            // On stderr, as warnings of the teardown always were.
            Event::TeardownFailed { error } => {
                eprintln!("warning: deleting the run's queues, streams or topics: {error:#}")
            }
            Event::Placed {
                kind,
                implementation,
                endpoint,
            } => {
                *self.placed.lock().unwrap_or_else(|e| e.into_inner()) =
                    format!("{kind}: {implementation} at {endpoint}");
            }
        }
    }
}

/// A bar over the load's time, named by `broker`, with `placed` (what runs
/// where) beside its counters; hidden unless stdout is a terminal.
fn progress_bar(load: Duration, broker: &str, placed: &str, json: bool) -> ProgressBar {
    let total = load.as_millis() as u64;
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if std::io::stdout().is_terminal() && !json {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix:>10} {wide_bar} {elapsed:>4} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(broker.to_string());
    bar.println(placed);
    bar
}

async fn tick(bar: ProgressBar, progress: Arc<Progress>, load: Duration) {
    let started = tokio::time::Instant::now();
    loop {
        let phase = progress.phase();
        if matches!(phase, Phase::Warmup | Phase::Steady) {
            bar.set_position(started.elapsed().min(load).as_millis() as u64);
        }
        let delivered = progress
            .delivered
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        bar.set_message(format!(
            "{:<6} sent {} confirmed {} delivered {}",
            phase.as_str(),
            progress.sent.load(Ordering::Relaxed),
            progress.confirmed.load(Ordering::Relaxed),
            delivered
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
