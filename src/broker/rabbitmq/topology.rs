//! What a run declares: the events exchange (topic, direct or none: the
//! default exchange), one durable queue per consumer group bound to the
//! event type, and for groups with failures the dead-letter exchange and
//! queues, with each queue's arguments.

use anyhow::Result;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::driver::timed;
use crate::scenario::{ConsumerGroup, DeadLetterStrategy, Exchange, QueueType, EVENT_TYPE};

use super::session::Session;

/// The events exchange to declare, and its kind: one name per kind, as an
/// exchange cannot change kind once declared. None for the default
/// exchange, which is always there and which nothing binds to.
pub(super) fn events_exchange(exchange: Exchange) -> Option<(&'static str, ExchangeKind)> {
    match exchange {
        Exchange::Topic => Some(("brokerbench.events", ExchangeKind::Topic)),
        Exchange::Direct => Some(("brokerbench.events.direct", ExchangeKind::Direct)),
        Exchange::Default => None,
    }
}

/// The dead-letter exchange: direct, each group's dead letters routed by the
/// group's name to its own dead-letter queue.
pub(super) const DEAD_LETTER_EXCHANGE: &str = "brokerbench.dead-letters";

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
pub(super) fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

impl Session {
    /// Declares the exchange and one durable queue per group, bound to the
    /// event type. `fresh` deletes each queue first, as a new run does.
    pub(super) async fn declare(&self, connection: &Connection, fresh: bool) -> Result<()> {
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
        let events: Vec<Binding> = match &events_exchange {
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
        for (queue, arguments, bindings) in self.queues(dead_letter_exchange, &events) {
            declare_queue(&channel, &queue, arguments, &bindings, fresh).await?;
        }
        let _ = timed(
            "closing the declaring channel",
            channel.close(200, "declared".into()),
        )
        .await;
        Ok(())
    }

    /// Every queue to declare, with its arguments and bindings: one per
    /// group, bound to the events exchange; a dead-letter queue per group
    /// with failures; publish only, one queue that keeps what is published
    /// (unrouted messages would be dropped and still confirmed), as
    /// RabbitMQ's own PerfTest does.
    fn queues(
        &self,
        dead_letter_exchange: bool,
        events: &[Binding],
    ) -> Vec<(String, FieldTable, Vec<Binding>)> {
        let mut queues = Vec::new();
        for group in &self.groups {
            let name = &group.group;
            queues.push((queue_name(name), self.arguments(group), events.to_vec()));
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
                events.to_vec(),
            ));
        }
        queues
    }

    /// `x-queue-type` of the configured queue type.
    pub(super) fn arguments_of_type(&self) -> FieldTable {
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
    pub(super) fn arguments(&self, group: &ConsumerGroup) -> FieldTable {
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
    pub(super) fn dead_lettering(&self) -> Option<String> {
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
    pub(super) fn route(&self) -> (ShortString, ShortString) {
        let (exchange, routing_key) = match events_exchange(self.settings.exchange) {
            Some((name, _)) => (name, EVENT_TYPE.to_string()),
            None => match self.groups.first() {
                Some(group) => ("", queue_name(&group.group)),
                None => ("", PUBLISH_ONLY_QUEUE.to_string()),
            },
        };
        (exchange.into(), routing_key.into())
    }
}

/// An exchange and a routing key a queue is bound with.
type Binding = (&'static str, String);

/// Declares `queue`, durable, with `arguments` and `bindings`; `fresh`
/// deletes it first, as a new run does.
async fn declare_queue(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
    bindings: &[Binding],
    fresh: bool,
) -> Result<()> {
    if fresh {
        timed(
            "deleting an old queue",
            channel.queue_delete(queue.into(), QueueDeleteOptions::default()),
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
        channel.queue_declare(queue.into(), options, arguments),
    )
    .await?;
    for (exchange, key) in bindings {
        timed(
            &format!("binding queue {queue}"),
            channel.queue_bind(
                queue.into(),
                (*exchange).into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    Ok(())
}
