//! One consumer-group task: records every delivery in the ledger and the
//! latency histograms on arrival, processes and acknowledges concurrently,
//! and counts down the confirmed messages it still lacks for the drain.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::ledger::{self, ProducerLog, Seen};
use super::{count, GroupOutcome, Progress, RunContext};
use crate::driver::{self, Consumer, ErrorKind};
use crate::event;
use crate::metrics::live::GroupMetrics;
use crate::scenario::ConsumerGroup;

/// The producers' history, published to the consumers when they are done.
pub(super) type PublishedLogs = tokio::sync::watch::Receiver<Option<Arc<Vec<ProducerLog>>>>;

/// One consumer group: records every delivery in the ledger and the latency
/// histograms on arrival, processes up to `concurrency` messages at once, and
/// acknowledges each after its processing. Processing and acks run as futures
/// of this task, concurrently with receiving: waiting for one ack before
/// receiving the next message would make brokerbench the bottleneck.
pub(super) async fn consume(
    mut consumer: Box<dyn Consumer>,
    group: ConsumerGroup,
    cx: RunContext,
    (stop, mut published): (CancellationToken, PublishedLogs),
    (progress, index): (Arc<Progress>, usize),
) -> GroupOutcome {
    let mut out = GroupOutcome::default();
    // Once the producers are done: their history, and how many confirmed
    // messages this group still lacks.
    let mut sent: Option<Arc<Vec<ProducerLog>>> = None;
    let mut missing = 0u64;
    let mut closed = false;
    let mut processing = FuturesUnordered::new();
    let steady_ns = cx.steady_ns();
    let live = progress
        .live
        .as_ref()
        .and_then(|l| l.groups.get(index))
        .cloned();
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            changed = published.changed(), if sent.is_none() && !closed => {
                let logs = published.borrow_and_update().clone();
                match (changed, logs) {
                    (Ok(()), Some(logs)) => {
                        missing = ledger::group_account(&logs, &out.log).lost;
                        progress.missing[index].store(missing, Ordering::Relaxed);
                        sent = Some(logs);
                    }
                    (Ok(()), None) => {}
                    (Err(_), _) => closed = true,
                }
                continue;
            }
            Some((redelivered, acked)) = processing.next(), if !processing.is_empty() => {
                processed(&live, redelivered, &acked);
                if let Err(kind) = acked {
                    count(&mut out.errors, kind);
                    out.errors_at.record(cx.since_start(Instant::now()));
                }
                continue;
            }
            next = consumer.next(), if processing.len() < group.concurrency => next,
        };
        let incoming = match next {
            None => break,
            Some(Err(kind)) => {
                count(&mut out.errors, kind);
                out.errors_at.record(cx.since_start(Instant::now()));
                tokio::time::sleep(Duration::from_millis(10)).await; // no hot loop on a broken subscription
                continue;
            }
            Some(Ok(incoming)) => incoming,
        };
        let now = Instant::now();
        match event::decode(&incoming.payload).filter(|e| e.run == cx.run_id) {
            Some(envelope) => {
                let first = out.log.record(&envelope, incoming.redelivered) == Seen::First;
                let (since, at) = (cx.since_start(now), cx.ns(now));
                let latency = Duration::from_nanos(at.saturating_sub(envelope.intended_ns));
                if first {
                    out.delivered_at.record(since);
                    if let Some(live) = &live {
                        live.delivered.inc();
                        live.end_to_end_latency.observe(latency.as_secs_f64());
                    }
                }
                if first && envelope.intended_ns >= steady_ns {
                    out.end_to_end.record(latency);
                    out.end_to_end_intervals.record(since, latency);
                    out.end_to_end_service
                        .record(Duration::from_nanos(at.saturating_sub(envelope.sent_ns)));
                }
                out.steady_delivered += u64::from(first && cx.in_steady(now));
                let confirmed = |logs: &Arc<Vec<ProducerLog>>| {
                    logs.get(envelope.producer as usize)
                        .is_some_and(|p| p.is_confirmed(envelope.seq))
                };
                if first && sent.as_ref().is_some_and(confirmed) {
                    missing = missing.saturating_sub(1);
                    progress.missing[index].store(missing, Ordering::Relaxed);
                    out.late += u64::from(progress.final_read.load(Ordering::Relaxed));
                }
                progress.delivered[index].store(out.log.unique(), Ordering::Relaxed);
            }
            None => out.log.record_foreign(),
        }
        let ack = incoming.ack;
        let redelivered = incoming.redelivered;
        // The final read takes what is left at full speed.
        let work = if progress.final_read.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            group.processing_time
        };
        processing.push(async move {
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            (redelivered, ack().await)
        });
    }
    // Let messages being processed finish and be acknowledged.
    let finish = async {
        while let Some((redelivered, acked)) = processing.next().await {
            processed(&live, redelivered, &acked);
            if let Err(kind) = acked {
                count(&mut out.errors, kind);
            }
        }
    };
    let _ = tokio::time::timeout(driver::CALL_TIMEOUT, finish).await;
    let _ = tokio::time::timeout(driver::CALL_TIMEOUT, consumer.close()).await;
    out
}

/// `event_processed_total`: what became of a processed delivery.
fn processed(live: &Option<GroupMetrics>, redelivered: bool, acked: &Result<(), ErrorKind>) {
    if let Some(live) = live {
        match (acked, redelivered) {
            (Ok(()), false) => live.processed_ok.inc(),
            (Ok(()), true) => live.processed_retry.inc(),
            (Err(_), _) => live.processed_error.inc(),
        };
    }
}
