//! What is known about each broker, as scores from 0 to 10 with the reason
//! in plain words. docs/advisor.md gives the sources.

use super::answers::{
    Answers, DeadLetter, Delivery, Hosting, Language, Ordering, Replay, RATE_ANY,
    RATE_SINGLE_QUEUE, RATE_SINGLE_STREAM,
};
use crate::kind::BrokerKind;

/// A score and its reason, for one broker.
pub(crate) type Judged = (f64, String);

/// One value per broker, named by broker. Keyed, not positional: a broker
/// added to [`BrokerKind`] is a compile error here (in [`PerBroker::get`])
/// and in every fact written for the others, until its own are written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PerBroker<T> {
    pub rabbitmq: T,
    pub jetstream: T,
    pub kafka: T,
}

impl<T> PerBroker<T> {
    /// Each broker's value from `f`.
    pub(crate) fn from_fn(mut f: impl FnMut(BrokerKind) -> T) -> Self {
        PerBroker {
            rabbitmq: f(BrokerKind::Rabbitmq),
            jetstream: f(BrokerKind::Jetstream),
            kafka: f(BrokerKind::Kafka),
        }
    }

    /// The value of `kind`.
    pub(crate) fn get(&self, kind: BrokerKind) -> &T {
        match kind {
            BrokerKind::Rabbitmq => &self.rabbitmq,
            BrokerKind::Jetstream => &self.jetstream,
            BrokerKind::Kafka => &self.kafka,
        }
    }

    /// The value of `kind`, to change.
    pub(crate) fn get_mut(&mut self, kind: BrokerKind) -> &mut T {
        match kind {
            BrokerKind::Rabbitmq => &mut self.rabbitmq,
            BrokerKind::Jetstream => &mut self.jetstream,
            BrokerKind::Kafka => &mut self.kafka,
        }
    }
}

/// One criterion: its name, its weight for these answers, and per broker a
/// score and a reason.
#[derive(Clone, Debug)]
pub(crate) struct Criterion {
    pub name: &'static str,
    pub weight: f64,
    pub judged: PerBroker<Judged>,
}

fn judged(rabbitmq: (f64, &str), jetstream: (f64, &str), kafka: (f64, &str)) -> PerBroker<Judged> {
    let owned = |(score, reason): (f64, &str)| (score, reason.to_string());
    PerBroker {
        rabbitmq: owned(rabbitmq),
        jetstream: owned(jetstream),
        kafka: owned(kafka),
    }
}

/// Facts written per broker in RabbitMQ, JetStream, Kafka order.
fn per<T>(rabbitmq: T, jetstream: T, kafka: T) -> PerBroker<T> {
    PerBroker {
        rabbitmq,
        jetstream,
        kafka,
    }
}

/// How mature the client for `language` is on each broker: score, and the
/// client a team would use.
pub(crate) fn clients(language: Language) -> PerBroker<(f64, &'static str)> {
    use Language::*;
    match language {
        Go => per(
            (10.0, "amqp091-go, maintained by the RabbitMQ team"),
            (10.0, "nats.go, the reference client, by the NATS team"),
            (
                9.0,
                "confluent-kafka-go (librdkafka) or franz-go, both mature",
            ),
        ),
        Python => per(
            (
                9.0,
                "pika and aio-pika, long-lived and documented by RabbitMQ",
            ),
            (
                8.0,
                "nats-py, official, asyncio only, JetStream API thinner than Go's",
            ),
            (10.0, "confluent-kafka-python (librdkafka), by Confluent"),
        ),
        Node => per(
            (
                8.0,
                "amqplib, community but the de-facto client for a decade",
            ),
            (10.0, "nats.js, official, same API family as Go"),
            (
                8.0,
                "confluent-kafka-javascript (new) or KafkaJS (barely maintained)",
            ),
        ),
        Java => per(
            (10.0, "the RabbitMQ Java client, by the RabbitMQ team"),
            (9.0, "jnats, official"),
            (10.0, "the Apache Kafka Java client, the reference"),
        ),
        Dotnet => per(
            (10.0, "RabbitMQ.Client, by the RabbitMQ team"),
            (9.0, "NATS.Net, official"),
            (10.0, "confluent-kafka-dotnet (librdkafka), by Confluent"),
        ),
        Rust => per(
            (7.0, "lapin, community maintained"),
            (9.0, "async-nats, official"),
            (8.0, "rust-rdkafka (librdkafka), community maintained"),
        ),
        Ruby => per(
            (8.0, "Bunny, community, long established"),
            (6.0, "nats-pure, official but less used"),
            (8.0, "rdkafka-ruby / Karafka, community, active"),
        ),
        Php => per(
            (8.0, "php-amqplib, community, widely used"),
            (4.0, "community clients only, JetStream support partial"),
            (7.0, "php-rdkafka (librdkafka), community"),
        ),
    }
}

/// Every criterion for `answers`, before measured evidence.
pub(crate) fn criteria(a: &Answers) -> Vec<Criterion> {
    vec![
        dead_letter(a),
        languages(a),
        rate(a),
        ordering(a),
        replay(a),
        delivery(a),
        latency(a),
        fan_out(a),
        operations(a),
    ]
}

fn dead_letter(a: &Answers) -> Criterion {
    Criterion {
        name: "dead letters",
        weight: match a.dead_letter {
            DeadLetter::Required => 3.0,
            DeadLetter::Useful => 1.0,
            DeadLetter::No => 0.0,
        },
        judged: judged(
            (
                10.0,
                "native dead-letter exchanges: a rejected, expired or too-often-delivered message \
                 (quorum queues count deliveries) is routed to a queue of its own",
            ),
            (
                5.0,
                "no dead-letter queue: max_deliver stops redelivery and publishes an advisory; \
                 the application must copy the message to a dead-letter stream itself",
            ),
            (
                3.0,
                "no dead letters in the broker: the consumer must publish failures to a \
                 dead-letter topic itself (frameworks such as Spring Kafka help)",
            ),
        ),
    }
}

fn languages(a: &Answers) -> Criterion {
    // The weakest client among the languages sets each broker's score.
    let judged = PerBroker::from_fn(|kind| {
        let weakest = a
            .languages
            .iter()
            .map(|l| (clients(*l).get(kind).0, *l))
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .expect("at least one language");
        let list = a
            .languages
            .iter()
            .map(|l| format!("{}: {}", super::answers::value(l), clients(*l).get(kind).1))
            .collect::<Vec<_>>()
            .join("; ");
        (weakest.0, list)
    });
    Criterion {
        name: "client languages",
        weight: if a.languages.len() > 1 { 2.0 } else { 1.0 },
        judged,
    }
}

fn rate(a: &Answers) -> Criterion {
    let r = a.rate;
    let (weight, judged) = if r <= RATE_ANY {
        let any = "a few hundred events per second is far below what any of the three takes \
                   on one node";
        (0.5, judged((10.0, any), (10.0, any), (10.0, any)))
    } else if r <= RATE_SINGLE_QUEUE {
        (
            1.5,
            judged(
                (
                    8.0,
                    "one quorum queue takes some tens of thousands of confirmed messages per \
                     second; enough, with less headroom",
                ),
                (
                    10.0,
                    "one stream takes 100k+ acknowledged messages per second",
                ),
                (10.0, "partitions spread the load over brokers and disks"),
            ),
        )
    } else if r <= RATE_SINGLE_STREAM {
        (
            2.5,
            judged(
                (
                    4.0,
                    "above one queue's limit: the load must be split over several queues \
                     (sharding, consistent-hash exchange) by hand",
                ),
                (
                    8.0,
                    "one stream can take it on good disks; beyond, split subjects over streams",
                ),
                (
                    10.0,
                    "partitions spread the load over brokers and disks; this is Kafka's home",
                ),
            ),
        )
    } else {
        (
            3.0,
            judged(
                (
                    1.0,
                    "hundreds of thousands per second means many queues and nodes and \
                     hand-made sharding",
                ),
                (5.0, "needs many streams and careful subject partitioning"),
                (
                    10.0,
                    "partitioned logs with batching and compression are built for this rate",
                ),
            ),
        )
    };
    Criterion {
        name: "event rate",
        weight,
        judged,
    }
}

fn ordering(a: &Answers) -> Criterion {
    let (weight, judged) = match a.ordering {
        Ordering::None => {
            let any = "no ordering needed";
            (0.0, judged((10.0, any), (10.0, any), (10.0, any)))
        }
        Ordering::PerKey => (
            1.5,
            judged(
                (
                    5.0,
                    "a queue is FIFO, but competing consumers and redeliveries reorder; per-key \
                     order needs a consistent-hash exchange or single active consumers",
                ),
                (
                    7.0,
                    "a stream keeps order; per key needs a subject per key and one consumer \
                     per subject set",
                ),
                (
                    10.0,
                    "messages with the same key go to one partition and are read in order",
                ),
            ),
        ),
        Ordering::Global => (
            1.5,
            judged(
                (
                    6.0,
                    "one queue with a single active consumer keeps total order, at one \
                     consumer's speed",
                ),
                (
                    8.0,
                    "a stream is totally ordered; one ordered consumer reads it in sequence",
                ),
                (4.0, "total order means a single partition: no parallelism"),
            ),
        ),
    };
    Criterion {
        name: "ordering",
        weight,
        judged,
    }
}

fn replay(a: &Answers) -> Criterion {
    let (weight, judged) = match a.replay {
        Replay::No => {
            let any = "no replay needed";
            (0.0, judged((10.0, any), (10.0, any), (10.0, any)))
        }
        Replay::Days => (
            2.0,
            judged(
                (
                    5.0,
                    "queues delete on ack; replay needs RabbitMQ streams, a separate queue type \
                     with its own client features",
                ),
                (
                    9.0,
                    "streams keep messages by age or size; a consumer can start at any \
                     sequence or time",
                ),
                (
                    10.0,
                    "the log keeps everything for its retention; consumers reset offsets at will",
                ),
            ),
        ),
        Replay::Long => (
            3.0,
            judged(
                (3.0, "not built to keep history for months"),
                (
                    6.0,
                    "streams can keep history, but without tiered storage or compaction by key",
                ),
                (
                    10.0,
                    "long retention, log compaction by key and tiered storage",
                ),
            ),
        ),
    };
    Criterion {
        name: "replay and retention",
        weight,
        judged,
    }
}

fn delivery(a: &Answers) -> Criterion {
    let (weight, judged) = match a.delivery {
        Delivery::BestEffort => {
            let any = "any of the three can deliver best-effort, with less durability cost";
            (0.5, judged((10.0, any), (10.0, any), (10.0, any)))
        }
        Delivery::AtLeastOnce => (
            1.0,
            judged(
                (
                    9.0,
                    "publisher confirms, durable quorum queues and acks after processing",
                ),
                (
                    9.0,
                    "publish acks after storage, file storage and explicit acks",
                ),
                (
                    9.0,
                    "acks=all with an idempotent producer and offsets committed after processing",
                ),
            ),
        ),
        Delivery::ExactlyOnce => (
            2.0,
            judged(
                (
                    4.0,
                    "no broker help: consumers must be idempotent on a business id",
                ),
                (
                    7.0,
                    "de-duplication of publishes by Nats-Msg-Id in a window, and double acks",
                ),
                (
                    9.0,
                    "idempotent producer and transactions (read-process-write inside Kafka)",
                ),
            ),
        ),
    };
    Criterion {
        name: "delivery guarantee",
        weight,
        judged,
    }
}

fn latency(a: &Answers) -> Criterion {
    let target = a.latency_ms;
    let (weight, judged) = if target <= 0.0 {
        let any = "no latency target";
        (0.0, judged((10.0, any), (10.0, any), (10.0, any)))
    } else if target >= 50.0 {
        let any = "a p99 of 50 ms or more suits all three";
        (0.5, judged((10.0, any), (10.0, any), (10.0, any)))
    } else if target >= 5.0 {
        (
            1.5,
            judged(
                (9.0, "delivers in about a millisecond when queues are short"),
                (10.0, "delivers in about a millisecond"),
                (
                    7.0,
                    "batching (linger) and fetch waits add milliseconds; tunable",
                ),
            ),
        )
    } else {
        (
            2.0,
            judged(
                (
                    7.0,
                    "about a millisecond, more with persistent messages and quorum replication",
                ),
                (10.0, "sub-millisecond to a millisecond"),
                (
                    4.0,
                    "a p99 under 5 ms end to end is hard with acks=all and consumer polling",
                ),
            ),
        )
    };
    Criterion {
        name: "latency target",
        weight,
        judged,
    }
}

fn fan_out(a: &Answers) -> Criterion {
    let (weight, judged) = if a.groups <= 3 {
        let any = "a few consumer groups are cheap on all three";
        (0.5, judged((10.0, any), (10.0, any), (10.0, any)))
    } else if a.groups <= 20 {
        (
            1.0,
            judged(
                (
                    7.0,
                    "each group has its own queue, so every message is stored once per group",
                ),
                (
                    10.0,
                    "groups are consumers on one stream: stored once, read many times",
                ),
                (
                    10.0,
                    "groups are consumer groups on one log: stored once, read many times",
                ),
            ),
        )
    } else {
        (
            1.5,
            judged(
                (5.0, "dozens of queues each holding a copy of every message"),
                (
                    9.0,
                    "many consumers on one stream; core NATS subjects for pure broadcast",
                ),
                (9.0, "many consumer groups on one log; each adds fetch load"),
            ),
        )
    };
    Criterion {
        name: "fan-out",
        weight,
        judged,
    }
}

fn operations(a: &Answers) -> Criterion {
    let base = match a.hosting {
        Hosting::SelfHosted => per(
            (
                7.0,
                "self-hosted: one Erlang service; quorum queues want three nodes",
            ),
            (
                10.0,
                "self-hosted: one small static binary; clustering built in",
            ),
            (
                4.0,
                "self-hosted: JVM brokers plus KRaft controllers, partitions to plan and rebalance",
            ),
        ),
        Hosting::Managed => per(
            (8.0, "managed: Amazon MQ, CloudAMQP and others offer it"),
            (6.0, "managed: Synadia Cloud; fewer providers"),
            (
                10.0,
                "managed: offered by every large cloud and by Confluent, Aiven and others",
            ),
        ),
    };
    let judged = PerBroker::from_fn(|kind| {
        let (score, reason): (f64, &str) = *base.get(kind);
        if a.experience.contains(&kind) {
            (
                (score + 3.0).min(10.0),
                format!("{reason}; the team already runs it"),
            )
        } else {
            (score, reason.to_string())
        }
    });
    Criterion {
        name: "operations",
        weight: 1.5,
        judged,
    }
}
