//! `brokerbench run SCENARIO`: the main job.
//!
//! Brokers are measured one after another, each alone on the machine, under
//! the same scenario. Results are written after each broker; the first Ctrl-C
//! stops the load, drains briefly and writes what was measured (marked
//! incomplete), the second exits at once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;

use super::screen::Screen;
use super::DataDir;
use crate::broker::security::{LocalCredentials, Secret};
use crate::broker::ServerSettings;
use crate::cli::{EnvKind, RunArgs};
use crate::env::binaries::{self, Binary};
use crate::env::cluster::LocalCluster;
use crate::env::compose::ComposeBroker;
use crate::env::external::Targets;
use crate::env::local::LocalBroker;
use crate::env::netns::{self, Mesh};
use crate::env::proxy::{FaultProxy, Proxied};
use crate::env::{nats_trust, pki};
use crate::env::{Environment, Placed};
use crate::exit;
use crate::kind::BrokerKind;
use crate::metrics::live::LiveMetrics;
use crate::report::{export, table};
use crate::results::Results;
use crate::run::session::{Outcome, Session, Stop};
use crate::scenario::{Overrides, Plan};

pub(crate) async fn run(args: RunArgs) -> Result<ExitCode> {
    let overrides = Overrides {
        brokers: args.brokers.clone(),
        rate: args.rate,
        duration: args.duration,
        thresholds: args.thresholds.clone(),
        publish_only: args.publish_only,
        keep_data: args.keep_data,
        find_max: args.find_max,
        slo: args.slo.clone(),
    };
    let plan = Plan::load(&args.scenario, &overrides)?;
    let mut site = Site::prepare(&args, &plan).await?;
    let stop = Stop::default();
    tokio::spawn(interrupts(stop.clone()));
    let screen = Screen::new(&plan, args.json);
    screen.line(start_line(&plan));
    let mut session = Session::new(&plan, args.out.clone(), stop);
    let mut serving = None;
    if let Some(addr) = args.metrics_addr {
        let live = Arc::new(LiveMetrics::default());
        let (bound, task) = Arc::clone(&live).serve(addr).await?;
        screen.line(format!("metrics: http://{bound}/metrics"));
        session = session.with_live_metrics(live);
        serving = Some(task);
    }
    let Outcome {
        results,
        path,
        failure,
    } = session.run(&mut site, &screen).await?;
    if let Some(task) = serving {
        task.abort();
    }

    if !results.brokers.is_empty() {
        screen.line(tables(&results));
    }
    screen.line(format!("results: {}", path.display()));
    if let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY") {
        // GitHub Actions shows this file as the job's summary.
        // The run's own verdict stands whatever happens to its summary.
        if let Err(err) = append(Path::new(&summary), &export::markdown(&results)) {
            screen.line(format!(
                "warning: could not write the job summary to {}: {err}",
                summary.to_string_lossy()
            ));
        }
    }
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
        screen.line(format!("incomplete: {reason}"));
    }
    Ok(ExitCode::from(if results.passed() {
        exit::OK
    } else {
        exit::CHECK_FAILED
    }))
}

/// The line that opens a run: the scenario, its brokers and its load.
fn start_line(plan: &Plan) -> String {
    format!(
        "brokerbench {}: scenario '{}' on {}; {} at {}, {} producer(s), {}",
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
        match plan.consumers.len() {
            0 => "publish only".to_string(),
            n => format!("{n} group(s)"),
        }
    )
}

/// The tables printed after the run: the comparison, the groups, dead
/// letters, the cluster's nodes through faults, network faults, the find-max search, the harness, and their notes.
fn tables(results: &Results) -> String {
    let layout = table::Layout::of_terminal();
    let mut tables = table::summary(results, layout).to_string();
    if !results.scenario.publish_only() {
        tables.push_str(&format!("\n{}", table::groups(results, layout)));
    }
    if let Some(dead_letters) = table::dead_letters(results, layout) {
        tables.push_str(&format!("\n{dead_letters}"));
    }
    if let Some(nodes) = table::cluster_faults(results, layout) {
        tables.push_str(&format!("\n{nodes}"));
    }
    if let Some(network) = table::network_faults(results, layout) {
        tables.push_str(&format!("\n{network}"));
    }
    if let Some(search) = table::find_max(results, layout) {
        tables.push_str(&format!("\n{search}"));
    }
    if let Some(harness) = table::harness(results, layout) {
        tables.push_str(&format!("\n{harness}"));
    }
    if let Some(agents) = table::agents(results) {
        tables.push_str(&format!("\n{agents}"));
    }
    for note in table::notes(results, layout)
        .into_iter()
        .chain(table::harness_warnings(results))
        .chain(table::agent_failures(results))
    {
        tables.push('\n');
        tables.push_str(&note);
    }
    tables
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{text}")
}

/// Where the brokers come from. Prepared before anything runs, so that a
/// missing program or a bad targets file stops the run before it starts.
enum Site {
    Local {
        binaries: Vec<Binary>,
        data: DataDir,
        server: ServerSettings,
        /// Nodes per broker: 1, or a local cluster.
        nodes: u8,
        /// Every client connection through the fault proxy (the scenario
        /// has network faults).
        proxied: bool,
        /// Each node in a network namespace (the scenario has partitions).
        namespaces: bool,
    },
    Compose(PathBuf),
    External(Vec<Box<dyn Placed>>),
}

impl Site {
    async fn prepare(args: &RunArgs, plan: &Plan) -> Result<Self> {
        if !plan.security.is_plain() {
            refuse_unsecured(args, plan)?;
        }
        Ok(match args.env {
            EnvKind::Local => {
                let data = DataDir::new(None)?;
                let server = ServerSettings {
                    credentials: local_credentials(plan, data.path())?.map(Arc::new),
                    ..ServerSettings::of(plan)
                };
                Site::Local {
                    binaries: binaries::locate_all(&plan.brokers).await?,
                    data,
                    server,
                    nodes: plan.cluster.nodes,
                    proxied: plan.has_network_faults() || args.through_proxy,
                    namespaces: plan.has_partitions() && {
                        netns::available()
                            .with_context(|| format!("{}: a partition", plan.source.display()))?;
                        true
                    },
                }
            }
            _ if plan.has_partitions() => bail!(
                "{}: a partition cuts local nodes apart in network namespaces; it runs with \
                 local brokers only so far (--env local)",
                plan.source.display()
            ),
            _ if plan.has_network_faults() || args.through_proxy => bail!(
                "{}: network faults (delay, cut, blackhole) go through brokerbench's fault \
                 proxy, which runs with local brokers only so far (--env local)",
                plan.source.display()
            ),
            EnvKind::Compose if !plan.cluster.is_single() => bail!(
                "{}: [cluster] nodes = {} runs locally (--env local) or on your brokers \
                 (--env external, a targets file listing each node), not on compose yet",
                plan.source.display(),
                plan.cluster.nodes
            ),
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
}

/// What `[security]` cannot run with yet, refused before anything starts
/// rather than run without TLS or without the user.
fn refuse_unsecured(args: &RunArgs, plan: &Plan) -> Result<()> {
    let file = plan.source.display();
    if args.env != EnvKind::Local {
        bail!(
            "{file}: [security] is for local brokers; brokers you run take TLS and \
             authentication from the targets file ([BROKER.tls], [BROKER.auth])"
        );
    }
    if !plan.cluster.is_single() || plan.has_network_faults() || args.through_proxy {
        bail!("{file}: [security] runs on a single node without network faults so far");
    }
    if let Some(group) = plan.consumers.iter().find(|g| !g.language.is_rust()) {
        bail!(
            "{file}: [security]: group {} is a {} agent, which does not take TLS or a user yet",
            group.group,
            group.language.as_str()
        );
    }
    Ok(())
}

/// The certificates and users a run with `[security]` makes: the CA and the
/// brokers' certificate under `data/tls`; the user `brokerbench` with the
/// password in `BROKERBENCH_LOCAL_PASSWORD`, or a random one (RabbitMQ and
/// Kafka); and for NATS an operator, account and user, whose credentials
/// file is `data/tls/brokerbench.creds`.
fn local_credentials(plan: &Plan, data: &Path) -> Result<Option<LocalCredentials>> {
    if plan.security.is_plain() {
        return Ok(None);
    }
    let tls = match plan.security.tls {
        true => Some(pki::generate(&data.join("tls"))?),
        false => None,
    };
    let user = plan.security.auth.then(|| {
        let password = std::env::var("BROKERBENCH_LOCAL_PASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| {
                use rand::distr::{Alphanumeric, SampleString};
                Alphanumeric.sample_string(&mut rand::rng(), 24)
            });
        ("brokerbench".to_string(), Secret::new(password))
    });
    let nats = match plan.security.auth && plan.brokers.contains(&BrokerKind::Jetstream) {
        true => Some(nats_trust::generate(&data.join("tls"))?),
        false => None,
    };
    Ok(Some(LocalCredentials { tls, user, nats }))
}

#[async_trait]
impl Environment for Site {
    fn name(&self) -> &'static str {
        match self {
            Site::Local { .. } => EnvKind::Local.as_str(),
            Site::Compose(_) => EnvKind::Compose.as_str(),
            Site::External(_) => EnvKind::External.as_str(),
        }
    }

    async fn place(&mut self, kind: BrokerKind) -> Result<Box<dyn Placed>> {
        Ok(match self {
            Site::Local {
                binaries,
                data,
                server,
                nodes,
                proxied,
                namespaces,
            } => {
                let binary = binaries
                    .iter()
                    .find(|b| b.kind == kind)
                    .cloned()
                    .context("located with the others")?;
                // The proxy listens first: Kafka must be told its ports, and
                // the readiness probe goes through them.
                let proxy = match proxied {
                    true => Some(FaultProxy::bind(usize::from(*nodes)).await?),
                    false => None,
                };
                let behind = proxy.as_deref();
                let (dir, server, nodes) = (data.path(), server.clone(), *nodes);
                let placed: Box<dyn Placed> = if nodes > 1 {
                    let mesh = match namespaces {
                        true => Some(Mesh::create(usize::from(nodes))?),
                        false => None,
                    };
                    let at = (behind, mesh);
                    Box::new(LocalCluster::start(binary, dir, server, nodes, at).await?)
                } else {
                    Box::new(LocalBroker::start_behind(binary, dir, server, behind).await?)
                };
                match proxy {
                    Some(proxy) => Box::new(Proxied::new(placed, proxy)?),
                    None => placed,
                }
            }
            Site::Compose(file) => Box::new(ComposeBroker::place(file, kind).await?),
            Site::External(brokers) => {
                let at = brokers
                    .iter()
                    .position(|b| b.endpoint().kind == kind)
                    .context("prepared with the others")?;
                brokers.swap_remove(at)
            }
        })
    }
}

/// First SIGINT (Ctrl-C) or SIGTERM: stop the load and report, naming the
/// signal. Second: exit now (the brokers die with us through their death
/// signal).
async fn interrupts(stop: Stop) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut interrupt) = signal(SignalKind::interrupt()) else {
        return;
    };
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        return;
    };
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT (Ctrl-C)",
        _ = terminate.recv() => "SIGTERM",
    };
    eprintln!("{name}: stopping, writing results (Ctrl-C again to quit at once)");
    stop.stop(name);
    tokio::select! { _ = interrupt.recv() => {}, _ = terminate.recv() => {} }
    std::process::exit(130);
}
