//! Each driver against its real broker: publish with confirmation (in both
//! encodings), receive, acknowledge after processing, and get back what was
//! not acknowledged; publish only (with no headers), the broker's count of
//! what it stores.

use std::path::Path;
use std::time::Duration;

use brokerbench::driver::{Consumer, Driver, Producer, Settle};
use brokerbench::env::binaries;
use brokerbench::env::local::LocalBroker;
use brokerbench::event::{self, Encoding, Envelope};
use brokerbench::kind::BrokerKind;
use brokerbench::scenario::{Exchange, Overrides, Plan};

const RUN: u64 = 0xfeed;

fn scenario(publish_only: bool) -> Plan {
    let text = r#"
        name = "drivers"
        [load]
        rate = 0
        duration = "1s"
        [[consumers]]
        group = "billing"
        [kafka]
        partitions = 1
    "#;
    let overrides = Overrides {
        publish_only,
        ..Overrides::default()
    };
    let mut plan = Plan::parse(Path::new("drivers.toml"), text, &overrides).unwrap();
    // Publish only goes without headers: the payload alone carries the ids.
    plan.load.headers = !publish_only;
    // RabbitMQ: every other real-broker test publishes through the topic
    // exchange, the default; here the group's queue is bound to a direct
    // one, and publish only goes straight to its queue.
    plan.rabbitmq.exchange = match publish_only {
        true => Exchange::Default,
        false => Exchange::Direct,
    };
    plan
}

/// Sends messages 0..n under their own sequence numbers as tokens, and
/// checks that the broker confirms each one exactly once.
async fn send_confirmed(producer: &mut Box<dyn Producer>, n: u64, kind: BrokerKind) {
    for seq in 0..n {
        producer.send(seq, message(seq)).await.unwrap();
    }
    let mut answered = Vec::new();
    while answered.len() < n as usize {
        let (token, result) = tokio::time::timeout(
            Duration::from_secs(20),
            std::future::poll_fn(|cx| producer.poll_answer(cx)),
        )
        .await
        .unwrap_or_else(|_| panic!("{kind}: answers for {answered:?} only"));
        result.unwrap_or_else(|failure| panic!("{kind}: {token} not confirmed: {failure:?}"));
        answered.push(token);
    }
    answered.sort();
    assert_eq!(
        answered,
        (0..n).collect::<Vec<_>>(),
        "{kind}: one answer each"
    );
    assert!(producer.ready().is_none(), "{kind}: no answer more");
}

/// Message `seq` of the run; odd ones binary and small, even ones JSON.
fn message(seq: u64) -> event::Outgoing {
    let envelope = Envelope {
        run: RUN,
        producer: 0,
        seq,
        key: seq % 3,
        intended_ns: 0,
        sent_ns: 0,
    };
    match seq % 2 {
        0 => event::encode(&envelope, 300, Encoding::Json, event::EventVersion::V1),
        _ => event::encode(&envelope, 64, Encoding::Binary, event::EventVersion::V1),
    }
}

async fn receive(consumer: &mut Box<dyn Consumer>) -> (Envelope, brokerbench::driver::Settler) {
    let incoming = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("a delivery within 20 s")
        .expect("the subscription is open")
        .expect("no receive error");
    (
        event::decode(&incoming.payload).expect("our event"),
        incoming.settle,
    )
}

async fn publishes_confirms_and_redelivers_what_was_not_acked(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let broker = LocalBroker::start(binaries::locate(kind).await.unwrap(), dir.path())
        .await
        .unwrap();
    let plan = scenario(false);
    let group = &plan.consumers[0];
    let driver: Box<dyn Driver> = brokerbench::broker::connect(&plan, broker.endpoint(), RUN)
        .await
        .unwrap();
    driver.setup().await.unwrap();
    assert!(!driver.settings().is_empty());
    let mut consumer = driver.consumer(group).await.unwrap();
    let mut producer = driver.producer(0).await.unwrap();

    send_confirmed(&mut producer, 10, kind).await;

    // Process and acknowledge the first five; leave the rest unacknowledged.
    let mut pending = Vec::new();
    for expected in 0..10 {
        let (envelope, ack) = receive(&mut consumer).await;
        assert_eq!(
            envelope.seq, expected,
            "{kind}: one partition/queue keeps order"
        );
        if expected < 5 {
            ack(Settle::Ack).await.unwrap();
        } else {
            pending.push(ack);
        }
    }
    drop(pending);
    consumer.close().await;

    if kind == BrokerKind::Jetstream {
        // JetStream redelivers after ack_wait (30 s); what matters here is that
        // the acknowledged five are not delivered again.
        let mut again = driver.consumer(group).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(2), again.next()).await;
        assert!(
            first.is_err(),
            "{kind}: an acknowledged or in-wait message came back at once"
        );
    } else {
        // The same group picks up exactly the unacknowledged five.
        let mut again = driver.consumer(group).await.unwrap();
        for expected in 5..10 {
            let (envelope, ack) = receive(&mut again).await;
            assert_eq!(
                envelope.seq, expected,
                "{kind}: redelivery after the group was left"
            );
            ack(Settle::Ack).await.unwrap();
        }
        again.close().await;
    }
    driver.teardown().await.unwrap();
    driver.close().await;

    // Publish only: a fresh destination, and the broker says what it holds.
    let plan = scenario(true);
    let driver = brokerbench::broker::connect(&plan, broker.endpoint(), RUN)
        .await
        .unwrap();
    driver.setup().await.unwrap();
    let mut producer = driver.producer(0).await.unwrap();
    send_confirmed(&mut producer, 7, kind).await;
    assert_eq!(driver.stored().await.unwrap(), 7, "{kind}: stored");
    // Once the account is taken, the run's data goes. Deletion is
    // asynchronous on Kafka (its brokers learn of it from the controller's
    // metadata log), so the data may be seen for a moment after the answer.
    driver.teardown().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = driver.stored().await;
        if !matches!(left, Ok(n) if n > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind}: {left:?} left 15 s after the teardown"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    driver.close().await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_driver() {
    publishes_confirms_and_redelivers_what_was_not_acked(BrokerKind::Rabbitmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_driver() {
    publishes_confirms_and_redelivers_what_was_not_acked(BrokerKind::Jetstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_driver() {
    publishes_confirms_and_redelivers_what_was_not_acked(BrokerKind::Kafka).await;
}
