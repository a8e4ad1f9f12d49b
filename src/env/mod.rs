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
pub mod cluster;
pub(crate) mod compose;
pub(crate) mod credentials;
pub(crate) mod external;
pub mod local;
pub mod nats_trust;
pub mod netns;
pub mod pki;
pub mod proxy;

use async_trait::async_trait;

use crate::broker::Endpoint;
use crate::driver::Driver;
use crate::kind::BrokerKind;
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

    /// The names of a cluster's nodes in node order, as the broker names
    /// them when it reports a leader; empty for a single broker.
    fn node_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// The name of the node that is the active controller, where the broker
    /// has one apart from its leaders (Kafka's KRaft quorum) and says so.
    fn active_controller(&self) -> Option<String> {
        None
    }
    /// Node `index` (from 0) of a cluster, to hit alone; `None` for a
    /// single broker.
    fn node(&mut self, _index: usize) -> Option<&mut dyn FaultTarget> {
        None
    }
    /// Cuts node `index` (from 0) of a cluster off from the others (a
    /// partition); the clients still reach it.
    fn isolate(&mut self, _index: usize) -> anyhow::Result<()> {
        anyhow::bail!("a partition needs a local cluster whose nodes run in network namespaces")
    }
    /// Ends a partition.
    fn heal(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The fault proxy every client connection goes through, when the
    /// scenario has network faults.
    fn proxy(&self) -> Option<&proxy::FaultProxy> {
        None
    }
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
    /// Implementation and version, e.g. `RabbitMQ 3.10.8` or `Apache Kafka 4.4.0`.
    fn implementation(&self) -> &str;
    /// The product this implementation stands in for, when it is not that
    /// product (a Kafka-protocol broker a targets file marks `stand_in`).
    fn stand_in_for(&self) -> Option<&str> {
        None
    }
    /// Where the broker itself listens, when clients reach it through the
    /// fault proxy.
    fn behind_proxy(&self) -> Option<&Endpoint> {
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
