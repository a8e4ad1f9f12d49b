//! The harness's own work per message, without any broker: what brokerbench
//! does for every message besides the broker client's calls. `cargo bench`
//! prints the time and the heap allocations per message (divan's
//! `AllocProfiler`); docs/performance.md records the figures. The goal is at
//! most 1 µs per published and delivered message.
//!
//! - `publish`: the pacer's intended time, the envelope, encoding, the
//!   publish ledger (attempt and confirmation) and the confirmation's
//!   latencies (corrected, service, per second) and timeline.
//! - `deliver`: decoding, the group's ledger (duplicates, per-key order),
//!   the end-to-end latencies and the delivery timeline.
//! - `publish_and_deliver`: both, once each per message, as a run with one
//!   consumer group does.

use std::path::Path;
use std::time::{Duration, Instant};

use brokerbench::agent;
use brokerbench::event::{self, Encoding, Envelope};
use brokerbench::metrics::{Latency, LatencyIntervals, Timeline};
use brokerbench::run::ledger::{GroupLog, ProducerLog, PublishStatus};
use brokerbench::run::pacer::Pacer;
use brokerbench::scenario::{Overrides, Plan};
use divan::counter::ItemsCount;
use divan::{AllocProfiler, Bencher};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    divan::main();
}

/// Messages per sample.
const MESSAGES: u64 = 10_000;

/// Bytes per message: the smallest JSON event, and the small binary one.
const SIZES: [(Encoding, usize); 2] = [(Encoding::Json, 264), (Encoding::Binary, 100)];

/// What one producer keeps per run.
struct Publisher {
    pacer: Pacer,
    epoch: Instant,
    log: ProducerLog,
    publish: Latency,
    publish_service: Latency,
    intervals: LatencyIntervals,
    confirmed_at: Timeline,
}

/// What one consumer group keeps per run.
struct Group {
    log: GroupLog,
    end_to_end: Latency,
    end_to_end_service: Latency,
    intervals: LatencyIntervals,
    delivered_at: Timeline,
}

fn publisher() -> Publisher {
    let epoch = Instant::now();
    Publisher {
        pacer: Pacer::new(epoch, 50_000.0, 0, 1),
        epoch,
        log: ProducerLog::default(),
        publish: Latency::default(),
        publish_service: Latency::default(),
        intervals: LatencyIntervals::default(),
        confirmed_at: Timeline::default(),
    }
}

fn group() -> Group {
    let text =
        "name = \"bench\"\n[load]\nrate = 0\nduration = \"1s\"\n[[consumers]]\ngroup = \"g\"\n";
    let plan = Plan::parse(Path::new("bench.toml"), text, &Overrides::default()).unwrap();
    Group {
        log: GroupLog::for_group(&plan.consumers[0]),
        end_to_end: Latency::default(),
        end_to_end_service: Latency::default(),
        intervals: LatencyIntervals::default(),
        delivered_at: Timeline::default(),
    }
}

/// Publishes message `k`: returns its payload once "confirmed". Never
/// inlined, so that `scripts/instructions-per-message` can count it alone.
#[inline(never)]
fn publish(p: &mut Publisher, k: u64, (encoding, size): (Encoding, usize)) -> Vec<u8> {
    let due = p.pacer.intended(k);
    let seq = p.log.attempt();
    let sent = Instant::now();
    let envelope = Envelope {
        run: 0x5eed,
        producer: 0,
        seq,
        key: seq % 1000,
        intended_ns: due.saturating_duration_since(p.epoch).as_nanos() as u64,
        sent_ns: sent.saturating_duration_since(p.epoch).as_nanos() as u64,
    };
    let outgoing = event::encode(&envelope, size, encoding, event::EventVersion::V1);
    let now = Instant::now();
    p.log.settle(seq, PublishStatus::Confirmed);
    let since = now.saturating_duration_since(p.epoch);
    let latency = now.saturating_duration_since(due);
    p.confirmed_at.record(since);
    p.publish.record(latency);
    p.intervals.record(since, latency);
    p.publish_service.record(now - sent);
    outgoing.payload
}

/// Delivers `payload` to the group. Never inlined, as `publish`.
#[inline(never)]
fn deliver(g: &mut Group, epoch: Instant, payload: &[u8]) {
    let envelope = event::decode(payload).expect("our message");
    record(
        g,
        &envelope,
        Instant::now().saturating_duration_since(epoch),
        false,
    );
}

/// The group's ledger, latencies and timeline for a delivery of `envelope`
/// `at` this long after the epoch. Inlined, so that `deliver` is counted whole.
#[inline(always)]
fn record(g: &mut Group, envelope: &Envelope, at: Duration, redelivered: bool) {
    g.log.record(envelope, redelivered);
    let at_ns = at.as_nanos() as u64;
    g.delivered_at.record(at);
    let latency = Duration::from_nanos(at_ns.saturating_sub(envelope.intended_ns));
    g.end_to_end.record(latency);
    g.intervals.record(at, latency);
    g.end_to_end_service
        .record(Duration::from_nanos(at_ns.saturating_sub(envelope.sent_ns)));
}

#[divan::bench(args = SIZES)]
fn publish_only(bencher: Bencher, size: (Encoding, usize)) {
    bencher
        .counter(ItemsCount::new(MESSAGES))
        .with_inputs(publisher)
        .bench_local_refs(|p| {
            for k in 0..MESSAGES {
                divan::black_box(publish(p, k, size));
            }
        });
}

#[divan::bench(args = SIZES)]
fn deliver_only(bencher: Bencher, size: (Encoding, usize)) {
    bencher
        .counter(ItemsCount::new(MESSAGES))
        .with_inputs(|| {
            let mut p = publisher();
            let payloads: Vec<Vec<u8>> = (0..MESSAGES).map(|k| publish(&mut p, k, size)).collect();
            (group(), p.epoch, payloads)
        })
        .bench_local_refs(|(g, epoch, payloads)| {
            for payload in payloads.iter() {
                deliver(g, *epoch, payload);
            }
        });
}

#[divan::bench(args = SIZES)]
fn publish_and_deliver(bencher: Bencher, size: (Encoding, usize)) {
    bencher
        .counter(ItemsCount::new(MESSAGES))
        .with_inputs(|| (publisher(), group()))
        .bench_local_refs(|(p, g)| {
            for k in 0..MESSAGES {
                let payload = publish(p, k, size);
                deliver(g, p.epoch, &payload);
            }
        });
}

/// A delivery by an agent in another language (docs/cross-language.md):
/// its 48-byte receipt read, then the same ledger and latencies as
/// [`deliver`], in place of decoding the payload. It must cost no more than
/// `deliver_only` at 264 B JSON, so that a slow agent is the agent.
#[inline(never)]
fn receive_receipt(g: &mut Group, epoch: Instant, receipt: &[u8; agent::RECEIPT_BYTES]) {
    let agent::Record::Delivery {
        receipt,
        redelivered,
    } = agent::parse(receipt).expect("a receipt")
    else {
        panic!("not a delivery");
    };
    let envelope = receipt.envelope.expect("our message");
    let at = epoch + Duration::from_nanos(receipt.received_ns);
    record(
        g,
        &envelope,
        at.saturating_duration_since(epoch),
        redelivered,
    );
}

#[divan::bench]
fn receipt_only(bencher: Bencher) {
    bencher
        .counter(ItemsCount::new(MESSAGES))
        .with_inputs(|| {
            let receipts: Vec<[u8; agent::RECEIPT_BYTES]> = (0..MESSAGES)
                .map(|seq| {
                    let mut r = [0u8; agent::RECEIPT_BYTES];
                    r[0] = 2; // a delivery, processed
                    r[8..16].copy_from_slice(&seq.to_le_bytes());
                    r[16..24].copy_from_slice(&(seq % 1000).to_le_bytes());
                    r[24..32].copy_from_slice(&(seq * 20_000).to_le_bytes());
                    r[32..40].copy_from_slice(&(seq * 20_000 + 500).to_le_bytes());
                    r[40..48].copy_from_slice(&(seq * 20_000 + 900_000).to_le_bytes());
                    r
                })
                .collect();
            (group(), Instant::now(), receipts)
        })
        .bench_local_refs(|(g, epoch, receipts)| {
            for receipt in receipts.iter() {
                receive_receipt(g, *epoch, receipt);
            }
        });
}
