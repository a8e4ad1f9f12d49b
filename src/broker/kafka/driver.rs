//! Kafka through rdkafka (librdkafka): a topic with N partitions keyed by
//! `user_id`, the idempotent producer with acks=all (or the configured acks),
//! delivery reports as confirmations, one consumer group per group, and
//! offsets committed only up to what has been processed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message};
use serde::Serialize;

use crate::driver::{
    timed, Acker, Confirmation, Consumer, Driver, ErrorKind, Failure, Incoming, Producer, Settings,
    CONFIRM_TIMEOUT,
};
use crate::env::Endpoint;
use crate::event::Outgoing;
use crate::scenario::{
    Acks, Compression, ConsumerGroup, KafkaSettings, Plan, Recovery, EVENT_TYPE,
};

/// The durability and delivery settings a Kafka run used, for the results.
#[derive(Serialize)]
struct Applied {
    partitions: i32,
    replicas: u32,
    acks: Acks,
    idempotent_producer: bool,
    compression: Compression,
    key: &'static str,
    consumer_commit: &'static str,
    reconnect: String,
}

/// One producer client shared by every producer task.
pub(super) struct KafkaDriver {
    bootstrap: String,
    producer: FutureProducer,
    settings: KafkaSettings,
    recovery: Recovery,
    run_id: u64,
}

/// The configuration every Kafka client of ours starts from, the readiness
/// probe's included.
pub(super) fn base_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "brokerbench")
        // librdkafka's own exponential reconnect backoff, with jitter.
        .set("reconnect.backoff.ms", "1000")
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    config
}

impl KafkaDriver {
    /// The group id of `group` in this run: scoped to the run, so offsets
    /// of an earlier run never apply.
    fn group_id(&self, group: &ConsumerGroup) -> String {
        format!("{}.{:x}", group.group, self.run_id)
    }

    /// Creates the producer client and checks the broker answers.
    pub async fn connect(plan: &Plan, endpoint: &Endpoint, run_id: u64) -> Result<Self> {
        let bootstrap = endpoint.url();
        let settings = plan.kafka.clone();
        let mut config = base_config(&bootstrap);
        config
            .set("acks", settings.acks.as_str())
            .set(
                "enable.idempotence",
                (settings.acks == Acks::All).to_string(),
            )
            .set("compression.type", settings.compression.as_str())
            .set("linger.ms", "5")
            .set("request.timeout.ms", "10000")
            .set(
                "message.timeout.ms",
                // librdkafka retries inside the producer until this runs out.
                plan.recovery
                    .give_up
                    .max(CONFIRM_TIMEOUT)
                    .as_millis()
                    .to_string(),
            )
            .set("queue.buffering.max.messages", "1000000")
            .set(
                "reconnect.backoff.max.ms",
                plan.recovery.backoff_max.as_millis().to_string(),
            );
        let producer: FutureProducer = config.create().context("creating the Kafka producer")?;
        let client = producer.clone();
        tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(None, crate::driver::CALL_TIMEOUT)
        })
        .await?
        .with_context(|| format!("connecting to Kafka at {bootstrap}"))?;
        Ok(KafkaDriver {
            bootstrap,
            producer,
            settings,
            recovery: plan.recovery.clone(),
            run_id,
        })
    }
}

#[async_trait]
impl Driver for KafkaDriver {
    async fn setup(&self) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = base_config(&self.bootstrap).create()?;
        let options = AdminOptions::new().operation_timeout(Some(crate::driver::CALL_TIMEOUT));
        // A fresh topic; deletion is asynchronous in Kafka, so creation retries.
        let _ = timed(
            "deleting an old topic",
            admin.delete_topics(&[EVENT_TYPE], &options),
        )
        .await;
        let topic = NewTopic::new(
            EVENT_TYPE,
            self.settings.partitions,
            TopicReplication::Fixed(1),
        );
        let deadline = Instant::now() + crate::driver::CALL_TIMEOUT;
        loop {
            let results = timed(
                "creating the topic",
                admin.create_topics([&topic], &options),
            )
            .await?;
            match results.into_iter().next() {
                Some(Ok(_)) => return Ok(()),
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists)))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(Err((name, code))) => bail!("creating topic {name}: {code}"),
                None => bail!("creating topic {EVENT_TYPE}: no answer"),
            }
        }
    }

    async fn producer(&self, _id: u32) -> Result<Box<dyn Producer>> {
        Ok(Box::new(KafkaProducer {
            producer: self.producer.clone(),
        }))
    }

    async fn consumer(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        let group_id = self.group_id(group);
        let consumer: StreamConsumer = base_config(&self.bootstrap)
            .set("group.id", &group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                self.settings.fetch_wait_max.as_millis().to_string(),
            )
            .set("session.timeout.ms", "10000")
            .set(
                "reconnect.backoff.max.ms",
                self.recovery.backoff_max.as_millis().to_string(),
            )
            .create()
            .context("creating the Kafka consumer")?;
        consumer.subscribe(&[EVENT_TYPE]).context("subscribing")?;
        let consumer = Arc::new(consumer);
        // Ready means partitions assigned; a message that arrives meanwhile is kept.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut first = None;
        while first.is_none() && consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            if Instant::now() > deadline {
                bail!("consumer group {group_id} got no partitions within 30 s");
            }
            if let Ok(received) =
                tokio::time::timeout(Duration::from_millis(100), receive(&consumer)).await
            {
                first = Some(received);
            }
        }
        Ok(Box::new(KafkaConsumer {
            consumer,
            offsets: Arc::default(),
            first,
        }))
    }

    fn settings(&self) -> Settings {
        Settings::of(&Applied {
            partitions: self.settings.partitions,
            replicas: 1,
            acks: self.settings.acks,
            idempotent_producer: self.settings.acks == Acks::All,
            compression: self.settings.compression,
            key: "user_id",
            consumer_commit: "offsets of processed messages, every 1 s",
            reconnect: crate::driver::backoff_description(&self.recovery),
        })
    }

    /// The lag of the group's committed offsets behind the end of each
    /// partition (from the start of a partition it never committed on).
    async fn backlog(&self, group: &ConsumerGroup) -> Result<u64> {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::{Offset, TopicPartitionList};
        let group_id = self.group_id(group);
        let bootstrap = self.bootstrap.clone();
        let partitions = self.settings.partitions;
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let consumer: BaseConsumer = base_config(&bootstrap)
                .set("group.id", &group_id)
                .set("enable.auto.commit", "false")
                .create()
                .context("creating a Kafka client to ask for the lag")?;
            let mut asked = TopicPartitionList::new();
            for partition in 0..partitions {
                asked.add_partition(EVENT_TYPE, partition);
            }
            let committed = consumer.committed_offsets(asked, crate::driver::CALL_TIMEOUT)?;
            let mut lag = 0;
            for element in committed.elements() {
                let (low, high) = consumer.fetch_watermarks(
                    EVENT_TYPE,
                    element.partition(),
                    crate::driver::CALL_TIMEOUT,
                )?;
                let from = match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => low,
                };
                lag += u64::try_from(high - from).unwrap_or(0);
            }
            Ok(lag)
        })
        .await?
    }

    async fn close(&self) {
        let producer = self.producer.clone();
        let _ =
            tokio::task::spawn_blocking(move || producer.flush(crate::driver::CALL_TIMEOUT)).await;
    }
}

struct KafkaProducer {
    producer: FutureProducer,
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&mut self, message: Outgoing) -> Result<Confirmation, Failure> {
        let headers = OwnedHeaders::new().insert(Header {
            key: "trace_id",
            value: Some(message.trace_id.as_str()),
        });
        let record = FutureRecord::to(EVENT_TYPE)
            .key(&message.user_id)
            .payload(&message.payload)
            .headers(headers);
        // Enqueues in librdkafka; the delivery report is the confirmation.
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| ErrorKind::Send.because(e))?;
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((
                    e @ KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
                    _,
                ))) => Err(ErrorKind::Timeout.because(e)),
                Ok(Err((e, _))) => Err(ErrorKind::Refused.because(e)),
                Err(_canceled) => Err(ErrorKind::Connection.because("the producer was closed")),
            }
        }))
    }
}

/// Per partition: offsets received but not processed, and the next offset.
#[derive(Default)]
struct PartitionOffsets {
    pending: BTreeSet<i64>,
    next: i64,
}

struct KafkaConsumer {
    consumer: Arc<StreamConsumer>,
    offsets: Arc<Mutex<HashMap<i32, PartitionOffsets>>>,
    first: Option<Result<Received, ErrorKind>>,
}

/// A message copied out of librdkafka's buffer.
struct Received {
    payload: Vec<u8>,
    partition: i32,
    offset: i64,
}

async fn receive(consumer: &StreamConsumer) -> Result<Received, ErrorKind> {
    match consumer.recv().await {
        Ok(m) => Ok(Received {
            payload: m.payload().unwrap_or_default().to_vec(),
            partition: m.partition(),
            offset: m.offset(),
        }),
        Err(_) => Err(ErrorKind::Receive),
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        let received = match self.first.take() {
            Some(first) => first,
            None => receive(&self.consumer).await,
        };
        let Received {
            payload,
            partition,
            offset,
        } = match received {
            Ok(r) => r,
            Err(kind) => return Some(Err(kind)),
        };
        {
            let mut offsets = self.offsets.lock().expect("offsets lock");
            let p = offsets.entry(partition).or_default();
            p.pending.insert(offset);
            p.next = p.next.max(offset + 1);
        }
        let consumer = Arc::clone(&self.consumer);
        let offsets = Arc::clone(&self.offsets);
        let ack: Acker = Box::new(move || {
            Box::pin(async move {
                // Commit only below the lowest offset still being processed:
                // processing runs concurrently, and a commit must never skip one.
                let low = {
                    let mut offsets = offsets.lock().expect("offsets lock");
                    let p = offsets.get_mut(&partition).expect("offset was recorded");
                    p.pending.remove(&offset);
                    p.pending.first().copied().unwrap_or(p.next)
                };
                // librdkafka stores (and later commits) the given offset + 1.
                if low > 0 {
                    consumer
                        .store_offset(EVENT_TYPE, partition, low - 1)
                        .map_err(|_| ErrorKind::Ack)?;
                }
                Ok(())
            })
        });
        Some(Ok(Incoming {
            payload,
            redelivered: false,
            ack,
        }))
    }

    async fn close(self: Box<Self>) {
        // librdkafka commits the stored (processed) offsets when the consumer
        // closes; closing blocks, so it runs off the async threads.
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    }
}
