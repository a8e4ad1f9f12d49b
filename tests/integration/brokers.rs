//! Each broker, for real: start it as a local process; restart it gracefully
//! and read back what was confirmed before; kill -9 it, restart it on the
//! same port and data, and read back what was confirmed before the crash;
//! pause and resume it; and leave nothing running.

use crate::util;

use std::time::Duration;

use brokerbench::broker::{self, handshake};
use brokerbench::env::binaries;
use brokerbench::env::local::LocalBroker;
use brokerbench::kind::BrokerKind;

const WAIT: Duration = Duration::from_secs(15);

/// The end of the broker's output and of every log it keeps under its
/// directory (RabbitMQ writes its own to `log/NODE.log`, not to stdout), to
/// explain a failure.
fn log_tail(broker: &LocalBroker) -> String {
    let mut logs = vec![broker.log_path()];
    if let Ok(entries) = std::fs::read_dir(broker.dir().join("log")) {
        logs.extend(entries.flatten().map(|e| e.path()));
    }
    logs.iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .map(|path| {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            format!(
                "{} ends with:\n{}",
                path.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn survives_crash_pause_and_restart(kind: BrokerKind) {
    let dir = tempfile::tempdir().unwrap();
    let binary = binaries::locate(kind)
        .await
        .unwrap_or_else(|e| panic!("{kind} must be installed (make test installs it): {e:#}"));
    let mut broker = LocalBroker::start(binary, dir.path()).await.unwrap();
    let endpoint = broker.endpoint().clone();
    let port = broker.ports()[0];
    println!(
        "{kind}: {} ready in {:?} at {}",
        broker.implementation(),
        broker.ready_in(),
        endpoint.url()
    );
    let topic = "brokerbench.test";
    let client = broker::registry(kind);

    // A graceful restart keeps what was confirmed, and the queue itself.
    // It comes before the crash on purpose: RabbitMQ 3.10 keeps queue
    // declarations in Mnesia, whose log reaches the file lazily, and a
    // queue declared about a second before kill -9 was gone after the
    // restart in 3 of 8 runs on a loaded machine ("Recovering 0 queues" in
    // its log; CI failed on it too, 2026-12-07). A message confirmed into a
    // queue that the broker has on disk is what this test holds it to.
    client
        .publish_durable(&endpoint, topic, b"persisted before restart")
        .await
        .unwrap();
    let ready = broker.restart().await.unwrap();
    println!("{kind}: graceful restart, ready in {ready:?}");
    assert_eq!(
        client
            .fetch_one(&endpoint, topic, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e:#}\n{}", log_tail(&broker))),
        b"persisted before restart"
    );

    // Confirmed before a crash, so it must be there after the restart.
    client
        .publish_durable(&endpoint, topic, b"persisted before kill -9")
        .await
        .unwrap();
    let pgid = broker.pids()[0];
    broker.kill().await.unwrap();
    assert!(!broker.is_running());
    assert!(
        util::group_members(pgid).is_empty(),
        "{:?}",
        util::group_members(pgid)
    );
    assert!(!util::port_open(port), "{kind} still answers after kill -9");

    let ready = broker.launch().await.unwrap();
    println!("{kind}: restarted after kill -9, ready in {ready:?}");
    assert_eq!(broker.endpoint(), &endpoint, "restart must keep the port");
    assert_eq!(
        client
            .fetch_one(&endpoint, topic, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e:#}\n{}", log_tail(&broker))),
        b"persisted before kill -9"
    );

    // A paused broker keeps its port but answers nothing.
    broker.pause().await.unwrap();
    assert!(
        handshake(&endpoint).await.is_err(),
        "{kind} answered while paused"
    );
    broker.resume().await.unwrap();
    // Ready again once it answers: at once for most, but Kafka's controller
    // fences a broker paused longer than its session (9 s), and it takes
    // writes again only once unfenced.
    let resumed = std::time::Instant::now();
    loop {
        match handshake(&endpoint).await {
            Ok(()) => break,
            Err(e) if resumed.elapsed() < Duration::from_secs(30) => {
                println!("{kind}: not ready yet after resume: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{kind}: not ready 30 s after resume: {e:#}"),
        }
    }
    println!("{kind}: ready again {:?} after resume", resumed.elapsed());

    let groups = broker.pids();
    broker.shutdown().await.unwrap();
    for pgid in groups {
        assert!(
            util::group_members(pgid).is_empty(),
            "{kind} left {:?}",
            util::group_members(pgid)
        );
    }
    assert!(!util::port_open(port));
}

#[tokio::test]
async fn rabbitmq_survives_crash_pause_and_restart() {
    survives_crash_pause_and_restart(BrokerKind::Rabbitmq).await;
}

#[tokio::test]
async fn jetstream_survives_crash_pause_and_restart() {
    survives_crash_pause_and_restart(BrokerKind::Jetstream).await;
}

#[tokio::test]
async fn kafka_survives_crash_pause_and_restart() {
    survives_crash_pause_and_restart(BrokerKind::Kafka).await;
}

#[tokio::test]
async fn a_busy_port_is_refused_not_mistaken_for_our_broker() {
    // Something already answering on the port must not pass for a ready broker.
    let dir = tempfile::tempdir().unwrap();
    let binary = binaries::locate(BrokerKind::Jetstream).await.unwrap();
    let mut first = LocalBroker::start(binary.clone(), dir.path())
        .await
        .unwrap();
    first.kill().await.unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", first.ports()[0])).unwrap();
    let err = first.launch().await.unwrap_err().to_string();
    assert!(err.contains("already in use"), "{err}");
    drop(squatter);
    first.launch().await.unwrap();
    first.shutdown().await.unwrap();
}
