//! NATS JetStream through async-nats: one stream on
//! `events.order.created.v1`, async publishes whose acks are awaited
//! concurrently, and one durable pull consumer per group with explicit acks.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::json;

use super::{
    confirm_within, timed, Acker, Confirmation, Consumer, Driver, ErrorKind, Incoming, Producer,
};
use crate::env::Endpoint;
use crate::event::Outgoing;
use crate::scenario::{ConsumerGroup, JetstreamSettings, Plan, Recovery, Storage, EVENT_TYPE};

/// The stream every event goes to.
pub const STREAM: &str = "BROKERBENCH_ORDERS";

/// How long the broker waits for an ack before redelivering.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// One NATS connection shared by every producer and consumer.
pub struct JetStream {
    client: async_nats::Client,
    context: jetstream::Context,
    settings: JetstreamSettings,
    recovery: Recovery,
}

impl JetStream {
    /// Connects with one NATS connection for the whole run.
    pub async fn connect(plan: &Plan, endpoint: &Endpoint) -> Result<Self> {
        let client = timed(
            &format!("connecting to NATS at {}", endpoint.shown()),
            async_nats::ConnectOptions::new()
                .name("brokerbench")
                .max_reconnects(None)
                .reconnect_delay_callback({
                    let max = plan.recovery.backoff_max;
                    move |attempts| super::backoff(attempts.saturating_sub(1) as u32, max)
                })
                .connection_timeout(super::CALL_TIMEOUT)
                .request_timeout(Some(super::CALL_TIMEOUT))
                .connect(endpoint.url()),
        )
        .await?;
        let context = jetstream::new(client.clone());
        Ok(JetStream {
            client,
            context,
            settings: plan.jetstream.clone(),
            recovery: plan.recovery.clone(),
        })
    }

    fn storage(&self) -> stream::StorageType {
        match self.settings.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        }
    }
}

#[async_trait]
impl Driver for JetStream {
    async fn setup(&self) -> Result<()> {
        // A fresh stream: an old one (and its consumers) would hold other runs' messages.
        let _ = timed("deleting an old stream", self.context.delete_stream(STREAM)).await;
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec![EVENT_TYPE.to_string()],
            storage: self.storage(),
            num_replicas: 1,
            ..Default::default()
        };
        timed("creating the stream", self.context.create_stream(config)).await?;
        Ok(())
    }

    async fn producer(&self, _id: u32) -> Result<Box<dyn Producer>> {
        Ok(Box::new(JetStreamProducer {
            context: self.context.clone(),
        }))
    }

    async fn consumer(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        let stream = timed("looking up the stream", self.context.get_stream(STREAM)).await?;
        let config = pull::Config {
            durable_name: Some(group.group.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: self.settings.max_ack_pending,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let consumer: jetstream::consumer::PullConsumer = timed(
            &format!("creating durable consumer {}", group.group),
            stream.get_or_create_consumer(&group.group, config),
        )
        .await?;
        // async-nats's own pull stream, with its defaults (30 s request expiry,
        // 15 s idle heartbeat). Against nats-server 2.9 a shorter expiry or
        // heartbeat made delivery stall for 1-5 s at 500 msg/s (missed
        // heartbeats restart the pull), and explicit batch requests were worse;
        // the defaults gave sub-millisecond medians. Once, at ~150k msg/s, the
        // stream stopped pulling until its 30 s expiry: the drain timeout then
        // marks the run incomplete rather than hiding it.
        let messages = timed("starting to pull", consumer.messages()).await?;
        Ok(Box::new(JetStreamConsumer {
            consumer,
            messages: Some(messages),
            recovery: self.recovery.clone(),
        }))
    }

    fn settings(&self) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::from([
            ("storage".into(), json!(self.settings.storage)),
            ("replicas".into(), json!(1)),
            ("publish_acks".into(), json!(true)),
            (
                "consumer".into(),
                json!("durable pull, explicit ack after processing"),
            ),
            (
                "max_ack_pending".into(),
                json!(self.settings.max_ack_pending),
            ),
            (
                "ack_wait".into(),
                json!(humantime::format_duration(ACK_WAIT).to_string()),
            ),
            ("dedup_header".into(), json!("Nats-Msg-Id = order_id")),
            (
                "reconnect".into(),
                json!(super::backoff_description(&self.recovery)),
            ),
            (
                "fsync".into(),
                json!("server default (sync_interval 2 min)"),
            ),
        ])
    }

    async fn close(&self) {
        let _ = timed("flushing the NATS connection", self.client.flush()).await;
    }
}

struct JetStreamProducer {
    context: jetstream::Context,
}

#[async_trait]
impl Producer for JetStreamProducer {
    async fn send(&mut self, message: Outgoing) -> Result<Confirmation, ErrorKind> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            message.order_id.as_str(),
        );
        headers.insert("trace_id", message.trace_id.as_str());
        let publish =
            self.context
                .publish_with_headers(EVENT_TYPE, headers, message.payload.into());
        let ack = match tokio::time::timeout(super::CALL_TIMEOUT, publish).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(_)) => return Err(ErrorKind::Send),
            Err(_) => return Err(ErrorKind::Timeout),
        };
        Ok(Box::pin(confirm_within(async move {
            use async_nats::jetstream::context::PublishErrorKind as Kind;
            ack.into_future()
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    Kind::TimedOut => ErrorKind::Timeout,
                    Kind::BrokenPipe => ErrorKind::Connection,
                    _ => ErrorKind::Refused,
                })
        })))
    }
}

struct JetStreamConsumer {
    consumer: jetstream::consumer::PullConsumer,
    /// The pull stream; `None` after it ended or failed, until pulled again.
    messages: Option<pull::Stream>,
    recovery: Recovery,
}

impl JetStreamConsumer {
    /// Pulls again after the stream ended or failed (for example while the
    /// server restarted), with the reconnection backoff, until `give_up`.
    async fn resubscribe(&mut self) -> Result<(), ErrorKind> {
        let started = std::time::Instant::now();
        for attempt in 0.. {
            match tokio::time::timeout(super::CALL_TIMEOUT, self.consumer.messages()).await {
                Ok(Ok(messages)) => {
                    self.messages = Some(messages);
                    return Ok(());
                }
                _ if started.elapsed() >= self.recovery.give_up => break,
                _ => tokio::time::sleep(super::backoff(attempt, self.recovery.backoff_max)).await,
            }
        }
        Err(ErrorKind::Receive)
    }
}

#[async_trait]
impl Consumer for JetStreamConsumer {
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        let message = loop {
            let Some(messages) = self.messages.as_mut() else {
                if let Err(kind) = self.resubscribe().await {
                    return Some(Err(kind));
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => break message,
                // Counted, then pulled again on the next call.
                Some(Err(_)) => {
                    self.messages = None;
                    return Some(Err(ErrorKind::Receive));
                }
                None => self.messages = None,
            }
        };
        let redelivered = message
            .info()
            .map(|info| info.delivered > 1)
            .unwrap_or(false);
        let payload = message.payload.to_vec();
        let ack: Acker = Box::new(move || {
            Box::pin(async move {
                match tokio::time::timeout(super::CALL_TIMEOUT, message.ack()).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) | Err(_) => Err(ErrorKind::Ack),
                }
            })
        });
        Some(Ok(Incoming {
            payload,
            redelivered,
            ack,
        }))
    }
}
