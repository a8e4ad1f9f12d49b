//! NATS JetStream through async-nats: one stream on
//! `events.order.created.v1`, async publishes whose acks are awaited
//! concurrently, and one durable pull consumer per group with explicit acks.

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Serialize;

use crate::driver::{
    confirm_within, timed, Acker, Confirmation, Consumer, Driver, ErrorKind, Failure, Incoming,
    Producer, Settings,
};
use crate::env::Endpoint;
use crate::event::Outgoing;
use crate::scenario::{ConsumerGroup, JetstreamSettings, Plan, Recovery, Storage, EVENT_TYPE};

/// The stream every event goes to.
pub(super) const STREAM: &str = "BROKERBENCH_ORDERS";

/// How long the broker waits for an ack before redelivering.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The durability and delivery settings a JetStream run used, for the results.
#[derive(Serialize)]
struct Applied {
    storage: Storage,
    replicas: u32,
    publish_acks: bool,
    consumer: &'static str,
    max_ack_pending: i64,
    ack_wait: String,
    dedup_header: &'static str,
    reconnect: String,
    fsync: &'static str,
}

/// One NATS connection shared by every producer and consumer.
pub(super) struct JetStreamDriver {
    client: async_nats::Client,
    context: jetstream::Context,
    settings: JetstreamSettings,
    recovery: Recovery,
}

/// `fut` with the call timeout, its own error left to the caller to read.
async fn timed_raw<T>(fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(crate::driver::CALL_TIMEOUT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {:?}", crate::driver::CALL_TIMEOUT))
}

/// NATS connection options shared by the run and the readiness probe:
/// every request has a timeout, reconnection follows our backoff.
pub(super) fn options(name: &str, backoff_max: Duration) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempts| {
            crate::driver::backoff(attempts.saturating_sub(1) as u32, backoff_max)
        })
        .connection_timeout(crate::driver::CALL_TIMEOUT)
        .request_timeout(Some(crate::driver::CALL_TIMEOUT))
}

/// One NATS connection to `endpoint` with `options`.
pub(super) async fn open_connection(
    endpoint: &Endpoint,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client> {
    timed(
        &format!("connecting to NATS at {}", endpoint.shown()),
        options.connect(endpoint.url()),
    )
    .await
}

impl JetStreamDriver {
    /// Connects with one NATS connection for the whole run.
    pub async fn connect(plan: &Plan, endpoint: &Endpoint) -> Result<Self> {
        let options = options("brokerbench", plan.recovery.backoff_max);
        let client = open_connection(endpoint, options).await?;
        let context = jetstream::new(client.clone());
        Ok(JetStreamDriver {
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
impl Driver for JetStreamDriver {
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

    fn settings(&self) -> Settings {
        Settings::of(&Applied {
            storage: self.settings.storage,
            replicas: 1,
            publish_acks: true,
            consumer: "durable pull, explicit ack after processing",
            max_ack_pending: self.settings.max_ack_pending,
            ack_wait: humantime::format_duration(ACK_WAIT).to_string(),
            dedup_header: "Nats-Msg-Id = order_id",
            reconnect: crate::driver::backoff_description(&self.recovery),
            fsync: "server default (sync_interval 2 min)",
        })
    }

    /// Pending plus ack pending of the group's durable consumer; 0 when the
    /// server says the stream or the consumer is gone (a memory stream after
    /// a crash): then it holds nothing for the group.
    async fn backlog(&self, group: &ConsumerGroup) -> Result<u64> {
        use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
        use async_nats::jetstream::ErrorCode;
        let stream = match timed_raw(self.context.get_stream(STREAM)).await? {
            Ok(stream) => stream,
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    return Ok(0)
                }
                _ => return Err(e.into()),
            },
        };
        match timed_raw(stream.consumer_info(&group.group)).await? {
            Ok(info) => Ok(info.num_pending + info.num_ack_pending as u64),
            Err(e) => match e.kind() {
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => Ok(0),
                _ => Err(e.into()),
            },
        }
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
    async fn send(&mut self, message: Outgoing) -> Result<Confirmation, Failure> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            message.order_id.as_str(),
        );
        headers.insert("trace_id", message.trace_id.as_str());
        let publish =
            self.context
                .publish_with_headers(EVENT_TYPE, headers, message.payload.into());
        let ack = match tokio::time::timeout(crate::driver::CALL_TIMEOUT, publish).await {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => return Err(ErrorKind::Send.because(e)),
            Err(_) => return Err(ErrorKind::Timeout.because("publish: no answer")),
        };
        Ok(Box::pin(confirm_within(async move {
            use async_nats::jetstream::context::PublishErrorKind as Kind;
            ack.into_future().await.map(|_| ()).map_err(|e| {
                let kind = match e.kind() {
                    Kind::TimedOut => ErrorKind::Timeout,
                    Kind::BrokenPipe => ErrorKind::Connection,
                    _ => ErrorKind::Refused,
                };
                kind.because(e)
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
            match tokio::time::timeout(crate::driver::CALL_TIMEOUT, self.consumer.messages()).await
            {
                Ok(Ok(messages)) => {
                    self.messages = Some(messages);
                    return Ok(());
                }
                _ if started.elapsed() >= self.recovery.give_up => break,
                _ => {
                    tokio::time::sleep(crate::driver::backoff(attempt, self.recovery.backoff_max))
                        .await
                }
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
                match tokio::time::timeout(crate::driver::CALL_TIMEOUT, message.ack()).await {
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
