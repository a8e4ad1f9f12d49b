//! One trait in front of the three brokers' client libraries.
//!
//! The run engine speaks only [`Driver`], [`Producer`] and [`Consumer`]; the
//! implementations live in each broker's module ([`crate::broker`]) and use each broker's recommended client and its durable,
//! confirmed path: RabbitMQ publisher confirms and manual acks (lapin),
//! JetStream publish acks and durable pull consumers with explicit acks
//! (async-nats), Kafka delivery reports and committed offsets (rdkafka).
//! Connections are reused for the whole run: RabbitMQ one; JetStream one for
//! the producers and one per consumer group, as separate services would
//! have (on one, a group's pulls and acks waited behind the publishes);
//! Kafka one producer client, plus one consumer client per group, as its
//! group protocol needs.
//! Every network call has a timeout. A failed publish is data, not a crash:
//! it is counted under an [`ErrorKind`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use crate::event::{Envelope, Outgoing};
use crate::scenario::ConsumerGroup;

/// How long one network call (connect, declare, ack, a readiness probe) may
/// take; the one call timeout of every driver and probe.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a publish may wait for the broker's confirmation before it is
/// counted as unknown.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a publish, delivery or acknowledgement failed; counted, never by string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    /// A consumer in another language failed: it exited, wrote what is not
    /// a receipt, or settled a message otherwise than the group's ledger
    /// decided (docs/cross-language.md).
    Agent,
}

/// Error counts by kind.
pub type ErrorCounts = BTreeMap<ErrorKind, u64>;

/// A failed publish: counted under its kind, with the broker's or client's
/// own words when there are any (kept once per kind, so the user sees why).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What kind of failure, for counting.
    pub kind: ErrorKind,
    /// What the broker or client said.
    pub why: Option<String>,
}

impl ErrorKind {
    /// This kind of failure, with what was said.
    pub fn because(self, why: impl std::fmt::Display) -> Failure {
        Failure {
            kind: self,
            why: Some(why.to_string()),
        }
    }
}

impl From<ErrorKind> for Failure {
    fn from(kind: ErrorKind) -> Self {
        Failure { kind, why: None }
    }
}

/// The run's name for one send, handed back with the broker's answer to it.
pub type Token = u64;

/// The broker's answer to one send: confirmed, or why not.
pub type Answer = (Token, Result<(), Failure>);

/// What the consumer did with a delivery, after processing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Processed (or skipped as a duplicate): acknowledge it (RabbitMQ ack,
    /// JetStream ack, Kafka offset store).
    Ack,
    /// Processing failed; `attempt` counts the group's failed attempts of
    /// this message, this one included, from 1. The driver hands it back for
    /// another delivery after the retry delay, or dead-letters it, the way
    /// its broker's users are told to (`docs/dead-letters.md`).
    Failed {
        /// Failed attempts so far, this one included.
        attempt: u32,
    },
    /// The typed decoder refused the event (docs/cross-language.md, schema
    /// evolution): never retried. Dead-lettered at once where the group has
    /// a dead-letter destination (RabbitMQ reject without requeue, JetStream
    /// `+TERM`, Kafka's dead-letter topic), dropped otherwise.
    Refuse,
}

/// Settles a delivery: acknowledges it, or hands it back as failed.
pub type Settler = Box<dyn FnOnce(Settle) -> BoxFuture<'static, Result<(), ErrorKind>> + Send>;

/// One received message.
pub struct Incoming {
    /// The raw payload (shared with the client's buffer where it allows).
    pub payload: Bytes,
    /// The broker's own redelivery flag.
    pub redelivered: bool,
    /// Acknowledge it, or hand it back as failed.
    pub settle: Settler,
    /// From a consumer that decoded, timed and settled the message itself
    /// (an agent in another language): what it read and did. `None`: the
    /// payload is to be decoded here, and the message arrived now.
    pub receipt: Option<Receipt>,
}

/// What a consumer in another process read of a delivery, and did with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The envelope it decoded; `None`: another run's message, or one it
    /// could not decode (`decode_failed`).
    pub envelope: Option<Envelope>,
    /// Its typed decoder refused the event.
    pub decode_failed: bool,
    /// When it received the message, ns since the run's epoch.
    pub received_ns: u64,
    /// How it settled the message.
    pub settled: Settle,
    /// It skipped the message as processed before (idempotent on the order id).
    pub skipped: bool,
}

/// What a group in another language needs to consume: the broker's address
/// and, by broker, the names and settings of what it reads (declared by
/// [`Driver::agent_source`]), as docs/cross-language.md gives them.
#[derive(Clone, Debug)]
pub struct AgentSource {
    pub broker: crate::kind::BrokerKind,
    pub url: String,
    pub source: serde_json::Value,
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

    /// Declares what an agent in another language consumes for `group`
    /// (the durable consumer, queue or consumer group), without consuming.
    async fn agent_source(&self, group: &ConsumerGroup) -> Result<AgentSource> {
        anyhow::bail!(
            "group {}: consumers in other languages are not supported on this broker yet",
            group.group
        )
    }

    /// A reader of `group`'s dead-letter destination, for a group with
    /// failures: each delivery is one dead letter, its payload the original
    /// message. Ready when this returns.
    async fn dead_letters(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>>;

    /// The durability settings in force, for the results.
    fn settings(&self) -> Settings;

    /// How many messages the broker still holds for `group` (ready and
    /// unacknowledged), asked after the group's consumer has closed: what
    /// was confirmed and not delivered, but not lost. For a group with
    /// failures, the dead letters not yet read from its dead-letter
    /// destination count as well.
    async fn backlog(&self, group: &ConsumerGroup) -> Result<u64>;

    /// Whether [`Driver::backlog`] sees every dead letter the broker still
    /// holds. RabbitMQ's quorum queues keep at-least-once dead letters that
    /// are on their way to the dead-letter queue where AMQP cannot count them
    /// (after a crash for `dead_letter_worker_publisher_confirm_timeout`,
    /// 3 minutes in 3.10): poison messages missing there are unverified,
    /// not lost.
    fn sees_dead_letters_in_flight(&self) -> bool {
        true
    }

    /// Publish only (no consumer group): how many messages the run's fresh
    /// destination holds (RabbitMQ's publish-only queue, the JetStream
    /// stream, the Kafka topic), asked once the producers are done. Fewer
    /// than were confirmed means confirmed messages are gone.
    async fn stored(&self) -> Result<u64>;

    /// Deletes what [`Driver::setup`] made (queues, streams, topics) with the
    /// messages in them, once the run's account is taken. A broker left
    /// holding a run's messages writes them to disk and keeps them, at the
    /// cost of whatever it serves next; RabbitMQ's PerfTest and the
    /// reference clients delete theirs too. `run --keep-data` leaves them.
    async fn teardown(&self) -> Result<()>;

    /// Closes the connection.
    async fn close(&self);

    /// On a cluster: who leads what the run uses, as the broker reports it
    /// now. `None` where the broker cannot say (a single node).
    async fn leadership(&self) -> Result<Option<Leadership>> {
        Ok(None)
    }
}

/// A Kafka partition's leader while it has none.
pub const NO_LEADER: &str = "none";

/// Who leads what a run uses on a cluster, as the broker reports it: the
/// queue's leader (RabbitMQ), the stream's (JetStream), the partitions'
/// (Kafka). Nodes go by the names the broker gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leadership {
    /// The node that leads it (for Kafka, the one leading the most
    /// partitions); `None` while none does.
    pub leader: Option<String>,
    /// The nodes whose copy is caught up, the leader's included
    /// (JetStream's current replicas, Kafka's in-sync replicas); for a
    /// RabbitMQ quorum queue, its online members (the management API tells
    /// no more).
    pub in_sync: Vec<String>,
    /// Kafka: each partition's leader ([`NO_LEADER`] while it has none).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub partitions: std::collections::BTreeMap<i32, String>,
    /// Kafka in combined mode: the active controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
}

/// Publishes messages; the broker's answers come back in one stream, each
/// under the token its send was given, so that no send costs a future, a
/// timer or a channel of its own. Timeouts are the caller's: it knows when
/// each send went out.
#[async_trait]
pub trait Producer: Send {
    /// Sends one message, in order after the ones before it; the answer
    /// comes from [`Producer::poll_answer`] under `token`. An error means it
    /// was not sent, and no answer will come.
    async fn send(&mut self, token: Token, message: Outgoing) -> Result<(), Failure>;

    /// The next answer to a message sent: confirmed or refused. Pending
    /// while none is in (and forever while nothing is outstanding).
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer>;

    /// How long a send may wait for its answer before the caller counts a
    /// timeout; `None` when the client library times sends out itself and
    /// answers with the failure (librdkafka's `message.timeout.ms`).
    fn confirm_timeout(&self) -> Option<Duration> {
        Some(CONFIRM_TIMEOUT)
    }

    /// An answer already in, without waiting.
    fn ready(&mut self) -> Option<Answer> {
        match self.poll_answer(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(answer) => Some(answer),
            Poll::Pending => None,
        }
    }
}

/// Answers still to come as futures, one per send, each resolving to its
/// token's answer: for client libraries whose confirmation is a future
/// (lapin's `PublisherConfirm`, rdkafka's `DeliveryFuture`).
pub(crate) struct Awaited<F> {
    futures: FuturesUnordered<Tagged<F>>,
}

impl<F: Future<Output = Result<(), Failure>> + Unpin> Awaited<F> {
    pub(crate) fn new() -> Self {
        Awaited {
            futures: FuturesUnordered::new(),
        }
    }

    /// Waits for `confirmation`, the answer to `token`.
    pub(crate) fn push(&mut self, token: Token, confirmation: F) {
        self.futures.push(Tagged {
            token,
            confirmation,
        });
    }

    /// The next answer in; pending while there is none.
    pub(crate) fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.futures.poll_next_unpin(cx) {
            Poll::Ready(Some(answer)) => Poll::Ready(answer),
            // Empty: the caller polls again after its next send.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// A confirmation future with the token of its send.
struct Tagged<F> {
    token: Token,
    confirmation: F,
}

impl<F: Future<Output = Result<(), Failure>> + Unpin> Future for Tagged<F> {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let token = self.token;
        Pin::new(&mut self.confirmation)
            .poll(cx)
            .map(|result| (token, result))
    }
}

/// A consumer in another process, as it stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentState {
    /// The client library it consumes with, e.g. `aio-pika`.
    pub client: String,
    /// Its CPU time so far, user and system.
    pub cpu: Option<Duration>,
    /// Why it stopped before it was told to, with what it said.
    pub failure: Option<String>,
}

/// Receives messages of one consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// The next delivery; `None` when the subscription ended for good.
    /// Cancel-safe: the run's consumer loop drops this future whenever
    /// something else is ready first, and a delivery must not be lost then.
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>>;

    /// For a consumer in another process (an agent): how it stands.
    fn agent(&self) -> Option<AgentState> {
        None
    }

    /// Leaves the group cleanly: what was received but not acknowledged goes
    /// back to the broker for redelivery (RabbitMQ: channel close; Kafka:
    /// the processed offsets are committed and the group rebalances).
    async fn close(self: Box<Self>) {}
}

/// The durability and delivery settings a driver used: each driver fills a
/// typed struct of its own, serialized as one JSON object in the results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Settings(BTreeMap<String, serde_json::Value>);

impl Settings {
    /// The settings in `typed`, a struct that serializes to an object.
    pub fn of<T: Serialize>(typed: &T) -> Self {
        match serde_json::to_value(typed) {
            Ok(serde_json::Value::Object(map)) => Settings(map.into_iter().collect()),
            other => panic!("settings must serialize to an object, got {other:?}"),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The wait before reconnection attempt `attempt` (0-based): 1 s, 2 s, 4 s,
/// ... up to `max`, each shortened by up to 20% at random so that clients
/// cut off together do not come back together.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let doubled = Duration::from_secs(1).saturating_mul(1 << attempt.min(20));
    doubled.min(max).mul_f64(1.0 - 0.2 * rand::random::<f64>())
}

/// The backoff policy in words, for the results.
pub fn backoff_description(recovery: &crate::scenario::Recovery) -> String {
    format!(
        "reconnect after 1 s, doubling to {}, 20% jitter; give up after {}",
        humantime::format_duration(recovery.backoff_max),
        humantime::format_duration(recovery.give_up)
    )
}

/// Runs `fut` with [`CALL_TIMEOUT`], naming `what` when it fails.
pub(crate) async fn timed<T, E: Into<anyhow::Error>>(
    what: &str,
    fut: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    within(CALL_TIMEOUT, what, fut).await
}

/// Runs `fut` with a deadline of `limit`, naming `what` when it fails.
pub(crate) async fn within<T, E: Into<anyhow::Error>>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    use anyhow::Context;
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(Into::into).with_context(|| what.to_string()),
        Err(_) => anyhow::bail!("{what}: no answer within {limit:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_the_cap_with_jitter() {
        let max = Duration::from_secs(8);
        for (attempt, full) in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 8.0), (40, 8.0)] {
            for _ in 0..50 {
                let wait = backoff(attempt, max).as_secs_f64();
                assert!(
                    wait <= full && wait >= full * 0.8,
                    "attempt {attempt}: {wait}"
                );
            }
        }
        let waits: Vec<Duration> = (0..20).map(|_| backoff(2, max)).collect();
        assert!(
            waits.iter().any(|w| *w != waits[0]),
            "jitter varies the wait"
        );
    }
}
