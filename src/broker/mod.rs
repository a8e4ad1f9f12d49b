//! Everything brokerbench knows about each broker, one module per broker.
//!
//! A broker module holds its client configuration, connection, topology and
//! [`Driver`], its readiness probe, how its local process is launched, its
//! compose service, the form of its URL and its typed settings. The rest of
//! the program asks a broker through the [`Broker`] trait, and [`registry`]
//! is the one place that maps a [`BrokerKind`] to its module: adding a broker
//! (Redis Streams, Pulsar) means a new module and one line there.

mod endpoint;
mod jetstream;
mod kafka;
mod rabbitmq;
mod version;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use tokio::process::Command;

use crate::driver::Driver;
use crate::kind::BrokerKind;

use crate::scenario::Plan;
pub use endpoint::Endpoint;

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ports {
    /// The client protocol (AMQP, NATS or Kafka).
    pub client: u16,
    /// HTTP monitoring (nats-server `-m`).
    pub monitoring: Option<u16>,
    /// Erlang distribution (RabbitMQ).
    pub distribution: Option<u16>,
    /// The Erlang port mapper daemon that RabbitMQ registers with.
    pub epmd: Option<u16>,
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
}

impl Ports {
    /// A client port and one port per role, from `ports` in order.
    pub fn assign(client: u16, roles: &[PortRole], more: &[u16]) -> Self {
        let mut ports = Ports {
            client,
            ..Ports::default()
        };
        for (role, port) in roles.iter().zip(more) {
            let slot = match role {
                PortRole::Monitoring => &mut ports.monitoring,
                PortRole::Distribution => &mut ports.distribution,
                PortRole::Epmd => &mut ports.epmd,
            };
            *slot = Some(*port);
        }
        ports
    }

    /// Every port, client port first.
    pub fn all(&self) -> Vec<u16> {
        std::iter::once(self.client)
            .chain(self.monitoring)
            .chain(self.distribution)
            .chain(self.epmd)
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
    /// The product, for people: `RabbitMQ`.
    pub display_name: &'static str,
    /// The product a recommendation names.
    pub product: &'static str,
    /// The program looked up on `PATH`.
    pub program: &'static str,
    /// Where that program comes from.
    pub install: Install,
    /// How results name what ran: these around the version it reports.
    pub implementation: (&'static str, &'static str),
    /// The product the local program stands in for, when it is not that
    /// product (tansu for Apache Kafka): its figures never score the product.
    pub local_stand_in_for: Option<&'static str>,
    /// Ports it needs besides the client port.
    pub extra_ports: &'static [PortRole],
    /// How long a local start may take before it counts as failed.
    pub ready_deadline: Duration,
    /// The form of URL its client expects, in words with an example.
    pub url_form: &'static str,
    /// Its service in `docker-compose.yml`.
    pub compose_service: &'static str,
    /// The client port that service publishes on loopback.
    pub compose_port: u16,
}

/// Where a broker's program comes from on Debian or Ubuntu.
pub enum Install {
    /// A Debian package.
    Apt(&'static str),
    /// A crate, with its version and the features it needs.
    Cargo {
        /// The crate.
        krate: &'static str,
        /// The version brokerbench is tested with.
        version: &'static str,
        /// Features to enable.
        features: &'static str,
    },
}

impl Info {
    /// The exact command that installs the program.
    pub fn install_hint(&self) -> String {
        match self.install {
            Install::Apt(package) => {
                format!("sudo apt-get update && sudo apt-get install -y {package}")
            }
            Install::Cargo {
                krate,
                version,
                features,
            } => {
                format!("cargo install --locked {krate} --version {version} --features {features}")
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
    /// default, the version the program prints for `--version`.
    async fn identify(&self, found: &Path) -> Result<(PathBuf, String)> {
        let version = version::version_flag(found).await?;
        let (before, after) = self.info().implementation;
        Ok((found.to_path_buf(), format!("{before}{version}{after}")))
    }

    /// The command that runs it in the foreground on `launch`'s ports and data.
    fn command(&self, launch: &Launch<'_>) -> Result<Command>;
    /// A helper process to start first, if it needs one.
    fn helper(&self, _ports: &Ports) -> Result<Option<Helper>> {
        Ok(None)
    }

    /// The URL its client uses for a broker on `host:port` (default account).
    fn local_url(&self, host: &str, port: u16) -> String;
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
