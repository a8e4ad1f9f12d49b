//! One trait in front of the three brokers' client libraries.
//!
//! The run engine speaks only [`Driver`], [`Producer`] and [`Consumer`]; the
//! implementations use each broker's recommended client and its durable,
//! confirmed path: RabbitMQ publisher confirms and manual acks (lapin),
//! JetStream publish acks and durable pull consumers with explicit acks
//! (async-nats), Kafka delivery reports and committed offsets (rdkafka).
//! One connection is reused per broker for the whole run (Kafka: one producer
//! client, plus one consumer client per group, as its group protocol needs).
//! Every network call has a timeout. A failed publish is data, not a crash:
//! it is counted under an [`ErrorKind`].

pub mod jetstream;
pub mod kafka;
pub mod rabbitmq;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::env::{BrokerKind, Endpoint};
use crate::event::Outgoing;
use crate::scenario::{ConsumerGroup, Plan};

/// How long one network call (connect, declare, ack) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a publish may wait for the broker's confirmation before it is
/// counted as unknown.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a publish, delivery or acknowledgement failed; counted, never by string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No answer within the timeout.
    Timeout,
    /// The broker answered no (AMQP nack, JetStream error reply, Kafka error).
    Refused,
    /// The connection or channel was closed or broken.
    Connection,
    /// The client library's queue was full or the send could not be made.
    Send,
    /// Acknowledging a delivery failed.
    Ack,
    /// Receiving failed.
    Receive,
}

/// Error counts by kind.
pub type ErrorCounts = BTreeMap<ErrorKind, u64>;

/// The outcome of a publish: resolves when the broker confirms or refuses.
pub type Confirmation = BoxFuture<'static, Result<(), ErrorKind>>;

/// Acknowledges a delivery, after processing.
pub type Acker = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), ErrorKind>> + Send>;

/// One received message.
pub struct Incoming {
    /// The raw payload.
    pub payload: Vec<u8>,
    /// The broker's own redelivery flag.
    pub redelivered: bool,
    /// Acknowledge (RabbitMQ ack, JetStream ack, Kafka offset store).
    pub ack: Acker,
}

/// A connected broker.
#[async_trait]
pub trait Driver: Send + Sync {
    /// Declares a fresh topology for `plan`: exchange and queues, stream and
    /// durable consumers, or topic. Existing ones from earlier runs are removed.
    async fn setup(&self) -> Result<()>;

    /// A publisher over the shared connection.
    async fn producer(&self, id: u32) -> Result<Box<dyn Producer>>;

    /// A consumer for `group`, subscribed and ready when this returns.
    async fn consumer(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>>;

    /// The durability settings in force, for the results.
    fn settings(&self) -> BTreeMap<String, serde_json::Value>;

    /// Closes the connection.
    async fn close(&self);
}

/// Publishes messages, each with its own confirmation.
#[async_trait]
pub trait Producer: Send {
    /// Sends one message in order and returns its pending confirmation.
    async fn send(&mut self, message: Outgoing) -> Result<Confirmation, ErrorKind>;
}

/// Receives messages of one consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; `None` when the subscription ended for good.
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>>;

    /// Leaves the group cleanly: what was received but not acknowledged goes
    /// back to the broker for redelivery (RabbitMQ: channel close; Kafka:
    /// the processed offsets are committed and the group rebalances).
    async fn close(self: Box<Self>) {}
}

/// Connects to the broker at `endpoint` with the scenario's settings.
pub async fn connect(plan: &Plan, endpoint: &Endpoint, run_id: u64) -> Result<Box<dyn Driver>> {
    Ok(match endpoint.kind {
        BrokerKind::Rabbitmq => Box::new(rabbitmq::RabbitMq::connect(plan, endpoint).await?),
        BrokerKind::Jetstream => Box::new(jetstream::JetStream::connect(plan, endpoint).await?),
        BrokerKind::Kafka => Box::new(kafka::Kafka::connect(plan, endpoint, run_id).await?),
    })
}

/// Runs `fut` with [`CALL_TIMEOUT`], naming `what` when it fails.
pub(crate) async fn timed<T, E: Into<anyhow::Error>>(
    what: &str,
    fut: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    use anyhow::Context;
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(result) => result.map_err(Into::into).with_context(|| what.to_string()),
        Err(_) => anyhow::bail!("{what}: no answer within {CALL_TIMEOUT:?}"),
    }
}

/// Waits for a confirmation with [`CONFIRM_TIMEOUT`].
pub(crate) async fn confirm_within<T>(
    fut: impl Future<Output = Result<T, ErrorKind>>,
) -> Result<T, ErrorKind> {
    tokio::time::timeout(CONFIRM_TIMEOUT, fut)
        .await
        .unwrap_or(Err(ErrorKind::Timeout))
}
