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
pub mod external;
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

    /// The product's name, for people.
    pub fn display_name(self) -> &'static str {
        match self {
            BrokerKind::Rabbitmq => "RabbitMQ",
            BrokerKind::Jetstream => "NATS JetStream",
            BrokerKind::Kafka => "Kafka-protocol broker",
        }
    }

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

/// A broker an environment provides for one measurement: where it is, what
/// it is, how faults reach it, and how to let it go.
#[async_trait]
pub trait Placed: FaultTarget {
    /// Where clients reach it.
    fn endpoint(&self) -> &Endpoint;
    /// Implementation and version, e.g. `RabbitMQ 3.10.8` or `tansu 0.6.0`.
    fn implementation(&self) -> &str;
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
    /// A broker listening on `host:port`, with RabbitMQ's default account.
    pub fn local(kind: BrokerKind, host: &str, port: u16) -> Self {
        let url = match kind {
            BrokerKind::Rabbitmq => format!("amqp://guest:guest@{host}:{port}/%2f"),
            BrokerKind::Jetstream => format!("nats://{host}:{port}"),
            BrokerKind::Kafka => format!("{host}:{port}"),
        };
        Endpoint { kind, url }
    }

    /// A broker at a URL the user gave, checked for the form its client expects.
    pub fn new(kind: BrokerKind, url: &str) -> Result<Self, String> {
        let url = url.trim();
        let ok = match kind {
            BrokerKind::Rabbitmq => url.starts_with("amqp://") || url.starts_with("amqps://"),
            BrokerKind::Jetstream => ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| url.starts_with(scheme)),
            BrokerKind::Kafka => {
                !url.is_empty()
                    && url.split(',').all(|server| {
                        server.trim().rsplit_once(':').is_some_and(|(host, port)| {
                            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
                        })
                    })
            }
        };
        if !ok {
            let expected = match kind {
                BrokerKind::Rabbitmq => "an AMQP URI such as amqp://user:password@host:5672/%2f",
                BrokerKind::Jetstream => "a NATS URL such as nats://host:4222",
                BrokerKind::Kafka => "bootstrap servers such as host1:9092,host2:9092",
            };
            return Err(format!("'{url}' is not {expected}"));
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
    fn broker_names_round_trip() {
        for kind in BrokerKind::ALL {
            assert_eq!(kind.as_str().parse::<BrokerKind>().unwrap(), kind);
        }
        let err = "kafak".parse::<BrokerKind>().unwrap_err();
        assert!(err.contains("kafak") && err.contains("jetstream"), "{err}");
    }

    #[test]
    fn endpoint_urls_suit_each_client() {
        let ep = |kind| Endpoint::local(kind, "127.0.0.1", 4000);
        assert_eq!(
            ep(BrokerKind::Rabbitmq).url(),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        assert_eq!(ep(BrokerKind::Jetstream).url(), "nats://127.0.0.1:4000");
        assert_eq!(ep(BrokerKind::Kafka).url(), "127.0.0.1:4000");
    }

    #[test]
    fn user_urls_are_checked_and_passwords_never_shown() {
        let amqp =
            Endpoint::new(BrokerKind::Rabbitmq, "amqp://app:s3cret@mq1:5672/orders").unwrap();
        assert_eq!(amqp.url(), "amqp://app:s3cret@mq1:5672/orders");
        assert_eq!(amqp.shown(), "amqp://app:***@mq1:5672/orders");
        let nats = Endpoint::new(BrokerKind::Jetstream, "nats://token@n1:4222").unwrap();
        assert_eq!(nats.shown(), "nats://token@n1:4222");
        let kafka = Endpoint::new(BrokerKind::Kafka, "k1:9092, k2:9092").unwrap();
        assert_eq!(kafka.shown(), "k1:9092, k2:9092");
        for (kind, bad) in [
            (BrokerKind::Rabbitmq, "nats://mq1:5672"),
            (BrokerKind::Jetstream, "n1:4222"),
            (BrokerKind::Kafka, "kafka://k1:9092"),
            (BrokerKind::Kafka, "k1"),
        ] {
            let err = Endpoint::new(kind, bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
