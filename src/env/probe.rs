//! Speaking each broker's real protocol, with the real client crate.
//!
//! Readiness is a protocol handshake (AMQP connection, NATS connection plus a
//! JetStream account query, Kafka metadata), never a fixed sleep or an open
//! TCP port: a port can be open long before the broker accepts work.
//! [`publish_durable`] and [`fetch_one`] push one message through a broker with
//! its durable settings; `env smoke` and the broker tests use them, and they
//! show the minimum topology each broker needs.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;

use super::{BrokerKind, Endpoint};

/// How long one network call of a probe may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `fut` with [`CALL_TIMEOUT`], naming `what` if it runs out.
async fn timed<T, E: Into<anyhow::Error>>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T> {
    crate::driver::within(CALL_TIMEOUT, what, fut).await
}

/// One readiness attempt: `Ok` once the broker answers its protocol's handshake.
pub async fn handshake(endpoint: &Endpoint) -> Result<()> {
    match endpoint.kind {
        BrokerKind::Rabbitmq => {
            let conn = amqp_connect(endpoint).await?;
            let _ = timed(
                "closing AMQP connection",
                conn.close(200, "probe done".into()),
            )
            .await;
            Ok(())
        }
        BrokerKind::Jetstream => {
            // A raw `$JS.API.INFO` request: async-nats 0.51's typed
            // `query_account` cannot parse nats-server 2.9's reply.
            let client = nats_connect(endpoint).await?;
            let reply = timed(
                "querying the JetStream account",
                client.request("$JS.API.INFO", "".into()),
            )
            .await?;
            let info: serde_json::Value =
                serde_json::from_slice(&reply.payload).context("JetStream account info")?;
            if let Some(error) = info.get("error") {
                bail!("JetStream is not available: {error}");
            }
            Ok(())
        }
        BrokerKind::Kafka => {
            let url = endpoint.url();
            tokio::task::spawn_blocking(move || {
                use rdkafka::producer::{BaseProducer, Producer};
                let producer: BaseProducer = kafka_config(&url).create()?;
                producer.client().fetch_metadata(None, CALL_TIMEOUT)?;
                Ok::<_, anyhow::Error>(())
            })
            .await?
            .context("fetching Kafka metadata")
        }
    }
}

/// Publishes `payload` to the durable queue/stream/topic `name` and waits for
/// the broker's confirmation (publisher confirm, JetStream ack, acks=all).
/// Declares the topology first, so it may be called on a fresh broker.
pub async fn publish_durable(endpoint: &Endpoint, name: &str, payload: &[u8]) -> Result<()> {
    match endpoint.kind {
        BrokerKind::Rabbitmq => {
            use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
            let conn = amqp_connect(endpoint).await?;
            let channel = amqp_queue(&conn, name).await?;
            timed(
                "enabling publisher confirms",
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
            let props = lapin::BasicProperties::default().with_delivery_mode(2); // persistent
            let confirm = timed(
                "publishing",
                channel.basic_publish(
                    "".into(),
                    name.into(),
                    BasicPublishOptions::default(),
                    payload,
                    props,
                ),
            )
            .await?;
            let confirmation = timed("waiting for the publisher confirm", confirm).await?;
            if !confirmation.is_ack() {
                bail!("RabbitMQ did not confirm the message: {confirmation:?}");
            }
            let _ = timed("closing AMQP connection", conn.close(200, "done".into())).await;
            Ok(())
        }
        BrokerKind::Jetstream => {
            let js = async_nats::jetstream::new(nats_connect(endpoint).await?);
            jetstream_stream(&js, name).await?;
            let ack = timed(
                "publishing",
                js.publish(name.to_string(), payload.to_vec().into()),
            )
            .await?;
            timed("waiting for the JetStream ack", ack.into_future()).await?;
            Ok(())
        }
        BrokerKind::Kafka => {
            use rdkafka::producer::{FutureProducer, FutureRecord};
            kafka_topic(endpoint, name).await?;
            let producer: FutureProducer = kafka_config(&endpoint.url())
                .set("acks", "all")
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", "10000")
                .create()?;
            let record = FutureRecord::<(), [u8]>::to(name).payload(payload);
            producer
                .send(record, CALL_TIMEOUT)
                .await
                .map_err(|(err, _)| anyhow!(err))
                .context("waiting for the Kafka delivery report")?;
            Ok(())
        }
    }
}

/// Receives the next message of `name` for the durable consumer `consumer` and
/// acknowledges it (commits its offset). Waits up to `wait` for one to arrive.
pub async fn fetch_one(
    endpoint: &Endpoint,
    name: &str,
    consumer: &str,
    wait: Duration,
) -> Result<Vec<u8>> {
    let deadline = Instant::now() + wait;
    match endpoint.kind {
        BrokerKind::Rabbitmq => {
            use lapin::options::{BasicAckOptions, BasicGetOptions};
            let conn = amqp_connect(endpoint).await?;
            let channel = amqp_queue(&conn, name).await?;
            loop {
                let got = timed(
                    "basic.get",
                    channel.basic_get(name.into(), BasicGetOptions::default()),
                )
                .await?;
                if let Some(message) = got {
                    let data = message.delivery.data.clone();
                    timed(
                        "acknowledging",
                        message.delivery.ack(BasicAckOptions::default()),
                    )
                    .await?;
                    let _ = timed("closing AMQP connection", conn.close(200, "done".into())).await;
                    return Ok(data);
                }
                if Instant::now() >= deadline {
                    bail!("no message in queue '{name}' within {wait:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        BrokerKind::Jetstream => {
            use async_nats::jetstream::consumer::pull;
            let js = async_nats::jetstream::new(nats_connect(endpoint).await?);
            let stream = jetstream_stream(&js, name).await?;
            let config = pull::Config {
                durable_name: Some(consumer.to_string()),
                ..Default::default()
            };
            let pull = timed(
                "creating the pull consumer",
                stream.get_or_create_consumer(consumer, config),
            )
            .await?;
            let mut batch = timed(
                "fetching",
                pull.fetch().max_messages(1).expires(wait).messages(),
            )
            .await?;
            let message = tokio::time::timeout(wait + CALL_TIMEOUT, batch.next())
                .await
                .ok()
                .flatten()
                .with_context(|| format!("no message on stream '{name}' within {wait:?}"))?
                .map_err(|e| anyhow!(e))?;
            let ack = async { message.double_ack().await.map_err(|e| anyhow!("{e}")) };
            timed("acknowledging", ack).await?;
            Ok(message.payload.to_vec())
        }
        BrokerKind::Kafka => {
            use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
            use rdkafka::Message;
            let consumer: StreamConsumer = kafka_config(&endpoint.url())
                .set("group.id", consumer)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .create()?;
            consumer.subscribe(&[name])?;
            let message = tokio::time::timeout(wait, consumer.recv())
                .await
                .with_context(|| format!("no message on topic '{name}' within {wait:?}"))??;
            let data = message.payload().unwrap_or_default().to_vec();
            consumer.commit_message(&message, CommitMode::Sync)?;
            Ok(data)
        }
    }
}

async fn amqp_connect(endpoint: &Endpoint) -> Result<lapin::Connection> {
    let props =
        lapin::ConnectionProperties::default().with_connection_name("brokerbench-probe".into());
    timed(
        &format!("connecting to RabbitMQ at {}", endpoint.shown()),
        lapin::Connection::connect(&endpoint.url(), props),
    )
    .await
}

async fn amqp_queue(conn: &lapin::Connection, name: &str) -> Result<lapin::Channel> {
    use lapin::options::QueueDeclareOptions;
    let channel = timed("opening a channel", conn.create_channel()).await?;
    timed(
        "declaring the queue",
        channel.queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            Default::default(),
        ),
    )
    .await?;
    Ok(channel)
}

async fn nats_connect(endpoint: &Endpoint) -> Result<async_nats::Client> {
    timed(
        &format!("connecting to NATS at {}", endpoint.shown()),
        async_nats::ConnectOptions::new()
            .connection_timeout(CALL_TIMEOUT)
            .request_timeout(Some(CALL_TIMEOUT))
            .connect(endpoint.url()),
    )
    .await
}

async fn jetstream_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Result<async_nats::jetstream::stream::Stream> {
    use async_nats::jetstream::stream;
    let config = stream::Config {
        name: name.replace('.', "_"),
        subjects: vec![name.to_string()],
        storage: stream::StorageType::File,
        ..Default::default()
    };
    timed("creating the stream", js.get_or_create_stream(config)).await
}

fn kafka_config(bootstrap: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "5000")
        .set("log_level", "3");
    config
}

async fn kafka_topic(endpoint: &Endpoint, name: &str) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = kafka_config(&endpoint.url()).create()?;
    let topic = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
    let results = timed(
        "creating the topic",
        admin.create_topics([&topic], &options),
    )
    .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("creating topic '{topic}': {code}"),
        }
    }
    Ok(())
}
