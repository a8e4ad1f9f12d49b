//! NATS JetStream through async-nats: one stream on
//! `events.order.created.v1`, async publishes whose acks are awaited
//! concurrently, and one durable pull consumer per group with explicit acks.
//!
//! One connection per simulated service, as separate services would have:
//! one for the producers, one for each consumer group. On one shared
//! connection a group read 3-11k msg/s at 150-160k msg/s closed loop until
//! the load stopped, then 130-210k msg/s, and three groups stalled for
//! seconds (docs/performance.md); most likely its pull requests and acks
//! waited behind the publishes (nats-server 2.9 handles pull requests in the
//! connection's read loop).

use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Serialize;

use crate::broker::http::{get_json, majority_view};
use crate::broker::security::{Auth, Security};
use crate::broker::Endpoint;
use crate::driver::{
    timed, AgentSource, Answer, Consumer, Driver, ErrorKind, Failure, Incoming, Leadership,
    Producer, Settings, Settle, Settler, Token,
};
use crate::event::Outgoing;
use crate::kind::BrokerKind;
use crate::scenario::{
    ConsumerGroup, DeadLetter, JetstreamSettings, Plan, Recovery, Storage, EVENT_TYPE,
};

/// The stream every event goes to.
pub(super) const STREAM: &str = "BROKERBENCH_ORDERS";

/// The stream that captures the server's advisories about messages that
/// reached `max_deliver` or were terminated: JetStream's documented
/// dead-letter pattern. The originals stay in [`STREAM`] (limits retention)
/// and are fetched by their stream sequence.
pub(super) const DEAD_LETTER_STREAM: &str = "BROKERBENCH_DEAD_LETTERS";

/// The consumer advisories of [`STREAM`] that [`DEAD_LETTER_STREAM`]
/// captures, for consumer `consumer` (`*`: every one). One subject for every
/// kind (nats-server 2.9 lets a consumer filter only within one of its
/// stream's subjects); the reader keeps the two kinds that mean a dead
/// letter, [`DEAD_LETTER_ADVISORIES`].
fn advisories(consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.*.{STREAM}.{consumer}")
}

/// The advisory types that mean a message will not be delivered again:
/// it reached `max_deliver`, or a consumer terminated it.
const DEAD_LETTER_ADVISORIES: [&str; 2] = [
    "io.nats.jetstream.advisory.v1.max_deliver",
    "io.nats.jetstream.advisory.v1.terminated",
];

/// How long a publish waits for its ack: async-nats's default for
/// JetStream publishes, which brokerbench used before it read acks itself.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the broker waits for an ack before redelivering.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The durability and delivery settings a JetStream run used, for the results.
#[derive(Serialize)]
struct Applied {
    storage: Storage,
    replicas: u32,
    publish_acks: bool,
    consumer: &'static str,
    connections: &'static str,
    max_ack_pending: i64,
    ack_wait: String,
    dedup_header: &'static str,
    reconnect: String,
    fsync: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_lettering: Option<String>,
}

/// The producers' NATS connection (also used to set up and to ask for
/// backlogs), and where each consumer group connects.
pub(super) struct JetStreamDriver {
    client: async_nats::Client,
    context: jetstream::Context,
    endpoint: Endpoint,
    settings: JetstreamSettings,
    recovery: Recovery,
    dead_letter: DeadLetter,
    failing: bool,
    /// Whether messages carry `Nats-Msg-Id` and `trace_id` headers.
    headers: bool,
    /// The scenario asks for every write synced before its ack.
    sync_before_confirm: bool,
    /// Copies of each stream: one per node of the cluster.
    replicas: usize,
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
    // async-nats asks for a delay before its very first attempt too (as
    // attempt 1): that one goes at once, or every connection would wait
    // the first backoff step, about a second, before it is made.
    let first = std::sync::atomic::AtomicBool::new(true);
    async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .reconnect_delay_callback(move |attempts| {
            if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                return Duration::ZERO;
            }
            crate::driver::backoff(attempts.saturating_sub(1) as u32, backoff_max)
        })
        .connection_timeout(crate::driver::CALL_TIMEOUT)
        .request_timeout(Some(crate::driver::CALL_TIMEOUT))
}

/// One NATS connection to `endpoint` with `options`, and with the
/// endpoint's TLS and authentication.
pub(super) async fn open_connection(
    endpoint: &Endpoint,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client> {
    let options = secured(options, endpoint.security()).await?;
    timed(
        &format!("connecting to NATS at {}", endpoint.shown()),
        options.connect(endpoint.urls().as_slice()),
    )
    .await
}

/// `options` with TLS (the CA to trust, a client certificate) and the
/// user's credentials: a password, a token, an NKEY seed or a credentials
/// file (JWT).
async fn secured(
    mut options: async_nats::ConnectOptions,
    security: &Security,
) -> Result<async_nats::ConnectOptions> {
    if let Some(tls) = &security.tls {
        options = options.require_tls(true);
        if let Some(ca) = &tls.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some(identity) = &tls.identity {
            options = options.add_client_certificate(identity.cert.clone(), identity.key.clone());
        }
    }
    Ok(match &security.auth {
        None | Some(Auth::External) => options,
        Some(Auth::Password { user, password, .. }) => {
            options.user_and_password(user.clone(), password.expose().to_string())
        }
        Some(Auth::Token(token)) => options.token(token.expose().to_string()),
        Some(Auth::Nkey(seed)) => options.nkey(seed.expose().to_string()),
        // The file is read here, and its content never shown.
        Some(Auth::Creds(path)) => options.credentials_file(path).await.map_err(|e| {
            anyhow::anyhow!(
                "reading the NATS credentials file {}: {}",
                path.display(),
                e
            )
        })?,
    })
}

impl JetStreamDriver {
    /// Connects the producers' NATS connection, for the whole run.
    pub async fn connect(plan: &Plan, endpoint: &Endpoint) -> Result<Self> {
        // Room for every publish ack a producer may have outstanding: a full
        // subscription drops messages.
        let capacity = (plan.load.max_in_flight * 2).max(65_536);
        let options =
            options("brokerbench", plan.recovery.backoff_max).subscription_capacity(capacity);
        let client = open_connection(endpoint, options).await?;
        let context = jetstream::new(client.clone());
        Ok(JetStreamDriver {
            client,
            context,
            endpoint: endpoint.clone(),
            settings: plan.jetstream.clone(),
            recovery: plan.recovery.clone(),
            dead_letter: plan.dead_letter.clone(),
            failing: plan.has_failures(),
            headers: plan.load.headers,
            sync_before_confirm: plan.syncs_before_confirm(),
            replicas: usize::from(plan.cluster.nodes),
        })
    }

    /// A connection of `service`'s own: a consumer group's, or its
    /// dead-letter reader's.
    async fn service_context(&self, service: &str) -> Result<jetstream::Context> {
        // Room for every unacknowledged message the server may send (a full
        // subscription drops messages).
        let unacked = usize::try_from(self.settings.max_ack_pending).unwrap_or(0);
        let options = options(&format!("brokerbench-{service}"), self.recovery.backoff_max)
            .subscription_capacity((unacked + 1024).max(65_536));
        let client = open_connection(&self.endpoint, options).await?;
        Ok(jetstream::new(client))
    }

    /// How this run's consumers hand back a failed message.
    /// Creates `group`'s durable pull consumer (explicit acks, every
    /// message of the stream), or finds it.
    async fn durable(
        &self,
        context: &jetstream::Context,
        group: &ConsumerGroup,
    ) -> Result<jetstream::consumer::PullConsumer> {
        let stream = timed("looking up the stream", context.get_stream(STREAM)).await?;
        let config = pull::Config {
            durable_name: Some(group.group.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_ack_pending: self.settings.max_ack_pending,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            max_deliver: match group.failures {
                Some(_) => i64::from(self.dead_letter.max_deliveries),
                None => 0,
            },
            ..Default::default()
        };
        timed(
            &format!("creating durable consumer {}", group.group),
            stream.get_or_create_consumer(&group.group, config),
        )
        .await
    }

    fn retry(&self) -> Retry {
        Retry {
            delay: self.dead_letter.retry_delay,
            terminate_at: self
                .settings
                .terminate_last_delivery
                .then_some(i64::from(self.dead_letter.max_deliveries)),
        }
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
            num_replicas: self.replicas,
            ..Default::default()
        };
        timed("creating the stream", self.context.create_stream(config)).await?;
        let _ = timed(
            "deleting an old dead-letter stream",
            self.context.delete_stream(DEAD_LETTER_STREAM),
        )
        .await;
        if self.failing {
            // Created before the load: an advisory nobody captures is gone.
            let config = stream::Config {
                name: DEAD_LETTER_STREAM.to_string(),
                subjects: vec![advisories("*")],
                storage: self.storage(),
                num_replicas: self.replicas,
                ..Default::default()
            };
            timed(
                "creating the dead-letter stream",
                self.context.create_stream(config),
            )
            .await?;
        }
        Ok(())
    }

    async fn producer(&self, _id: u32) -> Result<Box<dyn Producer>> {
        Ok(Box::new(
            JetStreamProducer::new(self.client.clone(), self.headers).await?,
        ))
    }

    async fn consumer(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        let context = self.service_context(&group.group).await?;
        let consumer = self.durable(&context, group).await?;
        // async-nats's own pull stream, with its defaults (30 s request expiry,
        // 15 s idle heartbeat). Against nats-server 2.9 a shorter expiry or
        // heartbeat made delivery stall for 1-5 s at 500 msg/s (missed
        // heartbeats restart the pull), and explicit batch requests were worse;
        // the defaults gave sub-millisecond medians. The stalls at ~150k
        // msg/s went away with a connection per group (module doc);
        // the drain timeout would still mark a run incomplete rather than
        // hide one.
        let messages = timed("starting to pull", consumer.messages()).await?;
        Ok(Box::new(JetStreamConsumer {
            consumer,
            messages: Some(messages),
            client: context.client(),
            recovery: self.recovery.clone(),
            retry: self.retry(),
        }))
    }

    /// The group's durable pull consumer, made here as for brokerbench's
    /// own consumer, for an agent to pull from.
    async fn agent_source(&self, group: &ConsumerGroup) -> Result<AgentSource> {
        self.durable(&self.context, group).await?;
        let retry = self.retry();
        Ok(AgentSource {
            broker: BrokerKind::Jetstream,
            url: self.endpoint.url(),
            source: serde_json::json!({
                "stream": STREAM,
                "durable": group.group,
                "nak_delay_ms": retry.delay.as_millis() as u64,
                "terminate_at": retry.terminate_at,
            }),
        })
    }

    /// A durable pull consumer of the group's advisories in the dead-letter
    /// stream; each delivery is the original message, fetched by the
    /// advisory's `stream_seq`.
    async fn dead_letters(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        let name = format!("{}-dead-letters", group.group);
        let context = self.service_context(&name).await?;
        let captured = timed(
            "looking up the dead-letter stream",
            context.get_stream(DEAD_LETTER_STREAM),
        )
        .await?;
        let config = pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            filter_subject: advisories(&group.group),
            ..Default::default()
        };
        let consumer: jetstream::consumer::PullConsumer = timed(
            &format!("creating durable consumer {name}"),
            captured.get_or_create_consumer(&name, config),
        )
        .await?;
        let messages = timed("starting to pull", consumer.messages()).await?;
        let orders = timed("looking up the stream", context.get_stream(STREAM)).await?;
        Ok(Box::new(DeadLetterReader {
            advisories: JetStreamConsumer {
                consumer,
                messages: Some(messages),
                client: context.client(),
                recovery: self.recovery.clone(),
                retry: self.retry(),
            },
            orders,
            pulled: None,
        }))
    }

    fn settings(&self) -> Settings {
        Settings::of(&Applied {
            storage: self.settings.storage,
            replicas: self.replicas as u32,
            publish_acks: true,
            consumer: "durable pull, explicit ack after processing",
            connections: "one for the producers, one per consumer group and per dead-letter reader",
            max_ack_pending: self.settings.max_ack_pending,
            ack_wait: humantime::format_duration(ACK_WAIT).to_string(),
            dedup_header: if self.headers {
                "Nats-Msg-Id = order_id"
            } else {
                "none (headers = false)"
            },
            reconnect: crate::driver::backoff_description(&self.recovery),
            fsync: if self.sync_before_confirm {
                "sync_interval: always (server-wide: set on the servers brokerbench starts; others must be configured so)"
            } else {
                "server default (sync_interval 2 min): acked once written to the OS"
            },
            dead_lettering: self.failing.then(|| {
                format!(
                    "max_deliver {}, NAK with delay {}{}; stream {DEAD_LETTER_STREAM} captures the MAX_DELIVERIES and MSG_TERMINATED advisories; originals fetched by stream sequence",
                    self.dead_letter.max_deliveries,
                    humantime::format_duration(self.dead_letter.retry_delay),
                    if self.settings.terminate_last_delivery {
                        ", +TERM at the last delivery"
                    } else {
                        ""
                    }
                )
            }),
        })
    }

    /// Pending plus ack pending of the group's durable consumer; 0 when the
    /// server says the stream or the consumer is gone (a memory stream after
    /// a crash): then it holds nothing for the group. With failures, plus
    /// the advisories its dead-letter reader has not read.
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
        let mut held = match timed_raw(stream.consumer_info(&group.group)).await? {
            Ok(info) => info.num_pending + info.num_ack_pending as u64,
            Err(e) => match e.kind() {
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => 0,
                _ => return Err(e.into()),
            },
        };
        // Advisories not yet read from the dead-letter stream.
        if group.failures.is_some() {
            if let Ok(Ok(captured)) = timed_raw(self.context.get_stream(DEAD_LETTER_STREAM)).await {
                let reader = format!("{}-dead-letters", group.group);
                if let Ok(Ok(info)) = timed_raw(captured.consumer_info(&reader)).await {
                    held += info.num_pending + info.num_ack_pending as u64;
                }
            }
        }
        Ok(held)
    }

    async fn stored(&self) -> Result<u64> {
        let mut stream = timed("asking for the stream", self.context.get_stream(STREAM)).await?;
        let info = timed("asking for the stream's state", stream.info()).await?;
        Ok(info.state.messages)
    }

    async fn teardown(&self) -> Result<()> {
        timed("deleting the stream", self.context.delete_stream(STREAM)).await?;
        if self.failing {
            timed(
                "deleting the dead-letter stream",
                self.context.delete_stream(DEAD_LETTER_STREAM),
            )
            .await?;
        }
        Ok(())
    }

    async fn close(&self) {
        let _ = timed("flushing the NATS connection", self.client.flush()).await;
    }

    /// The stream's leader and its current replicas, from the stream's info
    /// (which the stream's leader answers).
    async fn leadership(&self) -> Result<Option<Leadership>> {
        if self.replicas < 2 {
            return Ok(None);
        }
        // Each server's own view, where brokerbench can ask each (its local
        // clusters' monitoring): the one most of them give. Through the
        // client, the one server it is connected to answers, which may be
        // one cut off from the others and still calling itself the leader.
        let monitors = self.endpoint.admin();
        if !monitors.is_empty() {
            let asks = monitors.iter().map(|base| server_view(base));
            return majority_view(asks, monitors.len()).await.map(Some);
        }
        let mut stream = timed("looking up the stream", self.context.get_stream(STREAM)).await?;
        let info = timed("asking for the stream's info", stream.info()).await?;
        let Some(cluster) = &info.cluster else {
            return Ok(None);
        };
        let leader = cluster.leader.clone();
        let in_sync = leader
            .iter()
            .cloned()
            .chain(
                cluster
                    .replicas
                    .iter()
                    .filter(|peer| peer.current && !peer.offline)
                    .map(|peer| peer.name.clone()),
            )
            .collect();
        Ok(Some(Leadership {
            leader,
            in_sync,
            ..Leadership::default()
        }))
    }
}

/// The stream's leader and current replicas as one server reports them
/// (`/jsz` of its monitoring port at `base`).
async fn server_view(base: &str) -> Result<Leadership> {
    let jsz = get_json(base, "/jsz?accounts=true&streams=true").await?;
    let cluster = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
        .find(|stream| stream["name"] == STREAM)
        .map(|stream| &stream["cluster"])
        .with_context(|| format!("{base} does not know the stream {STREAM}"))?;
    let leader = cluster["leader"].as_str().map(str::to_string);
    let replicas = cluster["replicas"].as_array().into_iter().flatten();
    let in_sync = leader
        .iter()
        .cloned()
        .chain(
            replicas
                .filter(|peer| peer["current"] == true && peer["offline"] != true)
                .filter_map(|peer| peer["name"].as_str().map(str::to_string)),
        )
        .collect();
    Ok(Leadership {
        leader,
        in_sync,
        ..Leadership::default()
    })
}

/// Publishes to the stream's subject with a reply subject of its own,
/// `<inbox>.<token>`, and reads every publish ack from one wildcard
/// subscription, as nats.go's `PublishAsync` does: no request, oneshot
/// channel or timer per message.
struct JetStreamProducer {
    client: async_nats::Client,
    /// `_INBOX.<unique>.`: each send's reply subject is this and its token.
    inbox: String,
    acks: async_nats::Subscriber,
    /// Whether each message carries `Nats-Msg-Id` and `trace_id` headers.
    headers: bool,
}

impl JetStreamProducer {
    async fn new(client: async_nats::Client, headers: bool) -> Result<Self> {
        let inbox = format!("{}.", client.new_inbox());
        let acks = timed(
            "subscribing to publish acks",
            client.subscribe(format!("{inbox}*")),
        )
        .await?;
        Ok(JetStreamProducer {
            client,
            inbox,
            acks,
            headers,
        })
    }
}

/// The answer a publish ack carries: the stream stored it, or an error
/// (`{"error":{"code":503,...}}`), or no stream listens (status 503).
fn publish_ack(ack: &async_nats::Message) -> Result<(), Failure> {
    if ack.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        return Err(ErrorKind::Refused.because("no stream listens on the subject (no responders)"));
    }
    let error = ack
        .payload
        .windows(ERROR_FIELD.len())
        .any(|w| w == ERROR_FIELD);
    if !error {
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct Refusal {
        error: Option<serde_json::Value>,
    }
    let why = serde_json::from_slice::<Refusal>(&ack.payload)
        .ok()
        .and_then(|r| r.error)
        .map_or_else(
            || String::from_utf8_lossy(&ack.payload).into_owned(),
            |e| e.to_string(),
        );
    Err(ErrorKind::Refused.because(why))
}

/// What marks a publish ack as an error.
const ERROR_FIELD: &[u8] = b"\"error\"";

#[async_trait]
impl Producer for JetStreamProducer {
    async fn send(&mut self, token: Token, message: Outgoing) -> Result<(), Failure> {
        let mut reply = String::with_capacity(self.inbox.len() + 20);
        reply.push_str(&self.inbox);
        reply.push_str(itoa::Buffer::new().format(token));
        let order_id = message.order_id();
        let payload = message.payload.into();
        let publish = if self.headers {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, order_id.to_string());
            headers.insert("trace_id", message.trace_id.to_string());
            tokio::time::timeout(
                crate::driver::CALL_TIMEOUT,
                self.client
                    .publish_with_reply_and_headers(EVENT_TYPE, reply, headers, payload),
            )
            .await
        } else {
            tokio::time::timeout(
                crate::driver::CALL_TIMEOUT,
                self.client.publish_with_reply(EVENT_TYPE, reply, payload),
            )
            .await
        };
        match publish {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ErrorKind::Send.because(e)),
            Err(_) => Err(ErrorKind::Timeout.because("publish: no answer")),
        }
    }

    /// As long as async-nats waits for a publish ack by default (5 s).
    fn confirm_timeout(&self) -> Option<Duration> {
        Some(PUBLISH_ACK_TIMEOUT)
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer> {
        loop {
            match self.acks.poll_next_unpin(cx) {
                Poll::Ready(Some(ack)) => {
                    let token = ack
                        .subject
                        .as_str()
                        .rsplit('.')
                        .next()
                        .and_then(|t| t.parse::<Token>().ok());
                    // Something else on our inbox: not an answer.
                    if let Some(token) = token {
                        return Poll::Ready((token, publish_ack(&ack)));
                    }
                }
                // The subscription ended (the client closed): what is
                // outstanding times out.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

struct JetStreamConsumer {
    consumer: jetstream::consumer::PullConsumer,
    /// The pull stream; `None` after it ended or failed, until pulled again.
    messages: Option<pull::Stream>,
    /// The group's own connection.
    client: async_nats::Client,
    recovery: Recovery,
    /// How a failed message is handed back.
    retry: Retry,
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

impl JetStreamConsumer {
    /// The next message, pulling again after the stream ended or failed.
    async fn pull(&mut self) -> Result<jetstream::Message, ErrorKind> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                self.resubscribe().await?;
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => return Ok(message),
                // Counted, then pulled again on the next call.
                Some(Err(_)) => {
                    self.messages = None;
                    return Err(ErrorKind::Receive);
                }
                None => self.messages = None,
            }
        }
    }
}

/// How a consumer hands back a failed message.
#[derive(Clone, Copy)]
struct Retry {
    /// The NAK delay.
    delay: Duration,
    /// Terminate instead at this delivery (`max_deliver`), if set.
    terminate_at: Option<i64>,
}

/// Settles `message`: ack; for a failed attempt NAK with the retry delay
/// (the server counts deliveries and stops at `max_deliver`), or `+TERM` at
/// the last delivery when so configured.
/// `delivered` is the message's delivery count.
fn settler(message: jetstream::Message, delivered: i64, retry: Retry) -> Settler {
    Box::new(move |how| {
        Box::pin(async move {
            let kind = match how {
                Settle::Ack => jetstream::AckKind::Ack,
                // Never redelivered; the group's dead-letter stream, if it
                // has one, captures the MSG_TERMINATED advisory.
                Settle::Refuse => jetstream::AckKind::Term,
                Settle::Failed { .. } if retry.terminate_at.is_some_and(|at| delivered >= at) => {
                    jetstream::AckKind::Term
                }
                Settle::Failed { .. } => jetstream::AckKind::Nak(Some(retry.delay)),
            };
            match tokio::time::timeout(crate::driver::CALL_TIMEOUT, message.ack_with(kind)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(_) => Err(ErrorKind::Ack),
            }
        })
    })
}

#[async_trait]
impl Consumer for JetStreamConsumer {
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        let message = match self.pull().await {
            Ok(message) => message,
            Err(kind) => return Some(Err(kind)),
        };
        let delivered = message.info().map_or(0, |info| info.delivered);
        Some(Ok(Incoming {
            receipt: None,
            payload: message.payload.clone(),
            redelivered: delivered > 1,
            settle: settler(message, delivered, self.retry),
        }))
    }

    async fn close(mut self: Box<Self>) {
        self.finish().await;
    }
}

impl JetStreamConsumer {
    /// Stops pulling, and sends what the group's own connection still
    /// queues (its last acks) before the connection goes with the consumer:
    /// a request on it goes out after them, and its answer comes after the
    /// server read them. The backlog is asked for on the producers'
    /// connection after this. Not while the connection is down (a broker
    /// killed for good): then nothing queued can go out anyway.
    async fn finish(&mut self) {
        self.messages = None;
        if self.client.connection_state() == async_nats::connection::State::Connected {
            let _ = timed_raw(self.consumer.get_info()).await;
        }
    }
}

/// The part of an advisory the dead-letter reader needs.
#[derive(serde::Deserialize)]
struct Advisory {
    r#type: String,
    stream_seq: Option<u64>,
}

/// Reads a group's dead letters: advisories from the capture stream, each
/// turned into the original message.
struct DeadLetterReader {
    advisories: JetStreamConsumer,
    orders: jetstream::stream::Stream,
    /// An advisory pulled, with the original's stream sequence, not yet handed on.
    pulled: Option<(jetstream::Message, Option<u64>)>,
}

#[async_trait]
impl Consumer for DeadLetterReader {
    /// Cancel-safe, as the run's consumer loop needs: an advisory pulled
    /// but not yet turned into its original waits in `pulled` for the next
    /// call (dropped, it would come back only after the ack wait).
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        while self.pulled.is_none() {
            let advisory = match self.advisories.pull().await {
                Ok(message) => message,
                Err(kind) => return Some(Err(kind)),
            };
            match serde_json::from_slice::<Advisory>(&advisory.payload) {
                Ok(a) if !DEAD_LETTER_ADVISORIES.contains(&a.r#type.as_str()) => {
                    // Another kind of advisory (a consumer created, say).
                    let _ = timed_raw(advisory.ack()).await;
                }
                Ok(a) => self.pulled = Some((advisory, a.stream_seq)),
                Err(_) => self.pulled = Some((advisory, None)),
            }
        }
        // A dead letter whose advisory cannot be read, or whose original is
        // gone from the stream, is one that is not ours: counted, never
        // dropped. Any other failure to fetch the original is retried: the
        // advisory stays in `pulled`.
        let original = match self.pulled.as_ref().and_then(|(_, seq)| *seq) {
            Some(seq) => match timed_raw(self.orders.get_raw_message(seq)).await {
                Ok(Ok(message)) => Some(message.payload.to_vec()),
                Ok(Err(e))
                    if matches!(
                        e.kind(),
                        jetstream::stream::RawMessageErrorKind::NoMessageFound
                    ) =>
                {
                    None
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Some(Err(ErrorKind::Receive));
                }
            },
            None => None,
        };
        let (advisory, _) = self.pulled.take()?;
        Some(Ok(Incoming {
            receipt: None,
            payload: original.unwrap_or_default().into(),
            redelivered: false,
            settle: settler(
                advisory,
                0,
                Retry {
                    delay: Duration::ZERO,
                    terminate_at: None,
                },
            ),
        }))
    }

    async fn close(mut self: Box<Self>) {
        self.advisories.finish().await;
    }
}
