//! RabbitMQ through lapin: a topic exchange (or a direct one, or the default
//! exchange straight to the one queue: `[rabbitmq] exchange`), one durable
//! queue per consumer group bound to `events.order.created.v1`, publisher
//! confirms with many in flight, manual acks after processing, and a
//! prefetch limit.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Serialize;

use crate::broker::Endpoint;
use crate::driver::{
    timed, Answer, Awaited, Consumer, Driver, ErrorKind, Failure, Incoming, Producer, Settings,
    Settle, Settler, Token,
};
use crate::event::Outgoing;
use crate::scenario::{
    ConsumerGroup, DeadLetter, DeadLetterStrategy, Exchange, Plan, QueueType, RabbitmqSettings,
    Recovery, EVENT_TYPE,
};

/// The events exchange to declare, and its kind: one name per kind, as an
/// exchange cannot change kind once declared. None for the default
/// exchange, which is always there and which nothing binds to.
fn events_exchange(exchange: Exchange) -> Option<(&'static str, ExchangeKind)> {
    match exchange {
        Exchange::Topic => Some(("brokerbench.events", ExchangeKind::Topic)),
        Exchange::Direct => Some(("brokerbench.events.direct", ExchangeKind::Direct)),
        Exchange::Default => None,
    }
}

/// The dead-letter exchange: direct, each group's dead letters routed by the
/// group's name to its own dead-letter queue.
const DEAD_LETTER_EXCHANGE: &str = "brokerbench.dead-letters";

/// The durability and delivery settings a RabbitMQ run used, for the results.
#[derive(Serialize)]
struct Applied {
    queue_type: QueueType,
    exchange: Exchange,
    durable_queues: bool,
    persistent_messages: bool,
    publisher_confirms: bool,
    consumer_ack: &'static str,
    prefetch: u16,
    replicas: u32,
    reconnect: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_lettering: Option<String>,
}

/// The queue a consumer group reads.
/// Publish only: the queue that keeps what is published.
pub(super) const PUBLISH_ONLY_QUEUE: &str = "brokerbench.publish-only";

pub(super) fn queue_name(group: &str) -> String {
    format!("brokerbench.{group}")
}

/// The queue a consumer group's dead letters go to.
pub(super) fn dead_letter_queue(group: &str) -> String {
    format!("brokerbench.{group}.dlq")
}

/// A string argument: AMQP long strings (lapin's short strings have no wire type).
fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// RabbitMQ for one run: one AMQP connection shared by every producer and
/// consumer, replaced by a new one when it breaks.
pub(super) struct RabbitMqDriver {
    session: Arc<Session>,
}

/// The run's connection and how to make it again.
///
/// We reconnect ourselves rather than with lapin's automatic recovery, which
/// after a kill -9 now and then never completed (about 1 run in 5 here). The
/// first producer or consumer to see the connection fail reconnects with
/// [`crate::driver::backoff`] (1 s, 2 s, 4 s, ... capped, with jitter), declares the
/// exchange, queues and bindings again, and the others wait for it and then
/// open their channels on the new connection. After `give_up` without
/// success the session is dead: everything fails at once from then on.
struct Session {
    endpoint: Endpoint,
    settings: RabbitmqSettings,
    recovery: Recovery,
    groups: Vec<ConsumerGroup>,
    dead_letter: DeadLetter,
    /// Whether messages carry `message-id`, `type`, `content-type` and a
    /// `trace_id` header.
    headers: bool,
    current: tokio::sync::Mutex<Generation>,
}

/// One connection of the session; `number` counts reconnections.
struct Generation {
    number: u64,
    connection: Option<Arc<Connection>>,
}

/// One AMQP connection to `endpoint`, named `name` in the broker's UI; the
/// run and the readiness probe connect the same way.
pub(super) async fn open_connection(endpoint: &Endpoint, name: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    timed(
        &format!("connecting to RabbitMQ at {}", endpoint.shown()),
        Connection::connect(&endpoint.url(), properties),
    )
    .await
}

impl Session {
    async fn connect(&self) -> Result<Connection> {
        open_connection(&self.endpoint, "brokerbench").await
    }

    /// The connection in use, or an error once the session gave up.
    async fn current(&self) -> Result<(u64, Arc<Connection>)> {
        let current = self.current.lock().await;
        match &current.connection {
            Some(connection) => Ok((current.number, connection.clone())),
            None => bail!("gave up reconnecting to RabbitMQ"),
        }
    }

    /// Replaces connection `broken`, unless someone already did; waits while
    /// another task reconnects.
    async fn reconnect(&self, broken: u64) -> Result<(u64, Arc<Connection>)> {
        let mut current = self.current.lock().await;
        if current.number != broken || current.connection.is_none() {
            drop(current);
            return self.current().await;
        }
        let deadline = Instant::now() + self.recovery.give_up;
        for attempt in 0.. {
            let wait = crate::driver::backoff(attempt, self.recovery.backoff_max);
            if Instant::now() + wait > deadline {
                break;
            }
            tokio::time::sleep(wait).await;
            let Ok(connection) = self.connect().await else {
                continue;
            };
            if self.declare(&connection, false).await.is_ok() {
                let connection = Arc::new(connection);
                *current = Generation {
                    number: broken + 1,
                    connection: Some(connection.clone()),
                };
                return Ok((broken + 1, connection));
            }
        }
        current.connection = None;
        bail!(
            "gave up reconnecting to RabbitMQ after {}",
            humantime::format_duration(self.recovery.give_up)
        )
    }

    /// Declares the exchange and one durable queue per group, bound to the
    /// event type. `fresh` deletes each queue first, as a new run does.
    async fn declare(&self, connection: &Connection, fresh: bool) -> Result<()> {
        let channel = timed("opening an AMQP channel", connection.create_channel()).await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let events_exchange = events_exchange(self.settings.exchange);
        if let Some((name, kind)) = events_exchange.clone() {
            timed(
                "declaring the exchange",
                channel.exchange_declare(name.into(), kind, durable, FieldTable::default()),
            )
            .await?;
        }
        // Each queue's binding to the events exchange, if any.
        let events = || match &events_exchange {
            Some((name, _)) => vec![(*name, EVENT_TYPE.to_string())],
            None => Vec::new(),
        };
        let failing = self.groups.iter().any(|g| g.failures.is_some());
        if fresh {
            // An exchange left by an earlier run would catch dead letters
            // that this one's set-up means to drop. On a channel of its own:
            // a broker that answers not-found closes the channel.
            let deleting = timed("opening an AMQP channel", connection.create_channel()).await?;
            let _ = timed(
                "deleting an old dead-letter exchange",
                deleting.exchange_delete(
                    DEAD_LETTER_EXCHANGE.into(),
                    ExchangeDeleteOptions::default(),
                ),
            )
            .await;
            let _ = timed("closing", deleting.close(200, "deleted".into())).await;
        }
        let dead_letter_exchange = failing && self.settings.declare_dead_letter_exchange;
        if dead_letter_exchange {
            timed(
                "declaring the dead-letter exchange",
                channel.exchange_declare(
                    DEAD_LETTER_EXCHANGE.into(),
                    ExchangeKind::Direct,
                    durable,
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        // Per queue: its arguments and its bindings. Publish only, one queue
        // keeps what is published (unrouted messages would be dropped and
        // still confirmed), as RabbitMQ's own PerfTest does.
        let mut queues = Vec::new();
        for group in &self.groups {
            let name = &group.group;
            queues.push((queue_name(name), self.arguments(group), events()));
            if group.failures.is_some() {
                let dead_letters = match dead_letter_exchange {
                    true => vec![(DEAD_LETTER_EXCHANGE, name.clone())],
                    false => Vec::new(),
                };
                queues.push((
                    dead_letter_queue(name),
                    self.arguments_of_type(),
                    dead_letters,
                ));
            }
        }
        if self.groups.is_empty() {
            queues.push((
                PUBLISH_ONLY_QUEUE.to_string(),
                self.arguments_of_type(),
                events(),
            ));
        }
        for (queue, arguments, bindings) in queues {
            if fresh {
                timed(
                    "deleting an old queue",
                    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
                )
                .await?;
            }
            // Queues are always durable; whether messages survive a restart
            // then depends on the queue type and on `persistent`.
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            timed(
                &format!("declaring queue {queue}"),
                channel.queue_declare(queue.as_str().into(), options, arguments),
            )
            .await?;
            for (exchange, key) in bindings {
                timed(
                    &format!("binding queue {queue}"),
                    channel.queue_bind(
                        queue.as_str().into(),
                        exchange.into(),
                        key.as_str().into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
            }
        }
        let _ = timed(
            "closing the declaring channel",
            channel.close(200, "declared".into()),
        )
        .await;
        Ok(())
    }

    /// `x-queue-type` of the configured queue type.
    fn arguments_of_type(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        let queue_type = match self.settings.queue_type {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        };
        arguments.insert("x-queue-type".into(), text(queue_type));
        arguments
    }

    /// The arguments of `group`'s queue: its type and, for a group with
    /// failures, its dead-lettering. Quorum queues count deliveries and
    /// dead-letter at the limit themselves, at least once when asked (which
    /// needs `x-overflow = reject-publish`, or RabbitMQ 3.10 falls back to
    /// at most once and only logs it); classic queues only dead-letter what
    /// the consumer rejects without requeueing, at most once.
    fn arguments(&self, group: &ConsumerGroup) -> FieldTable {
        let mut arguments = self.arguments_of_type();
        if group.failures.is_none() {
            return arguments;
        }
        arguments.insert("x-dead-letter-exchange".into(), text(DEAD_LETTER_EXCHANGE));
        arguments.insert("x-dead-letter-routing-key".into(), text(&group.group));
        if self.settings.queue_type == QueueType::Quorum {
            // A limit of N allows N + 1 deliveries.
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(i64::from(self.dead_letter.max_deliveries) - 1),
            );
            let strategy = self.settings.dead_letter_strategy;
            arguments.insert("x-dead-letter-strategy".into(), text(strategy.as_str()));
            if strategy == DeadLetterStrategy::AtLeastOnce {
                arguments.insert("x-overflow".into(), text("reject-publish"));
            }
        }
        arguments
    }

    /// How dead-lettering runs, in words, for the results.
    fn dead_lettering(&self) -> Option<String> {
        self.groups.iter().find(|g| g.failures.is_some())?;
        let exchange = if self.settings.declare_dead_letter_exchange {
            format!("exchange {DEAD_LETTER_EXCHANGE}, one queue per group")
        } else {
            format!("exchange {DEAD_LETTER_EXCHANGE} left undeclared: dead letters are dropped")
        };
        let retry_delay = humantime::format_duration(self.dead_letter.retry_delay);
        Some(match self.settings.queue_type {
            QueueType::Quorum => format!(
                "quorum x-delivery-limit {}, {}, {exchange}; basic.reject(requeue) after the consumer waits {retry_delay}",
                self.dead_letter.max_deliveries - 1,
                self.settings.dead_letter_strategy.as_str()
            ),
            QueueType::Classic => format!(
                "classic: the consumer counts attempts and rejects without requeue at {}, at-most-once, {exchange}; requeue after the consumer waits {retry_delay}",
                self.dead_letter.max_deliveries
            ),
        })
    }

    /// Where publishes go: the events exchange with the event type, or the
    /// default exchange with the one queue's name.
    fn route(&self) -> (ShortString, ShortString) {
        let (exchange, routing_key) = match events_exchange(self.settings.exchange) {
            Some((name, _)) => (name, EVENT_TYPE.to_string()),
            None => match self.groups.first() {
                Some(group) => ("", queue_name(&group.group)),
                None => ("", PUBLISH_ONLY_QUEUE.to_string()),
            },
        };
        (exchange.into(), routing_key.into())
    }

    /// A channel with publisher confirms.
    async fn publisher_channel(&self) -> Result<Channel> {
        self.open(|connection| async move {
            let channel = timed("opening an AMQP channel", connection.create_channel()).await?;
            timed(
                "enabling publisher confirms",
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
            Ok(channel)
        })
        .await
    }

    /// A channel consuming `queue` with the prefetch limit.
    async fn consumer_channel(&self, queue: &str) -> Result<(Channel, lapin::Consumer)> {
        let prefetch = self.settings.prefetch;
        self.open(|connection| async move {
            let channel = timed("opening an AMQP channel", connection.create_channel()).await?;
            timed(
                "setting the prefetch",
                channel.basic_qos(prefetch, BasicQosOptions::default()),
            )
            .await?;
            let consumer = timed(
                "starting the consumer",
                channel.basic_consume(
                    queue.into(),
                    format!("brokerbench-{queue}").as_str().into(),
                    BasicConsumeOptions::default(), // manual acknowledgement
                    FieldTable::default(),
                ),
            )
            .await?;
            Ok((channel, consumer))
        })
        .await
    }

    /// Runs `open` on the newest connection; if that connection is broken,
    /// replaces it first (or waits for whoever is replacing it) and runs
    /// `open` on the new one.
    async fn open<T, F, Fut>(&self, open: F) -> Result<T>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (number, connection) = self.current().await?;
        if connection.status().connected() {
            if let Ok(opened) = open(connection).await {
                return Ok(opened);
            }
        }
        let (_, connection) = self.reconnect(number).await?;
        open(connection).await
    }
}

impl RabbitMqDriver {
    /// Runs `work` on a channel of a connection of its own, named `name`,
    /// and closes that connection whatever `work` came to. The run's
    /// connection may have given up after a fault while the broker is back
    /// by now.
    async fn on_own_channel<T>(
        &self,
        name: &str,
        work: impl AsyncFnOnce(&Channel) -> Result<T>,
    ) -> Result<T> {
        let connection = open_connection(&self.session.endpoint, name).await?;
        let result = match timed("opening an AMQP channel", connection.create_channel()).await {
            Ok(channel) => work(&channel).await,
            Err(e) => Err(e),
        };
        let _ = timed("closing", connection.close(200, "done".into())).await;
        result
    }

    /// A consumer of `queue`, manual acknowledgement.
    /// A consumer of `queue`; with `batched`, its acknowledgements go out
    /// as `multiple` acks ([`Acks`]).
    async fn consume(&self, queue: String, batched: bool) -> Result<Box<dyn Consumer>> {
        let (channel, consumer) = self.session.consumer_channel(&queue).await?;
        let acks = batched.then(|| Acks::new(channel.clone(), self.session.settings.prefetch));
        Ok(Box::new(RabbitConsumer {
            session: self.session.clone(),
            queue,
            broken: false,
            channel,
            consumer,
            acks,
        }))
    }

    /// Connects with one AMQP connection for the whole run.
    pub async fn connect(plan: &Plan, endpoint: &Endpoint) -> Result<Self> {
        let mut session = Session {
            endpoint: endpoint.clone(),
            settings: plan.rabbitmq.clone(),
            recovery: plan.recovery.clone(),
            groups: plan.consumers.clone(),
            dead_letter: plan.dead_letter.clone(),
            headers: plan.load.headers,
            current: tokio::sync::Mutex::new(Generation {
                number: 0,
                connection: None,
            }),
        };
        let connection = session.connect().await?;
        *session.current.get_mut() = Generation {
            number: 0,
            connection: Some(Arc::new(connection)),
        };
        Ok(RabbitMqDriver {
            session: Arc::new(session),
        })
    }
}

#[async_trait]
impl Driver for RabbitMqDriver {
    async fn setup(&self) -> Result<()> {
        let (_, connection) = self.session.current().await?;
        self.session.declare(&connection, true).await
    }

    async fn producer(&self, _id: u32) -> Result<Box<dyn Producer>> {
        let channel = self.session.publisher_channel().await?;
        Ok(Box::new(RabbitProducer {
            route: self.session.route(),
            session: self.session.clone(),
            channel,
            confirms: Awaited::new(),
        }))
    }

    async fn consumer(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        // A group that fails messages rejects some of them one by one; a
        // `multiple` ack could take in one meant for rejection.
        self.consume(queue_name(&group.group), group.failures.is_none())
            .await
    }

    async fn dead_letters(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        self.consume(dead_letter_queue(&group.group), false).await
    }

    fn settings(&self) -> Settings {
        let s = &self.session.settings;
        Settings::of(&Applied {
            queue_type: s.queue_type,
            exchange: s.exchange,
            durable_queues: true,
            persistent_messages: s.persistent,
            publisher_confirms: true,
            consumer_ack: "manual, after processing",
            prefetch: s.prefetch,
            replicas: 1,
            reconnect: crate::driver::backoff_description(&self.session.recovery),
            dead_lettering: self.session.dead_lettering(),
        })
    }

    /// The ready messages of the group's queue (and of its dead-letter
    /// queue), once the closed consumers' unacknowledged ones are back in it.
    /// Dead letters a quorum queue still holds while it retries an
    /// at-least-once delivery to the dead-letter queue are not counted: AMQP
    /// has no way to ask for them.
    async fn backlog(&self, group: &ConsumerGroup) -> Result<u64> {
        let mut queues = vec![queue_name(&group.group)];
        if group.failures.is_some() {
            queues.push(dead_letter_queue(&group.group));
        }
        self.on_own_channel("brokerbench-backlog", async |channel| {
            let mut depth = 0u64;
            for queue in queues {
                depth += u64::from(ready_once_settled(channel, &queue).await?);
            }
            Ok(depth)
        })
        .await
    }

    fn sees_dead_letters_in_flight(&self) -> bool {
        sees_dead_letters_in_flight(&self.session.settings)
    }

    async fn stored(&self) -> Result<u64> {
        self.on_own_channel("brokerbench-stored", async |channel| {
            Ok(ready_once_settled(channel, PUBLISH_ONLY_QUEUE)
                .await?
                .into())
        })
        .await
    }

    /// The queues, dead-letter queues included (exchanges hold no
    /// messages); deleting one that `setup` did not declare is no error.
    async fn teardown(&self) -> Result<()> {
        let mut queues = vec![PUBLISH_ONLY_QUEUE.to_string()];
        for group in &self.session.groups {
            queues.push(queue_name(&group.group));
            queues.push(dead_letter_queue(&group.group));
        }
        self.on_own_channel("brokerbench-teardown", async |channel| {
            for queue in &queues {
                let deleting =
                    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default());
                timed(&format!("deleting queue {queue}"), deleting).await?;
            }
            Ok(())
        })
        .await
    }

    async fn close(&self) {
        if let Ok((_, connection)) = self.session.current().await {
            let _ = timed(
                "closing the AMQP connection",
                connection.close(200, "run done".into()),
            )
            .await;
        }
    }
}

/// Whether a queue depth shows every dead letter RabbitMQ still holds: not
/// with quorum queues dead-lettering at least once, which keep dead letters
/// on their way to the dead-letter queue (after a crash, for
/// `dead_letter_worker_publisher_confirm_timeout`: 3 minutes in 3.10) where
/// AMQP cannot count them.
pub(super) fn sees_dead_letters_in_flight(settings: &RabbitmqSettings) -> bool {
    settings.queue_type != QueueType::Quorum
        || settings.dead_letter_strategy != DeadLetterStrategy::AtLeastOnce
}

/// The ready messages of `queue` once its consumers are gone and the count
/// stopped moving (or after 5 s): a passive declare counts only ready
/// messages, and a quorum queue returns a closed consumer's unacknowledged
/// ones a moment after its channel closed.
async fn ready_once_settled(channel: &Channel, queue: &str) -> Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let settle = Instant::now() + Duration::from_secs(5);
    let mut last = None;
    loop {
        let declared = timed(
            "asking for the queue depth",
            channel.queue_declare(queue.into(), passive, FieldTable::default()),
        )
        .await?;
        let now = (declared.message_count(), declared.consumer_count());
        if (now.1 == 0 && last == Some(now)) || Instant::now() >= settle {
            return Ok(now.0);
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes on one confirm-mode channel, many messages at a time: each
/// `basic.publish` queues its frames at once, in send order, and lapin's I/O
/// thread writes whatever is queued together; the writes and the broker's
/// confirmations are awaited in [`Awaited`], not one by one.
struct RabbitProducer {
    session: Arc<Session>,
    channel: Channel,
    /// The events exchange and the routing key.
    route: (ShortString, ShortString),
    confirms: Awaited<BoxFuture<'static, Result<(), Failure>>>,
}

impl RabbitProducer {
    /// The message's properties: persistent or not, and with
    /// [`Session::headers`] its ids, type and trace id.
    fn properties(&self, message: &Outgoing) -> BasicProperties {
        let mode = if self.session.settings.persistent {
            2
        } else {
            1
        };
        let properties = BasicProperties::default().with_delivery_mode(mode);
        if !self.session.headers {
            return properties;
        }
        let mut headers = FieldTable::default();
        headers.insert(
            "trace_id".into(),
            AMQPValue::LongString(message.trace_id.to_string().into()),
        );
        properties
            .with_content_type("application/json".into())
            .with_type(EVENT_TYPE.into())
            .with_message_id(message.order_id().to_string().into())
            .with_headers(headers)
    }
}

/// Publishes `payload` on `channel` to `(exchange, routing key)` and waits
/// for the broker's confirm.
fn publish(
    channel: Channel,
    (exchange, routing_key): (ShortString, ShortString),
    payload: Vec<u8>,
    properties: BasicProperties,
) -> BoxFuture<'static, Result<(), Failure>> {
    Box::pin(async move {
        let confirm = channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await
            .map_err(|e| ErrorKind::Connection.because(e))?;
        match confirm.await {
            Ok(confirmation) if confirmation.is_ack() => Ok(()),
            Ok(_) => Err(ErrorKind::Refused.because("the broker nacked it (basic.nack)")),
            Err(e) => Err(ErrorKind::Connection.because(e)),
        }
    })
}

#[async_trait]
impl Producer for RabbitProducer {
    async fn send(&mut self, token: Token, message: Outgoing) -> Result<(), Failure> {
        // A closed channel is replaced (reconnecting if need be) first.
        if !self.channel.status().connected() {
            self.channel = self
                .session
                .publisher_channel()
                .await
                .map_err(|e| ErrorKind::Connection.because(format!("{e:#}")))?;
        }
        let properties = self.properties(&message);
        let mut confirm = publish(
            self.channel.clone(),
            self.route.clone(),
            message.payload,
            properties,
        );
        // The first poll queues the frames, so messages go out in send
        // order; the write and the confirm are awaited with the others.
        match confirm
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Pending => self.confirms.push(token, confirm),
            Poll::Ready(Err(failure)) => return Err(failure),
            Poll::Ready(Ok(())) => self
                .confirms
                .push(token, Box::pin(std::future::ready(Ok(())))),
        }
        Ok(())
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer> {
        self.confirms.poll_answer(cx)
    }
}

struct RabbitConsumer {
    session: Arc<Session>,
    queue: String,
    /// The subscription broke and is not replaced yet.
    broken: bool,
    channel: Channel,
    consumer: lapin::Consumer,
    /// The channel's acknowledgements, when they go out as `multiple` acks.
    acks: Option<Arc<Acks>>,
}

/// How long a processed delivery may wait for its `multiple` ack.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// A consumer channel's acknowledgements sent as `multiple` acks: one frame
/// acknowledges every delivery up to a tag, so a message processed waits
/// until all before it are, then goes out with them when a batch (half the
/// prefetch) is complete, or [`ACK_DELAY`] after the first of them.
struct Acks {
    channel: Channel,
    batch: u64,
    state: std::sync::Mutex<AckState>,
}

#[derive(Default)]
struct AckState {
    /// The lowest delivery tag not processed yet (tags start at 1).
    next: u64,
    /// Processed tags above `next`.
    processed: std::collections::BTreeSet<u64>,
    /// The highest tag acknowledged to the broker.
    sent: u64,
    /// Whether a delayed ack is on its way.
    scheduled: bool,
}

impl Acks {
    fn new(channel: Channel, prefetch: u16) -> Arc<Self> {
        Arc::new(Acks {
            channel,
            batch: (u64::from(prefetch) / 2).max(1),
            state: std::sync::Mutex::new(AckState {
                next: 1,
                ..AckState::default()
            }),
        })
    }

    /// Delivery `tag` was processed: acknowledges what a batch completes,
    /// or makes sure a delayed ack will.
    async fn processed(self: &Arc<Self>, tag: u64) -> Result<(), ErrorKind> {
        let (ack, schedule) = {
            let mut guard = self.state.lock().expect("acks lock");
            let state = &mut *guard;
            state.processed.insert(tag);
            while state.processed.remove(&state.next) {
                state.next += 1;
            }
            if state.next > state.sent + self.batch {
                (self.send(state), false)
            } else {
                let schedule = !state.scheduled && state.next - 1 > state.sent;
                state.scheduled |= schedule;
                (None, schedule)
            }
        };
        if schedule {
            let acks = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(ACK_DELAY).await;
                let _ = acks.flush().await;
            });
        }
        match ack {
            Some(ack) => Self::finish(ack).await,
            None => Ok(()),
        }
    }

    /// Acknowledges every processed delivery not acknowledged yet.
    async fn flush(&self) -> Result<(), ErrorKind> {
        let ack = {
            let mut state = self.state.lock().expect("acks lock");
            state.scheduled = false;
            self.send(&mut state)
        };
        match ack {
            Some(ack) => Self::finish(ack).await,
            None => Ok(()),
        }
    }

    /// Starts the `multiple` ack up to the processed prefix, if it grew.
    /// Its frame is queued before the lock is let go, so acks go out in
    /// order: an ack for a lower tag after a higher one would be refused.
    fn send(&self, state: &mut AckState) -> Option<BoxFuture<'static, lapin::Result<()>>> {
        let top = state.next - 1;
        if top <= state.sent {
            return None;
        }
        state.sent = top;
        let channel = self.channel.clone();
        let mut ack: BoxFuture<'static, lapin::Result<()>> = Box::pin(async move {
            channel
                .basic_ack(top, BasicAckOptions { multiple: true })
                .await
        });
        match ack.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => Some(Box::pin(std::future::ready(result))),
            Poll::Pending => Some(ack),
        }
    }

    async fn finish(ack: BoxFuture<'static, lapin::Result<()>>) -> Result<(), ErrorKind> {
        match tokio::time::timeout(crate::driver::CALL_TIMEOUT, ack).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(ErrorKind::Ack),
        }
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    /// Cancel-safe: a broken subscription is marked before it is replaced,
    /// so a call dropped while resubscribing is taken up by the next one
    /// (polled again, lapin's ended consumer would wait forever).
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        if !self.broken {
            match self.consumer.next().await {
                Some(Ok(delivery)) => return Some(Ok(self.incoming(delivery))),
                // The channel or connection broke (we never cancel the
                // consumer ourselves).
                Some(Err(_)) | None => self.broken = true,
            }
        }
        // Consume again on a new channel. What was delivered but not
        // acknowledged comes back, flagged as redelivered.
        match self.session.consumer_channel(&self.queue).await {
            Ok((channel, consumer)) => {
                // Tags start again at 1 on the new channel.
                if self.acks.is_some() {
                    self.acks = Some(Acks::new(channel.clone(), self.session.settings.prefetch));
                }
                (self.channel, self.consumer) = (channel, consumer);
                self.broken = false;
                Some(Err(ErrorKind::Receive))
            }
            Err(_) if self.session.current().await.is_err() => None,
            Err(_) => Some(Err(ErrorKind::Receive)),
        }
    }

    async fn close(self: Box<Self>) {
        // What was processed is acknowledged before the channel closes.
        if let Some(acks) = &self.acks {
            let _ = acks.flush().await;
        }
        let _ = timed(
            "closing the consumer channel",
            self.channel.close(200, "consumer done".into()),
        )
        .await;
    }
}

impl RabbitConsumer {
    /// A delivery, with how to settle it.
    fn incoming(&self, delivery: lapin::message::Delivery) -> Incoming {
        let acker = delivery.acker;
        let session = self.session.clone();
        let (acks, tag) = (self.acks.clone(), delivery.delivery_tag);
        let settle: Settler = Box::new(move |how| {
            Box::pin(async move {
                let settled = match how {
                    Settle::Ack if acks.is_some() => {
                        return acks.expect("batched").processed(tag).await;
                    }
                    Settle::Ack => {
                        let ack = acker.ack(BasicAckOptions::default());
                        tokio::time::timeout(crate::driver::CALL_TIMEOUT, ack).await
                    }
                    Settle::Failed { attempt } => {
                        // RabbitMQ cannot delay a redelivery: the consumer waits.
                        tokio::time::sleep(session.dead_letter.retry_delay).await;
                        // A quorum queue counts deliveries and dead-letters at
                        // its limit; a classic queue dead-letters what is
                        // rejected without requeueing, at the consumer's count.
                        let requeue = session.settings.queue_type == QueueType::Quorum
                            || attempt < session.dead_letter.max_deliveries;
                        let reject = acker.reject(BasicRejectOptions { requeue });
                        tokio::time::timeout(crate::driver::CALL_TIMEOUT, reject).await
                    }
                };
                match settled {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) | Err(_) => Err(ErrorKind::Ack),
                }
            })
        });
        Incoming {
            payload: delivery.data.into(),
            redelivered: delivery.redelivered,
            settle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_at_least_once_quorum_queues_hide_dead_letters_in_flight() {
        let with = |queue_type, dead_letter_strategy| RabbitmqSettings {
            queue_type,
            dead_letter_strategy,
            ..RabbitmqSettings::default()
        };
        assert!(!sees_dead_letters_in_flight(&with(
            QueueType::Quorum,
            DeadLetterStrategy::AtLeastOnce
        )));
        assert!(sees_dead_letters_in_flight(&with(
            QueueType::Quorum,
            DeadLetterStrategy::AtMostOnce
        )));
        assert!(sees_dead_letters_in_flight(&with(
            QueueType::Classic,
            DeadLetterStrategy::AtLeastOnce
        )));
    }
}
