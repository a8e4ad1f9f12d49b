//! Where the brokers live.
//!
//! brokerbench measures brokers under conditions it controls, so by default it
//! starts each broker itself as a local child process ([`local`]): on free
//! loopback ports, with a fresh data directory, and with the operations a fault
//! timeline needs (graceful stop, kill -9, restart on the same port and data,
//! pause and resume). [`binaries`] finds the broker programs and the versions
//! that will actually run. What is particular to one broker (its command
//! line, its URL, its readiness handshake) comes from its module in
//! [`crate::broker`].

pub mod binaries;
pub(crate) mod compose;
pub(crate) mod external;
pub mod local;

use async_trait::async_trait;
use serde::Serialize;

use crate::broker::BrokerKind;
use crate::driver::Driver;
use crate::scenario::Plan;

/// What a fault timeline does to one broker, wherever it lives.
#[async_trait]
pub trait FaultTarget: Send {
    /// Crash it: no chance to flush or close connections.
    async fn kill(&mut self) -> anyhow::Result<()>;
    /// Start it again after a kill, on the same address and data; returns
    /// once it accepts clients (local) or its start command finished (compose).
    async fn start(&mut self) -> anyhow::Result<()>;
    /// Graceful stop, then start.
    async fn restart(&mut self) -> anyhow::Result<()>;
    /// Freeze it: connections stay open, nothing answers.
    async fn pause(&mut self) -> anyhow::Result<()>;
    /// Unfreeze it.
    async fn resume(&mut self) -> anyhow::Result<()>;
}

/// One operation of a fault, as environments apply it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// A crash: no chance to flush or close connections.
    Kill,
    /// Start again after a kill, on the same address and data.
    Start,
    /// Graceful stop, then start.
    Restart,
    /// Freeze: connections stay open, nothing answers.
    Pause,
    /// Unfreeze.
    Resume,
}

impl Operation {
    /// All operations.
    pub const ALL: [Operation; 5] = [
        Operation::Kill,
        Operation::Start,
        Operation::Restart,
        Operation::Pause,
        Operation::Resume,
    ];

    /// The name used in targets files.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Kill => "kill",
            Operation::Start => "start",
            Operation::Restart => "restart",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
        }
    }

    /// The operation named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        Operation::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

/// Where the brokers of a run come from: local processes, docker compose
/// services, or brokers the user runs.
#[async_trait]
pub trait Environment: Send {
    /// The name results give it: `local`, `compose`, `external`.
    fn name(&self) -> &'static str;
    /// The broker `kind`, started (local, compose) or reached (external).
    async fn place(&mut self, kind: BrokerKind) -> anyhow::Result<Box<dyn Placed>>;
}

/// A broker an environment provides for one measurement: where it is, what
/// it is, how faults reach it, and how to let it go.
#[async_trait]
pub trait Placed: FaultTarget + Sync {
    /// Where clients reach it.
    fn endpoint(&self) -> &Endpoint;
    /// Implementation and version, e.g. `RabbitMQ 3.10.8` or `tansu 0.6.0`.
    fn implementation(&self) -> &str;
    /// The product this implementation stands in for, when it is not that
    /// product (local tansu for Apache Kafka).
    fn stand_in_for(&self) -> Option<&str> {
        None
    }
    /// A driver connected to it with the scenario's settings: the broker's
    /// own client, through its module.
    async fn connect(&self, plan: &Plan, run_id: u64) -> anyhow::Result<Box<dyn Driver>> {
        crate::broker::connect(plan, self.endpoint(), run_id).await
    }
    /// Stops what the environment started (local: the process; compose: the
    /// service; external: nothing).
    async fn shutdown(self: Box<Self>) -> anyhow::Result<()>;
}

/// Where a running broker can be reached, with the address each client wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Which broker this is.
    pub kind: BrokerKind,
    /// An AMQP URI, a NATS URL, or a Kafka `bootstrap.servers` list.
    url: String,
}

impl Endpoint {
    /// A broker listening on `host:port`, reached with its default account.
    pub fn local(kind: BrokerKind, host: &str, port: u16) -> Self {
        Endpoint {
            kind,
            url: kind.broker().local_url(host, port),
        }
    }

    /// A broker at a URL the user gave, checked for the form its client expects.
    pub fn new(kind: BrokerKind, url: &str) -> Result<Self, String> {
        let url = url.trim();
        if !kind.broker().accepts_url(url) {
            return Err(format!("'{url}' is not {}", kind.info().url_form));
        }
        Ok(Endpoint {
            kind,
            url: url.to_string(),
        })
    }

    /// The address in the form the broker's own client expects:
    /// an AMQP URI, a NATS URL, or a Kafka `bootstrap.servers` entry.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The address with any password replaced by `***`, for output and results.
    pub fn shown(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return self.url.clone();
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                let hidden = if userinfo.contains(':') { ":***" } else { "" };
                format!("{scheme}://{user}{hidden}@{host}{path}")
            }
            None => self.url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_urls_are_checked_and_passwords_never_shown() {
        let kind = |name: &str| name.parse::<BrokerKind>().unwrap();
        let amqp = Endpoint::new(kind("rabbitmq"), "amqp://app:s3cret@mq1:5672/orders").unwrap();
        assert_eq!(amqp.url(), "amqp://app:s3cret@mq1:5672/orders");
        assert_eq!(amqp.shown(), "amqp://app:***@mq1:5672/orders");
        let nats = Endpoint::new(kind("jetstream"), "nats://token@n1:4222").unwrap();
        assert_eq!(nats.shown(), "nats://token@n1:4222");
        let kafka = Endpoint::new(kind("kafka"), "k1:9092, k2:9092").unwrap();
        assert_eq!(kafka.shown(), "k1:9092, k2:9092");
        for (name, bad) in [
            ("rabbitmq", "nats://mq1:5672"),
            ("jetstream", "n1:4222"),
            ("kafka", "kafka://k1:9092"),
            ("kafka", "k1"),
        ] {
            let err = Endpoint::new(kind(name), bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
