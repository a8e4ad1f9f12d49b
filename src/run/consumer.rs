//! One consumer-group task: records every delivery in the ledger and the
//! latency histograms on arrival, processes and acknowledges concurrently,
//! and counts down the confirmed messages it still lacks for the drain.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::ledger::{self, Decision, GroupLog, ProducerLog, Seen};
use super::{count, GroupOutcome, Progress, RunContext};
use crate::driver::{self, Consumer, ErrorKind, Incoming, Settle, Settler};
use crate::event::{Envelope, Read};
use crate::metrics::live::GroupMetrics;
use crate::scenario::ConsumerGroup;

/// The producers' history, published to the consumers when they are done.
pub(super) type PublishedLogs = tokio::sync::watch::Receiver<Option<Arc<Vec<ProducerLog>>>>;

/// One consumer group: records every delivery in the ledger and the latency
/// histograms on arrival, processes up to `concurrency` messages at once, and
/// acknowledges each after its processing. Processing and acks run as futures
/// of this task, concurrently with receiving: waiting for one ack before
/// receiving the next message would make brokerbench the bottleneck.
///
/// A group with failures fails some messages on purpose (their fate comes
/// from the ledger), hands them back to the driver as failed, and skips the
/// messages it processed already (idempotent on the order id). A reader
/// task of its own reads the group's dead-letter destination and sends what
/// it reads here, so that one owner keeps the whole account.
pub(super) async fn consume(
    (mut consumer, dead_letters): (Box<dyn Consumer>, Option<Box<dyn Consumer>>),
    group: ConsumerGroup,
    cx: RunContext,
    (stop, mut published): (CancellationToken, PublishedLogs),
    (progress, index): (Arc<Progress>, usize),
) -> GroupOutcome {
    let mut out = GroupOutcome {
        log: GroupLog::for_group(&group),
        ..GroupOutcome::default()
    };
    let mut countdown = Countdown::new(Arc::clone(&progress), index);
    let mut closed = false;
    let mut processing = FuturesUnordered::new();
    let live = progress
        .live
        .as_ref()
        .and_then(|l| l.groups.get(index))
        .cloned();
    // The reader stops when this group's loop does, whyever it ends.
    let stop_reader = stop.child_token();
    let reading = dead_letters.map(|d| read_dead_letters(d, stop_reader.clone()));
    let (mut dead_letters, reader) = reading.unzip();
    loop {
        let (next, dead) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            changed = published.changed(), if countdown.sent.is_none() && !closed => {
                let logs = published.borrow_and_update().clone();
                closed = changed.is_err();
                if let (false, Some(logs)) = (closed, logs) {
                    countdown.start(logs, &out);
                }
                continue;
            }
            Some((status, settled)) = processing.next(), if !processing.is_empty() => {
                processed(&live, status, &settled);
                if let Err(kind) = settled {
                    out.error(kind, &cx);
                }
                continue;
            }
            next = async { dead_letters.as_mut()?.recv().await }, if dead_letters.is_some() => {
                match next {
                    Some(next @ Some(_)) => (next, true),
                    // The reader's subscription ended for good.
                    _ => {
                        dead_letters = None;
                        continue;
                    }
                }
            }
            next = consumer.next(), if processing.len() < group.concurrency => (next, false),
        };
        let incoming = match next {
            None => {
                progress.ended[index].store(true, Ordering::Relaxed);
                break;
            }
            Some(Err(kind)) => {
                out.error(kind, &cx);
                // No hot loop on a broken subscription.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Some(Ok(incoming)) => incoming,
        };
        let (read, now) = arrival(&incoming, &cx);
        if dead {
            let at = (&cx, now, &live);
            record_dead_letter(&mut out, read.envelope().as_ref(), at, Some(&mut countdown));
            processing.push(settle(incoming.settle, Settle::Ack, Duration::ZERO, None));
            continue;
        }
        let arrived = Arrival::of(&read, now, &incoming, &cx);
        let at = (&cx, &live, &mut countdown);
        let decision = record_delivery(&mut out, read, arrived, at);
        let work = work(&group, &progress, &incoming);
        let (how, work, status) = settlement(decision, incoming.redelivered, work);
        processing.push(settle(incoming.settle, how, work, Some(status)));
    }
    // Dead letters the reader read before it stopped are recorded too, and
    // acknowledged with the rest.
    stop_reader.cancel();
    for settler in dead_letters
        .as_mut()
        .map(|rx| last_dead_letters(rx, &mut out, &cx, &live))
        .unwrap_or_default()
    {
        processing.push(settle(settler, Settle::Ack, Duration::ZERO, None));
    }
    finish(&mut processing, &mut out, &live).await;
    out.agent = consumer.agent();
    let _ = tokio::time::timeout(driver::CALL_TIMEOUT, consumer.close()).await;
    if let Some(reader) = reader {
        let _ = tokio::time::timeout(driver::CALL_TIMEOUT, reader).await;
    }
    out
}

/// Records the dead letters `rx` holds once its reader has stopped; their
/// settlers, to acknowledge them.
fn last_dead_letters(
    rx: &mut tokio::sync::mpsc::Receiver<Option<Result<Incoming, ErrorKind>>>,
    out: &mut GroupOutcome,
    cx: &RunContext,
    live: &Option<GroupMetrics>,
) -> Vec<Settler> {
    let mut settlers = Vec::new();
    while let Ok(Some(next)) = rx.try_recv() {
        if let Ok(incoming) = next {
            let envelope = cx.envelope(&incoming.payload);
            record_dead_letter(out, envelope.as_ref(), (cx, Instant::now(), live), None);
            settlers.push(incoming.settle);
        }
    }
    settlers
}

/// The simulated processing a delivery gets: none in the final read, which
/// takes what is left at full speed, nor for an agent's, processed already.
fn work(group: &ConsumerGroup, progress: &Progress, incoming: &Incoming) -> Duration {
    match progress.final_read.load(Ordering::Relaxed) || incoming.receipt.is_some() {
        true => Duration::ZERO,
        false => group.processing_time,
    }
}

/// What a delivery is (one of this run's messages, decoded or refused by
/// the typed decoder, or not) and when it arrived: an agent's delivery
/// comes decoded and timed (the agent settled it); brokerbench's own is
/// decoded here, and arrived now.
fn arrival(incoming: &Incoming, cx: &RunContext) -> (Read, Instant) {
    match &incoming.receipt {
        Some(r) => {
            let envelope = r.envelope.map(|e| Envelope {
                run: cx.run_id,
                ..e
            });
            let read = match (envelope, r.decode_failed) {
                (Some(e), false) => Read::Event(e),
                (Some(e), true) => Read::Refused(e),
                (None, _) => Read::Foreign,
            };
            (read, cx.at(r.received_ns))
        }
        None => (cx.read(&incoming.payload), Instant::now()),
    }
}

/// A delivery's arrival: when, whether the broker flagged it redelivered,
/// and whether the group is to refuse it as undecodable.
#[derive(Clone, Copy)]
struct Arrival {
    now: Instant,
    redelivered: bool,
    refuse: bool,
}

impl Arrival {
    /// `incoming`, `read` as it was and arrived `now`. It is to be refused
    /// when its own decoder refused it, for brokerbench's consumer; for an
    /// agent's, when the message's version says a typed decoder must (the
    /// run published it), so that an agent that decides otherwise is caught.
    fn of(read: &Read, now: Instant, incoming: &Incoming, cx: &RunContext) -> Self {
        let refuse = match (read, &incoming.receipt) {
            (Read::Foreign, _) => false,
            (read, Some(_)) => read
                .envelope()
                .is_some_and(|e| !cx.event_version(e.intended_ns).decodable()),
            (read, None) => matches!(read, Read::Refused(_)),
        };
        Arrival {
            now,
            redelivered: incoming.redelivered,
            refuse,
        }
    }
}

/// What this group still lacks for the drain: once the producers are done,
/// their history, and how many confirmed messages the group does not have
/// for good yet ([`Progress::missing`]).
struct Countdown {
    sent: Option<Arc<Vec<ProducerLog>>>,
    missing: u64,
    progress: Arc<Progress>,
    index: usize,
}

impl Countdown {
    /// Group `index`'s countdown, kept in `progress`.
    fn new(progress: Arc<Progress>, index: usize) -> Self {
        Countdown {
            sent: None,
            missing: 0,
            progress,
            index,
        }
    }

    /// The producers are done: counts what the group lacks of `logs`.
    fn start(&mut self, logs: Arc<Vec<ProducerLog>>, out: &GroupOutcome) {
        self.missing = ledger::incomplete(&logs, &out.log);
        self.progress.missing[self.index].store(self.missing, Ordering::Relaxed);
        self.sent = Some(logs);
    }

    /// Counts down a confirmed message this group now has for good.
    fn completed(&mut self, envelope: &Envelope, out: &mut GroupOutcome) {
        let confirmed = self.sent.as_ref().is_some_and(|logs| {
            logs.get(envelope.producer as usize)
                .is_some_and(|p| p.is_confirmed(envelope.seq))
        });
        if confirmed {
            self.missing = self.missing.saturating_sub(1);
            self.progress.missing[self.index].store(self.missing, Ordering::Relaxed);
            out.late += u64::from(self.progress.final_read.load(Ordering::Relaxed));
        }
    }
}

/// Records a delivery as it `arrived`: the ledger, the latency of a first
/// delivery, and what the group decides to do with it (refuse it; with
/// failures: process, fail on purpose or skip); none for a message that is
/// not this run's.
fn record_delivery(
    out: &mut GroupOutcome,
    read: Read,
    arrived: Arrival,
    (cx, live, countdown): (&RunContext, &Option<GroupMetrics>, &mut Countdown),
) -> Option<Decision> {
    out.decode_failed += u64::from(matches!(read, Read::Refused(_)));
    let Some(envelope) = &read.envelope() else {
        out.log.record_foreign();
        return None;
    };
    let decision = decide(out, envelope, arrived, cx, live, countdown);
    countdown.progress.delivered[countdown.index].store(out.log.unique(), Ordering::Relaxed);
    decision
}

/// [`record_delivery`] of one of this run's messages.
fn decide(
    out: &mut GroupOutcome,
    envelope: &Envelope,
    arrived: Arrival,
    cx: &RunContext,
    live: &Option<GroupMetrics>,
    countdown: &mut Countdown,
) -> Option<Decision> {
    let now = arrived.now;
    let first = out.log.record(envelope, arrived.redelivered) == Seen::First;
    let (since, at) = (cx.since_start(now), cx.ns(now));
    let latency = Duration::from_nanos(at.saturating_sub(envelope.intended_ns));
    if first {
        out.delivered_at.record(since);
        if let Some(live) = live {
            live.delivered.inc();
            live.end_to_end_latency.observe(latency.as_secs_f64());
        }
    }
    if first && envelope.intended_ns >= cx.steady_ns() {
        out.end_to_end.record(latency);
        out.end_to_end_intervals.record(since, latency);
        out.end_to_end_service
            .record(Duration::from_nanos(at.saturating_sub(envelope.sent_ns)));
    }
    out.steady_delivered += u64::from(first && cx.in_steady(now));
    // With failures a message is complete once processed (or
    // dead-lettered); without, once delivered.
    let decided = match arrived.refuse {
        true => Some(out.log.refuse(envelope, first)),
        false => out.log.decide(envelope),
    };
    match decided {
        Some((decision, complete)) => {
            if complete {
                countdown.completed(envelope, out);
            }
            if let Decision::Fail(_) = decision {
                out.failed_at.record(since);
            }
            Some(decision)
        }
        None => {
            if first {
                countdown.completed(envelope, out);
            }
            None
        }
    }
}

/// How a delivery is settled, after how much simulated `work`, and what
/// processing it came to: a duplicate is skipped at once, a message failed
/// on purpose is handed back as failed, the rest acknowledged.
fn settlement(
    decision: Option<Decision>,
    redelivered: bool,
    work: Duration,
) -> (Settle, Duration, Status) {
    match decision {
        Some(Decision::Skip) => (Settle::Ack, Duration::ZERO, Status::Skipped),
        Some(Decision::Fail(attempt)) => (Settle::Failed { attempt }, work, Status::Failed),
        Some(Decision::Refuse) => (Settle::Refuse, Duration::ZERO, Status::Refused),
        _ if redelivered => (Settle::Ack, work, Status::Retry),
        _ => (Settle::Ack, work, Status::Ok),
    }
}

impl GroupOutcome {
    /// Counts a receive or ack error, now.
    fn error(&mut self, kind: ErrorKind, cx: &RunContext) {
        count(&mut self.errors, kind);
        self.errors_at.record(cx.since_start(Instant::now()));
    }
}

/// Lets messages being processed finish and be acknowledged, for at most
/// the call timeout.
async fn finish(
    processing: &mut FuturesUnordered<
        impl Future<Output = (Option<Status>, Result<(), ErrorKind>)>,
    >,
    out: &mut GroupOutcome,
    live: &Option<GroupMetrics>,
) {
    let finish = async {
        while let Some((status, settled)) = processing.next().await {
            processed(live, status, &settled);
            if let Err(kind) = settled {
                count(&mut out.errors, kind);
            }
        }
    };
    let _ = tokio::time::timeout(driver::CALL_TIMEOUT, finish).await;
}

/// Records a dead letter read from the group's dead-letter destination
/// (`envelope`: `None` when it is not one of this run's messages), read at
/// `now`; counts down its message on `countdown` if that message is
/// complete now for the first time.
fn record_dead_letter(
    out: &mut GroupOutcome,
    envelope: Option<&Envelope>,
    (cx, now, live): (&RunContext, Instant, &Option<GroupMetrics>),
    countdown: Option<&mut Countdown>,
) {
    let Some(envelope) = envelope else {
        out.log.record_dead_foreign();
        return;
    };
    let (seen, complete) = out.log.record_dead_letter(envelope);
    if seen == Seen::First {
        out.dead_lettered_at.record(cx.since_start(now));
        out.time_to_dead_letter.record(Duration::from_nanos(
            cx.ns(now).saturating_sub(envelope.intended_ns),
        ));
        if let Some(live) = live {
            live.processed_dead_letter.inc();
        }
    }
    if let (true, Some(countdown)) = (complete, countdown) {
        countdown.completed(envelope, out);
    }
}

/// Reads `dead_letters` in a task of its own until `stop`, then closes it.
/// Its own task, because a consumer's `next` may be a long reconnection:
/// dropped and begun again each time another branch of the group's loop
/// was ready first, it would never finish after a broker restart.
fn read_dead_letters(
    mut dead_letters: Box<dyn Consumer>,
    stop: CancellationToken,
) -> (
    tokio::sync::mpsc::Receiver<Option<Result<Incoming, ErrorKind>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let reader = tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = dead_letters.next() => next,
            };
            let ended = next.is_none();
            let sent = tokio::select! {
                _ = stop.cancelled() => false,
                sent = tx.send(next) => sent.is_ok(),
            };
            if !sent || ended {
                break;
            }
        }
        let _ = tokio::time::timeout(driver::CALL_TIMEOUT, dead_letters.close()).await;
    });
    (rx, reader)
}

/// What processing a delivery came to, for `event_processed_total`.
#[derive(Clone, Copy, Debug)]
enum Status {
    /// Processed on its first delivery.
    Ok,
    /// Processed on a redelivery.
    Retry,
    /// Processing failed on purpose; handed back.
    Failed,
    /// Processed already: skipped by the idempotent consumer.
    Skipped,
    /// Refused by the typed decoder.
    Refused,
}

/// Waits `work` (the simulated processing), then settles the delivery `how`.
async fn settle(
    settler: Settler,
    how: Settle,
    work: Duration,
    status: Option<Status>,
) -> (Option<Status>, Result<(), ErrorKind>) {
    if !work.is_zero() {
        tokio::time::sleep(work).await;
    }
    (status, settler(how).await)
}

/// `event_processed_total`: what became of a delivery (dead letters are
/// counted when the dead-letter reader sees them).
fn processed(live: &Option<GroupMetrics>, status: Option<Status>, settled: &Result<(), ErrorKind>) {
    let (Some(live), Some(status)) = (live, status) else {
        return;
    };
    match (settled, status) {
        (Err(_), _) => live.processed_error.inc(),
        (Ok(()), Status::Ok) => live.processed_ok.inc(),
        (Ok(()), Status::Retry) => live.processed_retry.inc(),
        (Ok(()), Status::Failed) => live.processed_failed.inc(),
        (Ok(()), Status::Skipped) => live.processed_skipped.inc(),
        (Ok(()), Status::Refused) => live.processed_decode_failed.inc(),
    };
}
