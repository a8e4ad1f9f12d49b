//! RabbitMQ through lapin: a topic exchange, one durable queue per consumer
//! group bound to `events.order.created.v1`, publisher confirms with many in
//! flight, manual acks after processing, and a prefetch limit.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;

use super::{
    confirm_within, timed, Acker, Confirmation, Consumer, Driver, ErrorKind, Incoming, Producer,
};
use crate::env::Endpoint;
use crate::event::Outgoing;
use crate::scenario::{ConsumerGroup, Plan, QueueType, RabbitmqSettings, Recovery, EVENT_TYPE};

const EXCHANGE: &str = "brokerbench.events";

/// The queue a consumer group reads.
pub fn queue_name(group: &str) -> String {
    format!("brokerbench.{group}")
}

/// A connection to RabbitMQ, shared by every producer and consumer.
pub struct RabbitMq {
    connection: Connection,
    settings: RabbitmqSettings,
    recovery: Recovery,
    groups: Vec<String>,
}

impl RabbitMq {
    /// Connects with one AMQP connection for the whole run.
    pub async fn connect(plan: &Plan, endpoint: &Endpoint) -> Result<Self> {
        // lapin's own recovery: reconnect with our backoff, then replay the
        // channels, confirms, QoS, queues, bindings and consumers.
        let recovery = plan.recovery.clone();
        let backoff = backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs(1))
            .with_factor(2.0)
            .with_max_delay(recovery.backoff_max)
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(recovery.give_up));
        let properties = ConnectionProperties::default()
            .with_connection_name("brokerbench".into())
            .enable_auto_recover()
            .with_backoff(backoff);
        let connection = timed(
            &format!("connecting to RabbitMQ at {}", endpoint.url()),
            Connection::connect(&endpoint.url(), properties),
        )
        .await?;
        Ok(RabbitMq {
            connection,
            settings: plan.rabbitmq.clone(),
            recovery,
            groups: plan.consumers.iter().map(|c| c.group.clone()).collect(),
        })
    }

    async fn channel(&self) -> Result<Channel> {
        timed("opening an AMQP channel", self.connection.create_channel()).await
    }
}

#[async_trait]
impl Driver for RabbitMq {
    async fn setup(&self) -> Result<()> {
        let channel = self.channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        timed(
            "declaring the exchange",
            channel.exchange_declare(
                EXCHANGE.into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        for group in &self.groups {
            let queue = queue_name(group);
            timed(
                "deleting an old queue",
                channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
            )
            .await?;
            let mut arguments = FieldTable::default();
            let queue_type = match self.settings.queue_type {
                QueueType::Quorum => "quorum",
                QueueType::Classic => "classic",
            };
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(queue_type.into()),
            );
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
            timed(
                &format!("binding queue {queue}"),
                channel.queue_bind(
                    queue.as_str().into(),
                    EXCHANGE.into(),
                    EVENT_TYPE.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        let _ = timed(
            "closing the setup channel",
            channel.close(200, "setup done".into()),
        )
        .await;
        Ok(())
    }

    async fn producer(&self, _id: u32) -> Result<Box<dyn Producer>> {
        let channel = self.channel().await?;
        timed(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Box::new(RabbitProducer {
            channel,
            persistent: self.settings.persistent,
            give_up: self.recovery.give_up,
        }))
    }

    async fn consumer(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        let channel = self.channel().await?;
        timed(
            "setting the prefetch",
            channel.basic_qos(self.settings.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let consumer = timed(
            "starting the consumer",
            channel.basic_consume(
                queue_name(&group.group).as_str().into(),
                format!("brokerbench-{}", group.group).as_str().into(),
                BasicConsumeOptions::default(), // manual acknowledgement
                FieldTable::default(),
            ),
        )
        .await?;
        Ok(Box::new(RabbitConsumer {
            channel,
            consumer,
            give_up: self.recovery.give_up,
        }))
    }

    fn settings(&self) -> BTreeMap<String, serde_json::Value> {
        let s = &self.settings;
        BTreeMap::from([
            ("queue_type".into(), json!(s.queue_type)),
            ("durable_queues".into(), json!(true)),
            ("persistent_messages".into(), json!(s.persistent)),
            ("publisher_confirms".into(), json!(true)),
            ("consumer_ack".into(), json!("manual, after processing")),
            ("prefetch".into(), json!(s.prefetch)),
            ("replicas".into(), json!(1)),
            (
                "reconnect".into(),
                json!(super::backoff_description(&self.recovery)),
            ),
        ])
    }

    async fn close(&self) {
        let _ = timed(
            "closing the AMQP connection",
            self.connection.close(200, "run done".into()),
        )
        .await;
    }
}

struct RabbitProducer {
    channel: Channel,
    persistent: bool,
    give_up: Duration,
}

#[async_trait]
impl Producer for RabbitProducer {
    async fn send(&mut self, message: Outgoing) -> Result<Confirmation, ErrorKind> {
        let mut headers = FieldTable::default();
        headers.insert(
            "trace_id".into(),
            AMQPValue::LongString(message.trace_id.as_str().into()),
        );
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_type(EVENT_TYPE.into())
            .with_message_id(message.order_id.as_str().into())
            .with_delivery_mode(if self.persistent { 2 } else { 1 })
            .with_headers(headers);
        // While the connection is down, wait for lapin's recovery (bounded by
        // `give_up`), then publish once more on the recovered channel.
        let mut recovered = false;
        let confirm = loop {
            let publish = self.channel.basic_publish(
                EXCHANGE.into(),
                EVENT_TYPE.into(),
                BasicPublishOptions::default(),
                &message.payload,
                properties.clone(),
            );
            match tokio::time::timeout(super::CALL_TIMEOUT, publish).await {
                Ok(Ok(confirm)) => break confirm,
                Ok(Err(err)) if !recovered => {
                    let recovery = self.channel.wait_for_recovery(err);
                    match tokio::time::timeout(self.give_up, recovery).await {
                        Ok(Ok(())) => recovered = true,
                        _ => return Err(ErrorKind::Connection),
                    }
                }
                Ok(Err(_)) => return Err(ErrorKind::Connection),
                Err(_) => return Err(ErrorKind::Timeout),
            }
        };
        Ok(Box::pin(confirm_within(async move {
            match confirm.await {
                Ok(confirmation) if confirmation.is_ack() => Ok(()),
                Ok(_) => Err(ErrorKind::Refused),
                Err(_) => Err(ErrorKind::Connection),
            }
        })))
    }
}

struct RabbitConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
    give_up: Duration,
}

#[async_trait]
impl Consumer for RabbitConsumer {
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        let delivery = loop {
            match self.consumer.next().await? {
                Ok(delivery) => break delivery,
                // lapin replays the consumer after recovering the connection.
                Err(err) => {
                    let recovery = self.channel.wait_for_recovery(err);
                    if !matches!(
                        tokio::time::timeout(self.give_up, recovery).await,
                        Ok(Ok(()))
                    ) {
                        return Some(Err(ErrorKind::Receive));
                    }
                }
            }
        };
        let acker = delivery.acker;
        let ack: Acker = Box::new(move || {
            Box::pin(async move {
                match tokio::time::timeout(
                    super::CALL_TIMEOUT,
                    acker.ack(BasicAckOptions::default()),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) | Err(_) => Err(ErrorKind::Ack),
                }
            })
        });
        Some(Ok(Incoming {
            payload: delivery.data,
            redelivered: delivery.redelivered,
            ack,
        }))
    }

    async fn close(self: Box<Self>) {
        let _ = timed(
            "closing the consumer channel",
            self.channel.close(200, "consumer done".into()),
        )
        .await;
    }
}
