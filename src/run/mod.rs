//! The run engine: one broker, one scenario, measured honestly.
//!
//! Phases: setup (topology, consumers subscribed) -> warmup -> steady ->
//! drain -> report. Producers follow the open-loop [`pacer`]; every message is
//! accounted for in the [`ledger`]; latencies go into per-task histograms that
//! are merged at the end. One [`CancellationToken`] stops everything: the run
//! then drains briefly and reports what it has, marked incomplete.

pub mod ledger;
pub mod pacer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::driver::{self, Consumer, ErrorCounts, ErrorKind, Producer};
use crate::env::Endpoint;
use crate::event::{self, Envelope};
use crate::metrics::Latency;
use crate::scenario::{ConsumerGroup, Plan};
use ledger::{GroupLog, ProducerLog, PublishStatus, Seen};
use pacer::Pacer;

/// Live counters for progress display; written by the run, read by the display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages sent.
    pub sent: AtomicU64,
    /// Messages confirmed.
    pub confirmed: AtomicU64,
    /// Distinct messages delivered, per consumer group (in plan order).
    pub delivered: Vec<AtomicU64>,
    /// The phase, as an index into [`Phase::ALL`].
    pub phase: AtomicU64,
}

impl Progress {
    /// Counters for a plan's groups.
    pub fn new(groups: usize) -> Self {
        Progress {
            delivered: (0..groups).map(|_| AtomicU64::new(0)).collect(),
            ..Default::default()
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u64, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::ALL[self.phase.load(Ordering::Relaxed) as usize % Phase::ALL.len()]
    }
}

/// The lifecycle of one broker's run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting, declaring topology, subscribing consumers.
    Setup,
    /// Load runs; results are not counted.
    Warmup,
    /// The measured load.
    Steady,
    /// Waiting for outstanding confirms and deliveries.
    Drain,
    /// Accounting.
    Report,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 5] = [
        Phase::Setup,
        Phase::Warmup,
        Phase::Steady,
        Phase::Drain,
        Phase::Report,
    ];

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::Warmup => "warmup",
            Phase::Steady => "steady",
            Phase::Drain => "drain",
            Phase::Report => "report",
        }
    }
}

/// What one producer task measured.
#[derive(Default)]
pub struct ProducerOutcome {
    /// Publish history.
    pub log: ProducerLog,
    /// Intended send time to confirmation (corrected for coordinated omission).
    pub publish: Latency,
    /// Actual send time to confirmation (service time, uncorrected).
    pub publish_service: Latency,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// Sends made during the steady phase (by actual send time), so a
    /// producer that fell behind shows a lower achieved rate.
    pub steady_sent: u64,
    /// Confirmations that arrived during the steady phase.
    pub steady_confirmed: u64,
}

/// What one consumer group measured.
#[derive(Default)]
pub struct GroupOutcome {
    /// Delivery history.
    pub log: GroupLog,
    /// Intended send time to delivery (corrected).
    pub end_to_end: Latency,
    /// Actual send time to delivery (uncorrected).
    pub end_to_end_service: Latency,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// First deliveries that arrived during the steady phase.
    pub steady_delivered: u64,
}

/// Everything one broker's run produced, before it is turned into results.
pub struct Measurement {
    /// Per producer.
    pub producers: Vec<ProducerOutcome>,
    /// Per consumer group, in plan order.
    pub groups: Vec<GroupOutcome>,
    /// Durability settings the driver used.
    pub settings: std::collections::BTreeMap<String, serde_json::Value>,
    /// Largest payload sent, bytes.
    pub message_bytes: usize,
    /// How long the steady phase lasted (shorter if cancelled).
    pub steady_elapsed: Duration,
    /// Whether the drain ended by timeout with messages outstanding.
    pub drain_timed_out: bool,
    /// How long the drain took.
    pub drain_elapsed: Duration,
    /// Set when the run was cancelled before it finished.
    pub cancelled: bool,
}

/// Shared, read-only facts of one run.
#[derive(Clone)]
struct RunContext {
    run_id: u64,
    epoch: Instant,
    /// When the load (warmup first) begins.
    start: Instant,
    steady_start: Instant,
    end: Instant,
    message_size: usize,
    keys: u64,
}

impl RunContext {
    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn steady_ns(&self) -> u64 {
        self.ns(self.steady_start)
    }

    /// Whether `at` falls in the steady (measured) window.
    fn in_steady(&self, at: Instant) -> bool {
        at >= self.steady_start && at < self.end
    }
}

/// Runs `plan` against the broker at `endpoint`. Connection and setup errors
/// are returned (the broker cannot be measured); everything after is data.
pub async fn measure(
    plan: &Plan,
    endpoint: &Endpoint,
    run_id: u64,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<Measurement> {
    progress.set_phase(Phase::Setup);
    let broker = endpoint.kind;
    let connect = driver::connect(plan, endpoint, run_id);
    let driver = connect
        .await
        .with_context(|| format!("cannot reach {broker} at {}", endpoint.url()))?;
    driver
        .setup()
        .await
        .with_context(|| format!("setting up {broker} at {}", endpoint.url()))?;

    let epoch = Instant::now();
    let stop_consumers = CancellationToken::new();
    let mut consumers = Vec::new();
    for group in &plan.consumers {
        let consumer = driver
            .consumer(group)
            .await
            .with_context(|| format!("subscribing group {}", group.group))?;
        consumers.push(consumer);
    }
    let mut producers = Vec::new();
    for id in 0..plan.load.producers {
        producers.push(
            driver
                .producer(id)
                .await
                .with_context(|| format!("creating producer {id}"))?,
        );
    }

    // Everything is connected: the clock starts now.
    let start = Instant::now() + Duration::from_millis(10);
    let context = RunContext {
        run_id,
        epoch,
        start,
        steady_start: start + plan.load.warmup,
        end: start + plan.load.warmup + plan.load.duration,
        message_size: plan.load.message_size,
        keys: plan.load.keys,
    };
    let mut group_tasks = JoinSet::new();
    for (index, (consumer, group)) in consumers.into_iter().zip(&plan.consumers).enumerate() {
        let task = consume(
            consumer,
            group.clone(),
            context.clone(),
            stop_consumers.clone(),
            (progress.clone(), index),
        );
        group_tasks.spawn(async move { (index, task.await) });
    }
    let mut producer_tasks = JoinSet::new();
    for (id, producer) in producers.into_iter().enumerate() {
        let schedule = match plan.load.open_loop() {
            true => Some(Pacer::new(
                start,
                plan.load.rate,
                id as u32,
                plan.load.producers,
            )),
            false => None,
        };
        let limits = (plan.load.max_in_flight, plan.load.drain_timeout);
        let task = produce(
            producer,
            id as u32,
            schedule,
            limits,
            context.clone(),
            cancel.clone(),
            progress.clone(),
        );
        producer_tasks.spawn(async move { (id, task.await) });
    }

    // Load: the producers end at `end`, then wait for their confirmations.
    progress.set_phase(if plan.load.warmup.is_zero() {
        Phase::Steady
    } else {
        Phase::Warmup
    });
    let mut producer_outcomes: Vec<(usize, ProducerOutcome)> = Vec::new();
    let phases = async {
        tokio::time::sleep_until(context.steady_start.into()).await;
        progress.set_phase(Phase::Steady);
        tokio::time::sleep_until(context.end.into()).await;
        progress.set_phase(Phase::Drain);
        std::future::pending::<()>().await
    };
    tokio::pin!(phases);
    while !producer_tasks.is_empty() {
        tokio::select! {
            joined = producer_tasks.join_next() => {
                if let Some(joined) = joined {
                    producer_outcomes.push(joined.context("a producer task failed")?);
                }
            }
            _ = &mut phases => {}
        }
    }
    let steady_elapsed = Instant::now()
        .min(context.end)
        .saturating_duration_since(context.steady_start);
    producer_outcomes.sort_by_key(|(id, _)| *id);
    let producer_outcomes: Vec<ProducerOutcome> =
        producer_outcomes.into_iter().map(|(_, o)| o).collect();

    // Drain: until every group has as many distinct messages as were confirmed.
    progress.set_phase(Phase::Drain);
    let drain_start = Instant::now();
    let confirmed: u64 = producer_outcomes
        .iter()
        .map(|p| ledger::publish_account(std::slice::from_ref(&p.log)).confirmed)
        .sum();
    let drain_deadline = context.end.max(drain_start) + plan.load.drain_timeout;
    let mut drain_timed_out = false;
    loop {
        if progress
            .delivered
            .iter()
            .all(|d| d.load(Ordering::Relaxed) >= confirmed)
        {
            break;
        }
        if cancel.is_cancelled() {
            break;
        }
        if Instant::now() >= drain_deadline {
            drain_timed_out = true;
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = cancel.cancelled() => {}
        }
    }
    let drain_elapsed = drain_start.elapsed();
    progress.set_phase(Phase::Report);
    stop_consumers.cancel();
    let mut groups: Vec<(usize, GroupOutcome)> = Vec::new();
    while let Some(joined) = group_tasks.join_next().await {
        groups.push(joined.context("a consumer task failed")?);
    }
    groups.sort_by_key(|(index, _)| *index);
    let settings = driver.settings();
    driver.close().await;
    Ok(Measurement {
        producers: producer_outcomes,
        groups: groups.into_iter().map(|(_, g)| g).collect(),
        settings,
        message_bytes: event::encode(
            &Envelope {
                run: run_id,
                producer: 0,
                seq: 0,
                key: 0,
                intended_ns: 0,
                sent_ns: 0,
            },
            plan.load.message_size,
        )
        .payload
        .len(),
        steady_elapsed,
        drain_timed_out,
        drain_elapsed,
        cancelled: cancel.is_cancelled(),
    })
}

fn count(errors: &mut ErrorCounts, kind: ErrorKind) {
    *errors.entry(kind).or_default() += 1;
}

/// One producer: sends on schedule (or as fast as confirmations allow), keeps
/// up to `max_in_flight` confirmations outstanding, then waits for the rest
/// until the drain timeout.
async fn produce(
    mut producer: Box<dyn Producer>,
    id: u32,
    pacer: Option<Pacer>,
    (max_in_flight, drain_timeout): (usize, Duration),
    cx: RunContext,
    cancel: CancellationToken,
    progress: Arc<Progress>,
) -> ProducerOutcome {
    let mut out = ProducerOutcome::default();
    let mut in_flight = FuturesUnordered::new();
    let limit = pacer.as_ref().map(|p| p.count_within(cx.end - cx.start));
    let steady_ns = cx.steady_ns();

    let settle =
        |out: &mut ProducerOutcome,
         (seq, due, sent, result): (u64, Instant, Instant, Result<(), ErrorKind>)| {
            let now = Instant::now();
            match result {
                Ok(()) => {
                    out.log.settle(seq, PublishStatus::Confirmed);
                    progress.confirmed.fetch_add(1, Ordering::Relaxed);
                    if cx.ns(due) >= steady_ns {
                        out.publish.record(now - due);
                        out.publish_service.record(now - sent);
                    }
                    out.steady_confirmed += u64::from(cx.in_steady(now));
                }
                // No answer, or the connection went: the broker may still have it.
                Err(kind @ (ErrorKind::Timeout | ErrorKind::Connection)) => {
                    count(&mut out.errors, kind)
                }
                Err(kind) => {
                    out.log.settle(seq, PublishStatus::Failed);
                    count(&mut out.errors, kind);
                }
            }
        };

    let mut k: u64 = 0;
    'send: loop {
        let due = match (&pacer, limit) {
            (Some(p), Some(n)) if k < n => p.intended(k),
            (Some(_), _) => break,
            (None, _) if Instant::now() < cx.end => Instant::now(),
            (None, _) => break,
        };
        // Wait until the message is due and a confirmation slot is free,
        // settling confirmations meanwhile.
        loop {
            let on_time = Instant::now() >= due;
            if on_time && in_flight.len() < max_in_flight {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break 'send,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => settle(&mut out, done),
                _ = tokio::time::sleep_until(due.into()), if !on_time => {}
            }
        }
        while let Some(Some(done)) = in_flight.next().now_or_never() {
            settle(&mut out, done);
        }
        let seq = out.log.attempt();
        let sent = Instant::now();
        let envelope = Envelope {
            run: cx.run_id,
            producer: id,
            seq,
            key: rand::random_range(0..cx.keys),
            intended_ns: cx.ns(due),
            sent_ns: cx.ns(sent),
        };
        out.steady_sent += u64::from(cx.in_steady(sent));
        match producer
            .send(event::encode(&envelope, cx.message_size))
            .await
        {
            Ok(confirmation) => {
                in_flight.push(confirmation.map(move |result| (seq, due, sent, result)))
            }
            Err(kind) => {
                out.log.settle(seq, PublishStatus::Failed);
                count(&mut out.errors, kind);
            }
        }
        progress.sent.fetch_add(1, Ordering::Relaxed);
        k += 1;
    }
    // Outstanding confirmations, until the drain timeout.
    let deadline = tokio::time::Instant::from(cx.end.max(Instant::now()) + drain_timeout);
    while !in_flight.is_empty() {
        tokio::select! {
            Some(done) = in_flight.next() => settle(&mut out, done),
            _ = tokio::time::sleep_until(deadline) => break,
            _ = cancel.cancelled() => break,
        }
    }
    // Whatever is still in flight stays pending: unknown.
    out
}

/// One consumer group: records every delivery in the ledger and the latency
/// histograms on arrival, processes up to `concurrency` messages at once, and
/// acknowledges each after its processing. Processing and acks run as futures
/// of this task, concurrently with receiving: waiting for one ack before
/// receiving the next message would make brokerbench the bottleneck.
async fn consume(
    mut consumer: Box<dyn Consumer>,
    group: ConsumerGroup,
    cx: RunContext,
    stop: CancellationToken,
    (progress, index): (Arc<Progress>, usize),
) -> GroupOutcome {
    let mut out = GroupOutcome::default();
    let mut processing = FuturesUnordered::new();
    let steady_ns = cx.steady_ns();
    let work = group.processing_time;
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(acked) = processing.next(), if !processing.is_empty() => {
                if let Err(kind) = acked {
                    count(&mut out.errors, kind);
                }
                continue;
            }
            next = consumer.next(), if processing.len() < group.concurrency => next,
        };
        let incoming = match next {
            None => break,
            Some(Err(kind)) => {
                count(&mut out.errors, kind);
                tokio::time::sleep(Duration::from_millis(10)).await; // no hot loop on a broken subscription
                continue;
            }
            Some(Ok(incoming)) => incoming,
        };
        let now = Instant::now();
        match event::decode(&incoming.payload).filter(|e| e.run == cx.run_id) {
            Some(envelope) => {
                let first = out.log.record(&envelope, incoming.redelivered) == Seen::First;
                if first && envelope.intended_ns >= steady_ns {
                    let at = cx.ns(now);
                    out.end_to_end.record(Duration::from_nanos(
                        at.saturating_sub(envelope.intended_ns),
                    ));
                    out.end_to_end_service
                        .record(Duration::from_nanos(at.saturating_sub(envelope.sent_ns)));
                }
                out.steady_delivered += u64::from(first && cx.in_steady(now));
                progress.delivered[index].store(out.log.unique(), Ordering::Relaxed);
            }
            None => out.log.record_foreign(),
        }
        let ack = incoming.ack;
        processing.push(async move {
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            ack().await
        });
    }
    // Let messages being processed finish and be acknowledged.
    let finish = async {
        while let Some(acked) = processing.next().await {
            if let Err(kind) = acked {
                count(&mut out.errors, kind);
            }
        }
    };
    let _ = tokio::time::timeout(driver::CALL_TIMEOUT, finish).await;
    let _ = tokio::time::timeout(driver::CALL_TIMEOUT, consumer.close()).await;
    out
}
