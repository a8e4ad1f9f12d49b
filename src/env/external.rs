//! The `external` environment: brokers the user runs, at URLs the user gives,
//! with faults applied by commands the user gives (a targets file).
//!
//! ```toml
//! [rabbitmq]
//! url = "amqp://app:secret@mq1.internal:5672/%2f"
//! implementation = "RabbitMQ 3.13.7, 3 nodes"   # shown in the results
//! # stand_in = true   # when it is not the product it is run as (Redpanda
//! #                   # for Kafka): its figures never score the product
//! [rabbitmq.faults]
//! kill = "ssh mq1 sudo pkill -KILL -f beam.smp"
//! start = "ssh mq1 sudo systemctl start rabbitmq-server"
//! restart = "ssh mq1 sudo systemctl restart rabbitmq-server"
//! pause = "ssh mq1 sudo pkill -STOP -f beam.smp"
//! resume = "ssh mq1 sudo pkill -CONT -f beam.smp"
//! ```
//!
//! A cluster (`[cluster] nodes = 3` in the scenario) lists its nodes instead
//! of one `url`, each with the name the broker reports leaders with and the
//! commands that hit that node alone:
//!
//! ```toml
//! [jetstream]
//! implementation = "nats-server 2.10.22, 3 nodes"
//! [[jetstream.nodes]]
//! url = "nats://n1.internal:4222"
//! name = "n1"                  # its server_name (Kafka: node.id; RabbitMQ: rabbit@host)
//! [jetstream.nodes.faults]
//! kill = "ssh n1 sudo pkill -KILL nats-server"
//! start = "ssh n1 sudo systemctl start nats"
//! # ... one [[jetstream.nodes]] per node; RabbitMQ nodes may add
//! # management = "http://user:password@mq1:15672" for the leader question.
//! ```
//!
//! Commands run with `sh -c`, with `BROKERBENCH_BROKER` and
//! `BROKERBENCH_ACTION` set, each bounded by `command_timeout`. After `start`,
//! `restart` and `resume` the broker counts as back once it answers its
//! protocol's handshake again, within `ready_timeout`. The compose environment
//! is the same thing with `docker compose` commands ([`super::compose`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use serde::Deserialize;
use toml::Spanned;

use super::{Endpoint, FaultTarget, Operation, Placed};
use crate::broker;
use crate::broker::security::Security;
use crate::kind::BrokerKind;
use crate::scenario::{FaultAction, Plan, RawError, ScenarioError};

/// How long a fault command may run, unless the targets file says otherwise.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a broker may take to answer again after `start`, `restart` or
/// `resume`, unless the targets file says otherwise.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A broker reached at a fixed address and driven by commands.
#[derive(Debug)]
pub(crate) struct CommandBroker {
    endpoint: Endpoint,
    implementation: String,
    commands: BTreeMap<Operation, Vec<String>>,
    /// The product it is run as, when it is not that product.
    stand_in_for: Option<&'static str>,
    /// Run once when the broker is no longer needed (compose: stop the service).
    down: Option<Vec<String>>,
    command_timeout: Duration,
    ready_timeout: Duration,
}

impl CommandBroker {
    /// A broker at `endpoint`, faults applied by `commands` (argv each).
    pub(crate) fn new(
        endpoint: Endpoint,
        implementation: String,
        commands: BTreeMap<Operation, Vec<String>>,
    ) -> Self {
        CommandBroker {
            endpoint,
            implementation,
            commands,
            stand_in_for: None,
            down: None,
            command_timeout: COMMAND_TIMEOUT,
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// Runs `down` when the measurement is over.
    pub(crate) fn with_down(mut self, down: Vec<String>) -> Self {
        self.down = Some(down);
        self
    }

    /// The argv run for `operation`, if any.
    pub(crate) fn command(&self, operation: Operation) -> Option<&[String]> {
        self.commands.get(&operation).map(Vec::as_slice)
    }

    /// Runs an argv with the command timeout; its output goes into the error
    /// when it fails.
    pub(crate) async fn execute(&self, action: &str, argv: &[String]) -> Result<()> {
        let shown = argv.join(" ");
        let output = tokio::time::timeout(
            self.command_timeout,
            tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .env("BROKERBENCH_BROKER", self.endpoint.kind.as_str())
                .env("BROKERBENCH_ACTION", action)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("`{shown}` did not finish within {:?}", self.command_timeout))?
        .with_context(|| format!("could not run `{shown}`"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            bail!("`{shown}` failed ({}): {}", output.status, stderr.trim());
        }
        Ok(())
    }

    async fn operate(&self, operation: Operation) -> Result<()> {
        let Some(argv) = self.command(operation) else {
            bail!(
                "no `{}` command for {}",
                operation.as_str(),
                self.endpoint.kind
            );
        };
        self.execute(operation.as_str(), argv).await?;
        if matches!(
            operation,
            Operation::Start | Operation::Restart | Operation::Resume
        ) {
            self.wait_ready().await?;
        }
        Ok(())
    }

    /// Polls the protocol handshake until the broker answers.
    pub(crate) async fn wait_ready(&self) -> Result<Duration> {
        let started = Instant::now();
        let deadline = started + self.ready_timeout;
        loop {
            let last = tokio::time::timeout_at(deadline.into(), broker::handshake(&self.endpoint));
            let why = match last.await {
                Ok(Ok(())) => return Ok(started.elapsed()),
                Ok(Err(err)) => format!(": {err:#}"),
                Err(_) => String::new(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} at {} did not answer within {:?}{why}",
                    self.endpoint.kind,
                    self.endpoint.shown(),
                    self.ready_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[async_trait]
impl FaultTarget for CommandBroker {
    async fn kill(&mut self) -> Result<()> {
        self.operate(Operation::Kill).await
    }

    async fn start(&mut self) -> Result<()> {
        self.operate(Operation::Start).await
    }

    async fn restart(&mut self) -> Result<()> {
        self.operate(Operation::Restart).await
    }

    async fn pause(&mut self) -> Result<()> {
        self.operate(Operation::Pause).await
    }

    async fn resume(&mut self) -> Result<()> {
        self.operate(Operation::Resume).await
    }
}

#[async_trait]
impl Placed for CommandBroker {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn implementation(&self) -> &str {
        &self.implementation
    }

    fn stand_in_for(&self) -> Option<&str> {
        self.stand_in_for
    }

    async fn shutdown(self: Box<Self>) -> Result<()> {
        match &self.down {
            Some(argv) => self.execute("down", argv).await,
            None => Ok(()),
        }
    }
}

/// A targets file: per broker, where it is and how to apply faults.
#[derive(Debug)]
pub(crate) struct Targets {
    file: PathBuf,
    text: String,
    parsed: TargetsFile,
    /// Each broker's TLS and authentication, secrets read once at load.
    security: Vec<(BrokerKind, Security)>,
}

/// Per broker name, its table.
type TargetsFile = BTreeMap<Spanned<String>, Spanned<TargetFile>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    url: Option<Spanned<String>>,
    /// A cluster's nodes, instead of `url`.
    #[serde(default)]
    nodes: Vec<NodeFile>,
    implementation: Option<String>,
    #[serde(default)]
    stand_in: bool,
    command_timeout: Option<Spanned<String>>,
    ready_timeout: Option<Spanned<String>>,
    #[serde(default)]
    faults: BTreeMap<Spanned<String>, String>,
    /// TLS toward the broker ([`super::credentials`]).
    tls: Option<super::credentials::TlsFile>,
    /// Authentication, its secret from the environment or a file.
    auth: Option<Spanned<super::credentials::AuthFile>>,
}

/// One node of a cluster in a targets file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    url: Spanned<String>,
    /// The name the broker reports leaders with.
    name: Spanned<String>,
    /// RabbitMQ: the node's management API, `http://user:password@host:15672`.
    management: Option<Spanned<String>>,
    #[serde(default)]
    faults: BTreeMap<Spanned<String>, String>,
}

impl Targets {
    /// Reads and checks a targets file.
    pub(crate) fn load(file: &Path) -> Result<Self, ScenarioError> {
        let text =
            std::fs::read_to_string(file).map_err(|e| ScenarioError::unreadable(file, &e))?;
        Self::parse(file, text)
    }

    /// Parses targets `text` (named `file` in errors).
    pub(crate) fn parse(file: &Path, text: String) -> Result<Self, ScenarioError> {
        let parsed: TargetsFile =
            toml::from_str(&text).map_err(|e| RawError::toml(&e).in_file(file, &text))?;
        let mut targets = Targets {
            file: file.to_path_buf(),
            text,
            parsed,
            security: Vec::new(),
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let mut security = Vec::new();
        for (name, target) in &targets.parsed {
            let kind = name.get_ref().parse::<BrokerKind>().map_err(|message| {
                targets.error(RawError::field(
                    name.get_ref().clone(),
                    Some(name.span()),
                    message,
                ))
            })?;
            let target = target.get_ref();
            targets.check(kind, target)?;
            let resolved =
                super::credentials::resolve(kind, target.tls.as_ref(), target.auth.as_ref(), dir)
                    .map_err(|(field, span, message)| {
                    targets.error(RawError::field(field, span, message))
                })?;
            security.push((kind, resolved));
        }
        targets.security = security;
        Ok(targets)
    }

    fn target(&self, kind: BrokerKind) -> Option<&Spanned<TargetFile>> {
        self.parsed
            .iter()
            .find(|(name, _)| name.get_ref() == kind.as_str())
            .map(|(_, target)| target)
    }

    /// Broker `kind`'s TLS and authentication (none when the file gives none).
    fn security_of(&self, kind: BrokerKind) -> Security {
        self.security
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    fn error(&self, err: RawError) -> ScenarioError {
        err.in_file(&self.file, &self.text)
    }

    fn check(&self, kind: BrokerKind, target: &TargetFile) -> Result<(), ScenarioError> {
        let field = |name: String, span, message: &str| {
            self.error(RawError::field(name, Some(span), message.to_string()))
        };
        match (&target.url, target.nodes.first()) {
            (Some(url), Some(_)) => {
                return Err(field(
                    format!("{kind}.url"),
                    url.span(),
                    "give either `url` (one node) or `[[nodes]]` (a cluster), not both",
                ))
            }
            (Some(url), None) => {
                Endpoint::new(kind, url.get_ref())
                    .map_err(|message| field(format!("{kind}.url"), url.span(), &message))?;
            }
            (None, _) => self.check_nodes(kind, target)?,
        }
        self.check_faults(&target.faults, &kind.to_string())?;
        for (name, value) in [
            ("command_timeout", &target.command_timeout),
            ("ready_timeout", &target.ready_timeout),
        ] {
            if let Some(value) = value {
                crate::scenario::parse_duration(value.get_ref()).map_err(|message| {
                    self.error(RawError::field(
                        format!("{kind}.{name}"),
                        Some(value.span()),
                        message,
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// A cluster's `[[nodes]]`: at least two, each with a URL of the form
    /// its client takes, a name of its own, and fault commands that are
    /// known actions.
    fn check_nodes(&self, kind: BrokerKind, target: &TargetFile) -> Result<(), ScenarioError> {
        if target.nodes.len() < 2 {
            return Err(self.error(RawError::field(
                kind.as_str(),
                None,
                format!("needs `url` (one node), or two or more `[[{kind}.nodes]]` (a cluster)"),
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, node) in target.nodes.iter().enumerate() {
            let at = |key: &str| format!("{kind}.nodes[{i}].{key}");
            Endpoint::new(kind, node.url.get_ref()).map_err(|message| {
                self.error(RawError::field(at("url"), Some(node.url.span()), message))
            })?;
            if node.name.get_ref().trim().is_empty() || !names.insert(node.name.get_ref()) {
                return Err(self.error(RawError::field(
                    at("name"),
                    Some(node.name.span()),
                    "must be the node's own name, as the broker reports leaders, and unique",
                )));
            }
            if let Some(management) = &node.management {
                if !management.get_ref().starts_with("http://") {
                    return Err(self.error(RawError::field(
                        at("management"),
                        Some(management.span()),
                        "must be an http:// address such as http://user:password@mq1:15672",
                    )));
                }
            }
            self.check_faults(&node.faults, &format!("{kind}.nodes[{i}]"))?;
        }
        Ok(())
    }

    /// Fault commands under `table`: known actions, not empty.
    fn check_faults(
        &self,
        faults: &BTreeMap<Spanned<String>, String>,
        table: &str,
    ) -> Result<(), ScenarioError> {
        for (action, command) in faults {
            let why = if Operation::parse(action.get_ref()).is_none() {
                "unknown action (expected kill, start, restart, pause or resume)"
            } else if command.trim().is_empty() {
                "the command is empty"
            } else {
                continue;
            };
            return Err(self.error(RawError::field(
                format!("{table}.faults.{}", action.get_ref()),
                Some(action.span()),
                why,
            )));
        }
        Ok(())
    }

    /// The broker `kind` for a run of `plan`: an error naming the file and
    /// field when it is not in the file, when its nodes are not the
    /// scenario's cluster, or when the plan's faults need a command the file
    /// does not give.
    pub(crate) fn broker(
        &self,
        kind: BrokerKind,
        plan: &Plan,
    ) -> Result<Box<dyn Placed>, ScenarioError> {
        let Some(spanned) = self.target(kind) else {
            return Err(self.error(RawError::field(
                kind.as_str(),
                None,
                format!(
                    "no [{kind}] table, but the run includes {kind}: add one, or choose \
                     the brokers to run with --brokers"
                ),
            )));
        };
        let target = spanned.get_ref();
        let nodes = target.nodes.len().max(1);
        if nodes != usize::from(plan.cluster.nodes) {
            return Err(self.error(RawError::field(
                kind.as_str(),
                Some(spanned.span()),
                format!(
                    "lists {nodes} node(s), but the scenario's [cluster] has {}",
                    plan.cluster.nodes
                ),
            )));
        }
        let needed = needed_operations(plan);
        let Some(url) = &target.url else {
            return self.cluster(kind, target, &needed);
        };
        let commands = commands(&target.faults);
        self.missing(kind.as_str(), &commands, &needed, spanned.span())?;
        let endpoint = Endpoint::new(kind, url.get_ref())
            .expect("checked when parsed")
            .with_security(self.security_of(kind));
        Ok(Box::new(
            self.command_broker(kind, target, endpoint, commands),
        ))
    }

    /// A cluster from its `[[nodes]]`: a [`CommandBroker`] per node.
    fn cluster(
        &self,
        kind: BrokerKind,
        target: &TargetFile,
        needed: &[(Operation, String)],
    ) -> Result<Box<dyn Placed>, ScenarioError> {
        let mut nodes = Vec::new();
        for (i, node) in target.nodes.iter().enumerate() {
            let commands = commands(&node.faults);
            let table = format!("{kind}.nodes[{i}]");
            self.missing(&table, &commands, needed, node.url.span())?;
            let endpoint = Endpoint::new(kind, node.url.get_ref())
                .expect("checked when parsed")
                .with_security(self.security_of(kind));
            nodes.push(self.command_broker(kind, target, endpoint, commands));
        }
        let urls: Vec<String> = target
            .nodes
            .iter()
            .map(|n| n.url.get_ref().clone())
            .collect();
        let admin = target
            .nodes
            .iter()
            .filter_map(|n| n.management.as_ref().map(|m| m.get_ref().clone()))
            .collect();
        let endpoint = Endpoint::list(kind, &urls)
            .expect("checked when parsed")
            .with_admin(admin)
            .with_security(self.security_of(kind));
        Ok(Box::new(CommandCluster {
            implementation: nodes[0].implementation.clone(),
            names: target
                .nodes
                .iter()
                .map(|n| n.name.get_ref().clone())
                .collect(),
            endpoint,
            nodes,
        }))
    }

    /// An error naming `table`'s missing fault command, if `commands` lacks
    /// one of `needed`.
    fn missing(
        &self,
        table: &str,
        commands: &BTreeMap<Operation, Vec<String>>,
        needed: &[(Operation, String)],
        span: std::ops::Range<usize>,
    ) -> Result<(), ScenarioError> {
        match needed.iter().find(|(op, _)| !commands.contains_key(op)) {
            Some((missing, why)) => Err(self.error(RawError::field(
                format!("{table}.faults.{}", missing.as_str()),
                Some(span),
                format!("{why}, which needs a `{}` command here", missing.as_str()),
            ))),
            None => Ok(()),
        }
    }

    /// One broker (or node) at `endpoint` with the target's timeouts.
    fn command_broker(
        &self,
        kind: BrokerKind,
        target: &TargetFile,
        endpoint: Endpoint,
        commands: BTreeMap<Operation, Vec<String>>,
    ) -> CommandBroker {
        let implementation = target.implementation.clone().unwrap_or_else(|| {
            format!(
                "{} at {} (version not stated in {})",
                broker::info(kind).display_name,
                endpoint.shown(),
                self.file.display()
            )
        });
        let duration = |value: &Option<Spanned<String>>, default| {
            value.as_ref().map_or(default, |v| {
                crate::scenario::parse_duration(v.get_ref()).expect("checked when parsed")
            })
        };
        let mut broker = CommandBroker::new(endpoint, implementation, commands);
        if target.stand_in {
            broker.stand_in_for = Some(broker::info(kind).display_name);
        }
        broker.command_timeout = duration(&target.command_timeout, COMMAND_TIMEOUT);
        broker.ready_timeout = duration(&target.ready_timeout, READY_TIMEOUT);
        broker
    }
}

/// Each written fault command as the argv that runs it.
fn commands(faults: &BTreeMap<Spanned<String>, String>) -> BTreeMap<Operation, Vec<String>> {
    faults
        .iter()
        .filter_map(|(action, command)| {
            let argv = vec!["sh".to_string(), "-c".to_string(), command.clone()];
            Some((Operation::parse(action.get_ref())?, argv))
        })
        .collect()
}

/// The operations the plan's faults need, each with the fault that does.
fn needed_operations(plan: &Plan) -> Vec<(Operation, String)> {
    let mut needed = Vec::new();
    for fault in &plan.faults {
        let operations: &[Operation] = match fault.action {
            FaultAction::Kill => &[Operation::Kill, Operation::Start],
            FaultAction::Restart | FaultAction::RollingRestart => &[Operation::Restart],
            FaultAction::Pause => &[Operation::Pause, Operation::Resume],
            // Through the fault proxy, not the broker's own commands.
            FaultAction::Delay | FaultAction::Cut | FaultAction::Blackhole => &[],
            // Refused before: partitions need local namespaces.
            FaultAction::Partition => &[],
        };
        let why = format!(
            "the scenario has a {} fault at {}",
            fault.action.as_str(),
            humantime::format_duration(fault.at)
        );
        needed.extend(operations.iter().map(|op| (*op, why.clone())));
    }
    needed
}

/// A cluster the user runs: a [`CommandBroker`] per node, every node's
/// address for the clients.
#[derive(Debug)]
pub(crate) struct CommandCluster {
    nodes: Vec<CommandBroker>,
    names: Vec<String>,
    endpoint: Endpoint,
    implementation: String,
}

#[async_trait]
impl Placed for CommandCluster {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn implementation(&self) -> &str {
        &self.implementation
    }

    fn stand_in_for(&self) -> Option<&str> {
        self.nodes[0].stand_in_for
    }

    async fn shutdown(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

impl CommandCluster {
    /// `operation` on each node in turn, as its own commands apply it.
    async fn each(&mut self, operation: Operation) -> Result<()> {
        for node in &mut self.nodes {
            node.operate(operation).await?;
        }
        Ok(())
    }
}

/// A fault without a node hits each node in turn.
#[async_trait]
impl FaultTarget for CommandCluster {
    async fn kill(&mut self) -> Result<()> {
        self.each(Operation::Kill).await
    }

    async fn start(&mut self) -> Result<()> {
        self.each(Operation::Start).await
    }

    async fn restart(&mut self) -> Result<()> {
        self.each(Operation::Restart).await
    }

    async fn pause(&mut self) -> Result<()> {
        self.each(Operation::Pause).await
    }

    async fn resume(&mut self) -> Result<()> {
        self.each(Operation::Resume).await
    }

    fn node_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn node(&mut self, index: usize) -> Option<&mut dyn FaultTarget> {
        self.nodes
            .get_mut(index)
            .map(|node| node as &mut dyn FaultTarget)
    }
}
