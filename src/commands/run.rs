//! `brokerbench run SCENARIO`: the main job.
//!
//! Brokers are measured one after another, each alone on the machine, under
//! the same scenario. Results are written after each broker; the first Ctrl-C
//! stops the load, drains briefly and writes what was measured (marked
//! incomplete), the second exits at once.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::DataDir;
use crate::broker::BrokerKind;
use crate::cli::{EnvKind, RunArgs};
use crate::env::binaries::{self, Binary};
use crate::env::compose::ComposeBroker;
use crate::env::external::{CommandBroker, Targets};
use crate::env::local::LocalBroker;
use crate::env::Placed;
use crate::exit;
use crate::report::{table, BrokerResult, Results};
use crate::run::{self, Phase, Progress};
use crate::scenario::{Overrides, Plan};

/// Beyond the load and the drain timeout: a broker's start deadline (90 s for
/// RabbitMQ) after a fault, and a few 10 s call timeouts while closing.
const MEASURE_SLACK: Duration = Duration::from_secs(150);

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    let overrides = Overrides {
        brokers: args.brokers.clone(),
        rate: args.rate,
        duration: args.duration,
    };
    let plan = Plan::load(&args.scenario, &overrides)?;
    let mut site = Site::prepare(&args, &plan).await?;
    let mut results = Results::new(&plan, args.env.as_str());
    let dir = results.directory(&args.out);
    let run_id: u64 = rand::random();
    // With --json, stdout carries only JSON.
    let say = |line: String| {
        if args.json {
            eprintln!("{line}")
        } else {
            println!("{line}")
        }
    };

    let cancel = CancellationToken::new();
    tokio::spawn(interrupts(cancel.clone()));

    say(format!(
        "brokerbench {}: scenario '{}' on {}; {} at {}, {} producer(s), {} group(s)",
        env!("CARGO_PKG_VERSION"),
        plan.name,
        plan.brokers
            .iter()
            .map(|b| b.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        humantime::format_duration(plan.load.duration),
        if plan.load.open_loop() {
            format!("{} msg/s", plan.load.rate)
        } else {
            "max rate".into()
        },
        plan.load.producers,
        plan.consumers.len(),
    ));
    let mut failure = None;
    let mut unfinished: Vec<String> = Vec::new();
    for &kind in &plan.brokers {
        if cancel.is_cancelled() {
            break;
        }
        let mut broker = match site.place(kind).await {
            Ok(broker) => broker,
            Err(err) => {
                failure = Some(err.context(format!("{kind} could not be started")));
                break;
            }
        };
        let progress = Arc::new(Progress::new(
            plan.consumers.len(),
            plan.load.producers as usize,
        ));
        let bar = progress_bar(&plan, kind.as_str(), args.json);
        let ticker = tokio::spawn(tick(
            bar.clone(),
            progress.clone(),
            plan.load.warmup + plan.load.duration,
        ));
        let implementation = broker.implementation().to_string();
        let endpoint = broker.endpoint().clone();
        // The run's own deadlines end it; this bound only guards against a
        // client call that never returns, so that no run can hang.
        let bound = plan.load.warmup + plan.load.duration + plan.load.drain_timeout + MEASURE_SLACK;
        let measure = run::measure(
            &plan,
            &endpoint,
            broker.as_mut(),
            run_id,
            &cancel,
            &progress,
        );
        let measured = tokio::time::timeout(bound, measure).await;
        ticker.abort();
        bar.finish_and_clear();
        let endpoint = broker.endpoint().shown();
        if let Err(err) = broker.shutdown().await {
            say(format!("warning: stopping {kind}: {err:#}"));
        }
        match measured {
            Err(_elapsed) => {
                let reason = format!(
                    "{kind} did not finish within {} (load, drain timeout and {} for starts and closes); its results are lost",
                    humantime::format_duration(bound),
                    humantime::format_duration(MEASURE_SLACK)
                );
                say(format!("{kind}: {reason}"));
                unfinished.push(reason);
            }
            Ok(Ok(m)) => {
                let result = BrokerResult::new(&plan, kind, &implementation, endpoint, m);
                say(format!(
                    "{kind}: {} confirmed of {} sent, {:.0} msg/s, checks {}",
                    result.publish.confirmed,
                    result.publish.attempted,
                    result.publish.rate_per_s,
                    if result.passed() { "passed" } else { "FAILED" }
                ));
                results.brokers.push(result);
                results.write(&dir)?;
            }
            Ok(Err(err)) => {
                failure = Some(err);
                break;
            }
        }
    }
    results.complete = failure.is_none()
        && unfinished.is_empty()
        && !cancel.is_cancelled()
        && results.brokers.len() == plan.brokers.len()
        && results.brokers.iter().all(|b| b.complete);
    results.incomplete_reason = match (&failure, cancel.is_cancelled()) {
        _ if results.complete => None,
        (Some(err), _) => Some(format!("{err:#}")),
        _ if !unfinished.is_empty() => Some(unfinished.join("; ")),
        (None, true) => Some("interrupted (Ctrl-C)".into()),
        (None, false) => Some(
            results
                .brokers
                .iter()
                .filter(|b| !b.complete)
                .map(|b| match b.faults.iter().find_map(|f| f.error.as_deref()) {
                    Some(error) => format!("{}: {error}", b.broker),
                    None => format!(
                        "{}: the drain timed out with confirmed messages undelivered",
                        b.broker
                    ),
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let path = results.write(&dir)?;

    if !results.brokers.is_empty() {
        let tables = format!("{}\n{}", table::summary(&results), table::groups(&results));
        say(tables);
    }
    say(format!("results: {}", path.display()));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).context("serializing results")?
        );
    }
    if let Some(err) = failure {
        // Measured brokers are saved; the run itself could not be completed.
        return Err(err.context(format!("results so far: {}", path.display())));
    }
    if let Some(reason) = &results.incomplete_reason {
        say(format!("incomplete: {reason}"));
    }
    Ok(ExitCode::from(if results.passed() {
        exit::OK
    } else {
        exit::CHECK_FAILED
    }))
}

/// Where the brokers come from. Prepared before anything runs, so that a
/// missing program or a bad targets file stops the run before it starts.
enum Site {
    Local {
        binaries: Vec<Binary>,
        data: DataDir,
    },
    Compose(PathBuf),
    External(Vec<CommandBroker>),
}

impl Site {
    async fn prepare(args: &RunArgs, plan: &Plan) -> Result<Self> {
        Ok(match args.env {
            EnvKind::Local => Site::Local {
                binaries: binaries::locate_all(&plan.brokers).await?,
                data: DataDir::new(None)?,
            },
            EnvKind::Compose => Site::Compose(args.compose_file.clone()),
            EnvKind::External => {
                let file = args
                    .targets
                    .as_deref()
                    .context("--env external needs --targets FILE")?;
                let targets = Targets::load(file)?;
                let brokers = plan
                    .brokers
                    .iter()
                    .map(|&kind| targets.broker(kind, plan))
                    .collect::<Result<_, _>>()?;
                Site::External(brokers)
            }
        })
    }

    /// The broker `kind`, started (local, compose) or reached (external).
    async fn place(&mut self, kind: BrokerKind) -> Result<Box<dyn Placed>> {
        Ok(match self {
            Site::Local { binaries, data } => {
                let binary = binaries
                    .iter()
                    .find(|b| b.kind == kind)
                    .cloned()
                    .context("located with the others")?;
                Box::new(LocalBroker::start(binary, data.path()).await?)
            }
            Site::Compose(file) => Box::new(ComposeBroker::place(file, kind).await?),
            Site::External(brokers) => {
                let at = brokers
                    .iter()
                    .position(|b| b.endpoint().kind == kind)
                    .context("prepared with the others")?;
                Box::new(brokers.swap_remove(at))
            }
        })
    }
}

/// First Ctrl-C: stop the load and report. Second: exit now (the brokers die
/// with us through their death signal).
async fn interrupts(cancel: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut interrupt) = signal(SignalKind::interrupt()) else {
        return;
    };
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! { _ = interrupt.recv() => {}, _ = terminate.recv() => {} }
    eprintln!("stopping: draining and writing results (Ctrl-C again to quit at once)");
    cancel.cancel();
    tokio::select! { _ = interrupt.recv() => {}, _ = terminate.recv() => {} }
    std::process::exit(130);
}

fn progress_bar(plan: &Plan, broker: &str, json: bool) -> ProgressBar {
    let total = (plan.load.warmup + plan.load.duration).as_millis() as u64;
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
