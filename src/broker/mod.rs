//! Everything brokerbench knows about each broker, one module per broker.
//!
//! A broker module holds its client configuration, connection, topology and
//! [`Driver`], its readiness probe, how its local process is launched, its
//! compose service, the form of its URL and its typed settings. The rest of
//! the program asks a broker through the [`Broker`] trait, and [`registry`]
//! is the one place that maps a [`BrokerKind`] to its module: adding a broker
//! (Redis Streams, Pulsar) means a new module and one line there.

mod endpoint;
pub(crate) mod http;
mod jetstream;
mod kafka;
mod rabbitmq;
pub mod security;
mod version;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use tokio::process::Command;

use crate::driver::Driver;
use crate::kind::BrokerKind;

use crate::scenario::Plan;
pub use endpoint::Endpoint;
pub use jetstream::NATS_SERVER_VERSION;

/// The registry: the one place that maps a kind to its module.
pub fn registry(kind: BrokerKind) -> &'static dyn Broker {
    match kind {
        BrokerKind::Rabbitmq => &rabbitmq::RabbitMq,
        BrokerKind::Jetstream => &jetstream::JetStream,
        BrokerKind::Kafka => &kafka::Kafka,
    }
}

/// The names, program, ports and compose service of `kind`.
pub fn info(kind: BrokerKind) -> &'static Info {
    registry(kind).info()
}

/// The durable consumer (consumer group) that [`Broker::fetch_one`] reads
/// with, so that reads after a restart continue where the last one acked.
pub const PROBE_CONSUMER: &str = "brokerbench-probe";

/// The ports a local broker listens on, by what they are for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ports {
    /// The client protocol (AMQP, NATS or Kafka).
    pub client: u16,
    /// HTTP monitoring (nats-server `-m`).
    pub monitoring: Option<u16>,
    /// Erlang distribution (RabbitMQ).
    pub distribution: Option<u16>,
    /// The Erlang port mapper daemon that RabbitMQ registers with.
    pub epmd: Option<u16>,
    /// The KRaft controller listener (Kafka).
    pub controller: Option<u16>,
    /// The routes between the servers of a cluster (NATS).
    pub route: Option<u16>,
    /// The listener the nodes of a cluster replicate through, apart from
    /// the clients' (Kafka's inter-broker listener).
    pub internal: Option<u16>,
    /// Where clients are told to connect, when not the client port: the
    /// fault proxy's port in front of it (Kafka advertises it). The broker
    /// does not listen on it.
    pub advertised: Option<u16>,
    /// The address it listens on, when not loopback: its own in a network
    /// namespace ([`crate::env::netns`]).
    pub host: Option<std::net::Ipv4Addr>,
}

/// A port a broker needs besides its client port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRole {
    /// See [`Ports::monitoring`].
    Monitoring,
    /// See [`Ports::distribution`].
    Distribution,
    /// See [`Ports::epmd`].
    Epmd,
    /// See [`Ports::controller`].
    Controller,
    /// See [`Ports::route`].
    Route,
    /// See [`Ports::internal`].
    Internal,
}

impl Ports {
    /// A client port and one port per role, from `ports` in order.
    pub fn assign(client: u16, roles: &[PortRole], more: &[u16]) -> Self {
        let mut ports = Ports {
            client,
            ..Ports::default()
        };
        for (role, port) in roles.iter().zip(more) {
            *ports.slot(*role) = Some(*port);
        }
        ports
    }

    /// Where the port of `role` is kept.
    pub fn slot(&mut self, role: PortRole) -> &mut Option<u16> {
        match role {
            PortRole::Monitoring => &mut self.monitoring,
            PortRole::Distribution => &mut self.distribution,
            PortRole::Epmd => &mut self.epmd,
            PortRole::Controller => &mut self.controller,
            PortRole::Route => &mut self.route,
            PortRole::Internal => &mut self.internal,
        }
    }

    /// The port of `role`, if it has one.
    pub fn of(&self, role: PortRole) -> Option<u16> {
        match role {
            PortRole::Monitoring => self.monitoring,
            PortRole::Distribution => self.distribution,
            PortRole::Epmd => self.epmd,
            PortRole::Controller => self.controller,
            PortRole::Route => self.route,
            PortRole::Internal => self.internal,
        }
    }

    /// The address it listens on: loopback, or its own in a namespace.
    pub fn ip(&self) -> std::net::Ipv4Addr {
        self.host.unwrap_or(std::net::Ipv4Addr::LOCALHOST)
    }

    /// Every port it listens on, client port first.
    pub fn all(&self) -> Vec<u16> {
        std::iter::once(self.client)
            .chain(self.monitoring)
            .chain(self.distribution)
            .chain(self.epmd)
            .chain(self.controller)
            .chain(self.route)
            .chain(self.internal)
            .collect()
    }
}

/// How to start a broker as a local process.
pub struct Launch<'a> {
    /// The program found by [`Broker::identify`].
    pub program: &'a Path,
    /// Its data and log directory (also the working directory).
    pub dir: &'a Path,
    /// The loopback address to listen on.
    pub host: &'a str,
    /// The ports to listen on.
    pub ports: Ports,
    /// Settings for the whole server.
    pub server: ServerSettings,
    /// Its place in a cluster, if it is one node of several.
    pub cluster: Option<NodeOf<'a>>,
}

/// One node of a local cluster: which one, and where all of them listen.
#[derive(Clone, Copy, Debug)]
pub struct NodeOf<'a> {
    /// This node, counting from 0.
    pub index: usize,
    /// Every node's ports, this one's included, in node order.
    pub peers: &'a [Ports],
}

impl NodeOf<'_> {
    /// The ports this node shares with the first node (its own included,
    /// for the first).
    pub fn shared(&self, kind: BrokerKind) -> Vec<u16> {
        let first = self.peers[0];
        info(kind)
            .shared_ports
            .iter()
            .filter_map(|role| first.of(*role))
            .collect()
    }
}

/// What a local server is started with that holds for the whole server,
/// from the scenario (a client cannot ask for it per stream or topic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerSettings {
    /// Sync every write to disk before confirming it: JetStream's
    /// `sync_interval: always`. (Kafka's `flush.messages` is per topic, set
    /// by its driver; RabbitMQ needs nothing.)
    pub sync_always: bool,
    /// TLS and a user made for the run (`[security]`), which the local
    /// environment fills in.
    pub credentials: Option<std::sync::Arc<security::LocalCredentials>>,
}

impl ServerSettings {
    /// The server settings `plan` asks for, but the credentials, which the
    /// local environment makes.
    pub fn of(plan: &Plan) -> Self {
        ServerSettings {
            sync_always: plan.syncs_before_confirm(),
            credentials: None,
        }
    }
}

/// A process a broker needs running before it starts (RabbitMQ's epmd).
pub struct Helper {
    /// The command that runs it in the foreground.
    pub command: Command,
    /// It is up once this port accepts connections.
    pub port: u16,
}

/// The plain facts about one broker.
pub struct Info {
    /// The product, for people and for a recommendation: `RabbitMQ`.
    pub display_name: &'static str,
    /// The program looked up on `PATH`.
    pub program: &'static str,
    /// Where that program comes from.
    pub install: Install,
    /// How results name what ran: these around the version it reports.
    pub implementation: (&'static str, &'static str),
    /// Ports it needs besides the client port.
    pub extra_ports: &'static [PortRole],
    /// Ports each node of a cluster needs besides those.
    pub cluster_ports: &'static [PortRole],
    /// Ports the nodes of a cluster share: the first node's (RabbitMQ's
    /// epmd, which every node of a cluster registers with).
    pub shared_ports: &'static [PortRole],
    /// Whether the first node of a cluster must be ready before the others
    /// start, to join it (RabbitMQ); else all start together (a quorum of
    /// them is needed before any answers).
    pub cluster_joins_first: bool,
    /// How long a local start may take before it counts as failed.
    pub ready_deadline: Duration,
    /// The form of URL its client expects, in words with an example.
    pub url_form: &'static str,
    /// Its service in `docker-compose.yml`.
    pub compose_service: &'static str,
    /// The client port that service publishes on loopback.
    pub compose_port: u16,
}

/// Where a broker's program comes from, on Debian or Ubuntu.
pub enum Install {
    /// A Debian package.
    Apt(&'static str),
    /// A Go module's command, built by `go install` from the Go module proxy
    /// into the tools directory.
    Go {
        /// The module path of the command.
        module: &'static str,
        /// The release brokerbench is tested with.
        version: &'static str,
    },
    /// Only `scripts/install-brokers` installs it, for the reason given
    /// (several steps: jars from Maven Central and launchers).
    Script(&'static str),
}

/// Where `scripts/install-brokers` puts what it builds or downloads, unless
/// `BROKERBENCH_TOOLS` says otherwise; programs land in its `bin/`.
pub const TOOLS_DIR: &str = "~/.local/share/brokerbench";

/// [`TOOLS_DIR`]`/bin` on this machine: `$BROKERBENCH_TOOLS/bin`, else under
/// `$HOME`.
pub fn tools_bin() -> Option<PathBuf> {
    let dir = match std::env::var_os("BROKERBENCH_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&std::env::var_os("HOME")?).join(&TOOLS_DIR[2..]),
    };
    Some(dir.join("bin"))
}

impl Info {
    /// The exact command that installs the program.
    pub fn install_hint(&self) -> String {
        match self.install {
            Install::Apt(package) => {
                format!("sudo apt-get update && sudo apt-get install -y {package}")
            }
            Install::Go { module, version } => format!(
                "GOBIN={TOOLS_DIR}/bin go install {module}@{version} \
                 (or scripts/install-brokers), then put {TOOLS_DIR}/bin on PATH"
            ),
            Install::Script(what) => {
                format!("scripts/install-brokers ({what}), then put {TOOLS_DIR}/bin on PATH")
            }
        }
    }
}

/// One broker: what the rest of brokerbench may ask about it.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Its names, program, ports and compose service.
    fn info(&self) -> &'static Info;

    /// Given the program found on `PATH`: the program to execute and the
    /// implementation and version that will run, as results name it. By
    /// default, the program itself rather than a link to it (Kafka's
    /// launcher finds `kafka-storage` and the jars beside itself), and the
    /// version it prints for `--version`.
    async fn identify(&self, found: &Path) -> Result<(PathBuf, String)> {
        let program = found
            .canonicalize()
            .with_context(|| format!("resolving {}", found.display()))?;
        let version = version::version_flag(&program).await?;
        let (before, after) = self.info().implementation;
        Ok((program, format!("{before}{version}{after}")))
    }

    /// Readies `launch.dir` before each start: configuration files, and on
    /// the first start anything the data needs (Kafka formats its storage).
    async fn prepare(&self, _launch: &Launch<'_>) -> Result<()> {
        Ok(())
    }
    /// Once it listens, before it is asked whether it is ready: makes the
    /// users of a run with `[security] auth` that its configuration cannot
    /// hold without their secret (Kafka's SCRAM user). Tried again until
    /// it succeeds or the start's deadline passes.
    async fn admit_users(
        &self,
        _host: &str,
        _ports: &Ports,
        _server: &ServerSettings,
    ) -> Result<()> {
        Ok(())
    }
    /// The command that runs it in the foreground on `launch`'s ports and data.
    fn command(&self, launch: &Launch<'_>) -> Result<Command>;
    /// A helper process to start first, if it needs one.
    fn helper(&self, _launch: &Launch<'_>) -> Result<Option<Helper>> {
        Ok(None)
    }

    /// The URL its client uses for a broker on `host:port` (default account).
    fn local_url(&self, host: &str, port: u16) -> String;
    /// Of a cluster's nodes' logs (each node's text, in node order), the
    /// node that is the active controller now, if the broker has one that
    /// is not the leader of what the run uses (Kafka's KRaft quorum).
    fn active_controller(&self, _logs: &[String]) -> Option<usize> {
        None
    }

    /// The name the broker gives the node launched by `launch`, as it
    /// reports a leader (a server name, a node id).
    fn node_name(&self, launch: &Launch<'_>) -> String {
        format!("{}:{}", launch.host, launch.ports.client)
    }
    /// Whether `url` has the form its client expects ([`Info::url_form`]).
    fn accepts_url(&self, url: &str) -> bool;

    /// Connects a driver with the scenario's settings.
    async fn connect(
        &self,
        plan: &Plan,
        endpoint: &Endpoint,
        run_id: u64,
    ) -> Result<Box<dyn Driver>>;
    /// One readiness attempt: `Ok` once it answers its protocol's handshake
    /// (never a fixed sleep or an open TCP port).
    async fn handshake(&self, endpoint: &Endpoint) -> Result<()>;
    /// Publishes `payload` to the durable queue/stream/topic `name` and waits
    /// for the broker's confirmation; declares the topology first.
    async fn publish_durable(&self, endpoint: &Endpoint, name: &str, payload: &[u8]) -> Result<()>;
    /// Receives the next message of `name` for the durable consumer
    /// [`PROBE_CONSUMER`] and acknowledges it, waiting up to `wait`.
    async fn fetch_one(&self, endpoint: &Endpoint, name: &str, wait: Duration) -> Result<Vec<u8>>;
}

/// Connects to the broker at `endpoint` with the scenario's settings.
pub async fn connect(plan: &Plan, endpoint: &Endpoint, run_id: u64) -> Result<Box<dyn Driver>> {
    registry(endpoint.kind)
        .connect(plan, endpoint, run_id)
        .await
}

/// One readiness attempt against the broker at `endpoint`.
pub async fn handshake(endpoint: &Endpoint) -> Result<()> {
    registry(endpoint.kind).handshake(endpoint).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ports_are_assigned_by_role() {
        let ports = Ports::assign(
            5672,
            &[PortRole::Distribution, PortRole::Epmd],
            &[25672, 4369],
        );
        assert_eq!(ports.distribution, Some(25672));
        assert_eq!(ports.epmd, Some(4369));
        assert_eq!(ports.monitoring, None);
        assert_eq!(ports.all(), [5672, 25672, 4369]);
    }

    #[test]
    fn the_install_script_pins_the_nats_server_the_hints_name() {
        let script = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/install-brokers"
        ))
        .unwrap();
        assert!(
            script.contains(&format!("NATS_VERSION:-{NATS_SERVER_VERSION}}}")),
            "scripts/install-brokers and NATS_SERVER_VERSION disagree"
        );
    }

    #[test]
    fn every_broker_has_an_install_command_and_a_compose_service() {
        let compose =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
                .unwrap();
        for kind in crate::kind::ALL {
            assert!(info(kind).install_hint().contains("install"), "{kind}");
            assert!(
                compose.contains(&format!("\n  {}:\n", info(kind).compose_service)),
                "{kind}"
            );
        }
    }
}
