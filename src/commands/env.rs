//! `brokerbench env check|up|smoke`: brokers as local processes, by hand.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use comfy_table::{presets, Table};
use futures_util::future::try_join_all;
use tokio::signal::unix::{signal, SignalKind};

use super::DataDir;
use crate::broker;
use crate::cli::{EnvCommand, UpArgs};
use crate::env::binaries;
use crate::env::local::LocalBroker;
use crate::exit;
use crate::kind::BrokerKind;
use crate::scenario::dedup;

pub(crate) async fn run(command: EnvCommand) -> Result<ExitCode> {
    match command {
        EnvCommand::Check => check().await,
        EnvCommand::Up(args) => up(args).await,
        EnvCommand::Smoke(args) => smoke(&args.brokers).await,
    }
}

async fn check() -> Result<ExitCode> {
    let mut table = plain_table(["broker", "program", "version", "status"]);
    let mut missing = Vec::new();
    for kind in crate::kind::ALL {
        match binaries::locate(kind).await {
            Ok(binary) => {
                table.add_row([
                    kind.as_str(),
                    &binary.path.display().to_string(),
                    &binary.implementation,
                    "ok",
                ]);
            }
            Err(err) => {
                table.add_row([
                    kind.as_str(),
                    broker::info(kind).program,
                    "-",
                    &format!("missing: {err:#}"),
                ]);
                missing.push(kind);
            }
        }
    }
    println!("{table}");
    println!(
        "RabbitMQ is Debian 12's 3.10.8 (3.13 and 4.x need Erlang 26; Debian 12 has 25). \
         scripts/install-brokers pins nats-server {} and Apache Kafka (tools/kafka/pom.xml).",
        crate::broker::NATS_SERVER_VERSION
    );
    agents().await;
    if missing.is_empty() {
        return Ok(ExitCode::from(exit::OK));
    }
    println!();
    for kind in &missing {
        println!(
            "{kind} is missing; install it with:\n    {}",
            broker::info(*kind).install_hint()
        );
    }
    println!("(or install all three with: sudo scripts/install-brokers)");
    Ok(ExitCode::from(exit::CANNOT_RUN))
}

/// The consumer agents in other languages (docs/cross-language.md): each
/// runtime, its pinned client libraries, and whether it is installed. A run
/// without a group in that language does not need it.
async fn agents() {
    use crate::agent::inventory::{inventory, INSTALL};
    let mut table = plain_table(["agent", "runtime", "libraries", "status"]);
    let mut missing = false;
    for agent in inventory().await {
        let status = match &agent.status {
            Ok(()) => "ok".to_string(),
            Err(why) => {
                missing = true;
                format!("missing: {why}")
            }
        };
        table.add_row([
            agent.language.as_str(),
            &agent.runtime,
            &agent.libraries,
            &status,
        ]);
    }
    println!("\n{table}");
    if missing {
        println!(
            "Groups in a missing agent's language cannot run; {INSTALL} installs every agent."
        );
    }
}

/// Starts every broker at once; if one fails, the others are dropped (killed).
async fn start_all(binaries: Vec<binaries::Binary>, dir: &Path) -> Result<Vec<LocalBroker>> {
    try_join_all(
        binaries
            .into_iter()
            .map(|binary| LocalBroker::start(binary, dir)),
    )
    .await
}

async fn shutdown_all(brokers: Vec<LocalBroker>) -> Result<()> {
    try_join_all(brokers.into_iter().map(LocalBroker::shutdown)).await?;
    Ok(())
}

async fn up(args: UpArgs) -> Result<ExitCode> {
    let binaries = binaries::locate_all(&dedup(args.brokers.brokers)).await?;
    let data = DataDir::new(args.data_dir)?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    println!(
        "starting {} (data and logs in {})",
        names(&binaries),
        data.path().display()
    );
    let mut brokers = tokio::select! {
        started = start_all(binaries, data.path()) => started?,
        _ = interrupt.recv() => { println!("interrupted while starting; stopped"); return Ok(ExitCode::from(exit::CANNOT_RUN)) }
        _ = terminate.recv() => { println!("terminated while starting; stopped"); return Ok(ExitCode::from(exit::CANNOT_RUN)) }
    };
    let mut table = plain_table([
        "broker",
        "implementation",
        "endpoint",
        "ready in",
        "pid",
        "log",
    ]);
    for broker in &brokers {
        table.add_row([
            broker.kind().as_str().to_string(),
            broker.implementation().to_string(),
            broker.endpoint().url(),
            format!("{:.2} s", broker.ready_in().as_secs_f64()),
            broker
                .pids()
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            broker.log_path().display().to_string(),
        ]);
    }
    println!("{table}");
    println!("running; press Ctrl-C to stop");
    std::io::stdout().flush()?;

    let mut watch = tokio::time::interval(Duration::from_secs(1));
    let mut reported = Vec::new();
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = watch.tick() => {
                for broker in brokers.iter_mut() {
                    if !broker.is_running() && !reported.contains(&broker.kind()) {
                        eprintln!("warning: {} exited on its own; see {}", broker.kind(), broker.log_path().display());
                        reported.push(broker.kind());
                    }
                }
            }
        }
    }
    println!("stopping...");
    std::io::stdout().flush()?;
    tokio::select! {
        stopped = shutdown_all(std::mem::take(&mut brokers)) => stopped?,
        // A second Ctrl-C: no more waiting, the brokers are killed on drop.
        _ = interrupt.recv() => { println!("killed"); return Ok(ExitCode::from(exit::CANNOT_RUN)) }
    }
    println!("stopped");
    Ok(ExitCode::from(exit::OK))
}

async fn smoke(kinds: &[BrokerKind]) -> Result<ExitCode> {
    let binaries = binaries::locate_all(&dedup(kinds.to_vec())).await?;
    let data = DataDir::new(None)?;
    println!("starting {}", names(&binaries));
    let brokers = start_all(binaries, data.path()).await?;
    let mut table = plain_table([
        "broker",
        "implementation",
        "endpoint",
        "ready in",
        "round trip",
    ]);
    for broker in &brokers {
        let started = Instant::now();
        let payload = format!("brokerbench smoke test via {}", broker.kind());
        let topic = "brokerbench.smoke";
        let client = broker::registry(broker.kind());
        client
            .publish_durable(broker.endpoint(), topic, payload.as_bytes())
            .await?;
        let got = client
            .fetch_one(broker.endpoint(), topic, Duration::from_secs(10))
            .await?;
        anyhow::ensure!(
            got == payload.as_bytes(),
            "{} returned a different message",
            broker.kind()
        );
        table.add_row([
            broker.kind().as_str().to_string(),
            broker.implementation().to_string(),
            broker.endpoint().url(),
            format!("{:.2} s", broker.ready_in().as_secs_f64()),
            format!("ok, {:.0} ms", started.elapsed().as_secs_f64() * 1000.0),
        ]);
    }
    println!("{table}");
    shutdown_all(brokers).await?;
    println!("all brokers stopped");
    Ok(ExitCode::from(exit::OK))
}

fn names(binaries: &[binaries::Binary]) -> String {
    binaries
        .iter()
        .map(|b| b.implementation.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn plain_table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING).set_header(header);
    table
}
