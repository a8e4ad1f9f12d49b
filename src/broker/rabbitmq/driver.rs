//! RabbitMQ through lapin: a topic exchange (or a direct one, or the default
//! exchange straight to the one queue: `[rabbitmq] exchange`), one durable
//! queue per consumer group bound to `events.order.created.v1`, publisher
//! confirms with many in flight, manual acks after processing, and a
//! prefetch limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use serde::Serialize;

use crate::broker::Endpoint;
use crate::driver::{timed, AgentSource, Consumer, Driver, Leadership, Producer, Settings};
use crate::kind::BrokerKind;
use crate::scenario::{
    ConsumerGroup, DeadLetterStrategy, Exchange, Plan, QueueType, RabbitmqSettings,
};

use super::consumer::RabbitConsumer;
use super::producer::RabbitProducer;
use super::session::{open_connection, Generation, Session};
use super::topology::{dead_letter_queue, queue_name, PUBLISH_ONLY_QUEUE};

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
    /// When the broker writes a confirmed message to disk.
    flush: &'static str,
    reconnect: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_lettering: Option<String>,
    /// Seconds without a word from a peer node before it counts as down,
    /// where brokerbench set it (nodes in network namespaces).
    #[serde(skip_serializing_if = "Option::is_none")]
    net_ticktime_s: Option<u32>,
}

/// RabbitMQ's flush policy for these settings: it confirms a persistent
/// message in a durable queue once it is on disk, whatever the scenario
/// asks; nothing makes it sync a transient one.
fn flush_policy(queue_type: QueueType, persistent: bool) -> &'static str {
    match (queue_type, persistent) {
        (QueueType::Quorum, _) => "fsync before confirm (quorum queue: its Raft log is synced before the confirm)",
        (QueueType::Classic, true) => "fsync before confirm (persistent message in a durable classic queue; fsyncs are batched)",
        (QueueType::Classic, false) => "none before confirm (transient messages in a classic queue are not written to disk first)",
    }
}

/// RabbitMQ for one run: one AMQP connection shared by every producer and
/// consumer, replaced by a new one when it breaks.
pub(super) struct RabbitMqDriver {
    session: Arc<Session>,
    /// The nodes run in network namespaces (a scenario with partitions),
    /// with a shorter `net_ticktime`.
    namespaces: bool,
}

impl RabbitMqDriver {
    /// Copies of each queue: a quorum queue has one on every node of the
    /// cluster (up to its default initial group size); a classic queue lives
    /// on one node only (mirroring is deprecated, and not used).
    fn replicas(&self) -> u32 {
        match self.session.settings.queue_type {
            QueueType::Quorum => self.session.endpoint.urls().len() as u32,
            QueueType::Classic => 1,
        }
    }

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
            namespaces: plan.has_partitions(),
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
        Ok(Box::new(RabbitProducer::open(self.session.clone()).await?))
    }

    async fn consumer(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        // A group that fails messages rejects some of them one by one; a
        // `multiple` ack could take in one meant for rejection.
        RabbitConsumer::open(
            self.session.clone(),
            queue_name(&group.group),
            group.failures.is_none(),
        )
        .await
    }

    /// The group's queue, declared with the rest of the topology in `setup`.
    async fn agent_source(&self, group: &ConsumerGroup) -> Result<AgentSource> {
        let s = &self.session;
        Ok(AgentSource {
            broker: BrokerKind::Rabbitmq,
            url: s.endpoint.url(),
            source: serde_json::json!({
                "queue": queue_name(&group.group),
                "prefetch": s.settings.prefetch,
                // As brokerbench's own consumer (consumer.rs): a quorum queue
                // counts deliveries and dead-letters at its limit.
                "requeue_failed": s.settings.queue_type == QueueType::Quorum,
                "max_deliveries": s.dead_letter.max_deliveries,
                "retry_delay_ms": s.dead_letter.retry_delay.as_millis() as u64,
            }),
        })
    }

    async fn dead_letters(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        RabbitConsumer::open(self.session.clone(), dead_letter_queue(&group.group), false).await
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
            replicas: self.replicas(),
            flush: flush_policy(s.queue_type, s.persistent),
            reconnect: crate::driver::backoff_description(&self.session.recovery),
            dead_lettering: self.session.dead_lettering(),
            net_ticktime_s: self.namespaces.then_some(super::NET_TICKTIME),
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

    /// The leader and online members of the first group's quorum queue
    /// (publish only: its queue), from the management API of a local
    /// cluster.
    async fn leadership(&self) -> Result<Option<Leadership>> {
        let admin = self.session.endpoint.admin();
        if admin.is_empty() || self.session.settings.queue_type != QueueType::Quorum {
            return Ok(None);
        }
        let queue = match self.session.groups.first() {
            Some(group) => queue_name(&group.group),
            None => PUBLISH_ONLY_QUEUE.to_string(),
        };
        super::management::queue_leadership(admin, &queue)
            .await
            .map(Some)
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
