//! Where the brokers live.
//!
//! brokerbench measures brokers under conditions it controls, so by default it
//! starts each broker itself as a local child process ([`local`]): on free
//! loopback ports, with a fresh data directory, and with the operations a fault
//! timeline needs (graceful stop, kill -9, restart on the same port and data,
//! pause and resume). [`binaries`] finds the broker programs and the versions
//! that will actually run; [`probe`] speaks each broker's real protocol to tell
//! when it is ready and to push a message through it.

pub mod binaries;
pub mod compose;
pub mod local;
pub mod probe;

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The three brokers brokerbench compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// RabbitMQ, spoken to over AMQP 0-9-1 (lapin).
    Rabbitmq,
    /// NATS with JetStream (async-nats).
    Jetstream,
    /// A broker that speaks the Apache Kafka protocol (rdkafka); locally, tansu.
    Kafka,
}

impl BrokerKind {
    /// All brokers, in the order results list them.
    pub const ALL: [BrokerKind; 3] = [
        BrokerKind::Rabbitmq,
        BrokerKind::Jetstream,
        BrokerKind::Kafka,
    ];

    /// The name used on the command line, in scenario files and in results.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Rabbitmq => "rabbitmq",
            BrokerKind::Jetstream => "jetstream",
            BrokerKind::Kafka => "kafka",
        }
    }
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BrokerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rabbitmq" => Ok(BrokerKind::Rabbitmq),
            "jetstream" => Ok(BrokerKind::Jetstream),
            "kafka" => Ok(BrokerKind::Kafka),
            other => Err(format!(
                "unknown broker '{other}' (expected one of: rabbitmq, jetstream, kafka)"
            )),
        }
    }
}

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

/// Where a running broker can be reached, with the address each client wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Which broker this is.
    pub kind: BrokerKind,
    /// Loopback host the broker listens on.
    pub host: String,
    /// The client port (AMQP, NATS or Kafka protocol).
    pub port: u16,
}

impl Endpoint {
    /// The address in the form the broker's own client expects:
    /// an AMQP URI, a NATS URL, or a Kafka `bootstrap.servers` entry.
    pub fn url(&self) -> String {
        let Endpoint { host, port, .. } = self;
        match self.kind {
            BrokerKind::Rabbitmq => format!("amqp://guest:guest@{host}:{port}/%2f"),
            BrokerKind::Jetstream => format!("nats://{host}:{port}"),
            BrokerKind::Kafka => format!("{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_names_round_trip() {
        for kind in BrokerKind::ALL {
            assert_eq!(kind.as_str().parse::<BrokerKind>().unwrap(), kind);
        }
        let err = "kafak".parse::<BrokerKind>().unwrap_err();
        assert!(err.contains("kafak") && err.contains("jetstream"), "{err}");
    }

    #[test]
    fn endpoint_urls_suit_each_client() {
        let ep = |kind| Endpoint {
            kind,
            host: "127.0.0.1".into(),
            port: 4000,
        };
        assert_eq!(
            ep(BrokerKind::Rabbitmq).url(),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        assert_eq!(ep(BrokerKind::Jetstream).url(), "nats://127.0.0.1:4000");
        assert_eq!(ep(BrokerKind::Kafka).url(), "127.0.0.1:4000");
    }
}
