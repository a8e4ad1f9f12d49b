//! The run engine: one broker, one scenario, measured honestly.
//!
//! Phases: setup (topology, consumers subscribed) -> warmup -> steady ->
//! drain -> report. Producers follow the open-loop [`pacer`]; every message is
//! accounted for in the [`ledger`]; latencies go into per-task histograms that
//! are merged at the end; [`faults`] are applied to the broker on their
//! timeline while the load runs. One [`CancellationToken`] stops everything:
//! the run then reports what it has, marked incomplete.
//!
//! Time bounds: producers stop sending at the end of the load and stop
//! waiting for confirmations (and retrying) at `end + drain_timeout`; the
//! drain of deliveries ends at the same deadline. A fault still in progress
//! then (a broker that does not come back) adds at most the broker's start
//! deadline, and closing adds at most a few call timeouts.

pub mod faults;
pub mod ledger;
pub mod pacer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::driver::{self, Consumer, ErrorCounts, ErrorKind, Producer, Settings};
use crate::env::{Endpoint, FaultTarget};
use crate::event::{self, Envelope};
use crate::metrics::{Latency, Timeline};
use crate::scenario::{ConsumerGroup, Plan, Unconfirmed};
use faults::FaultEvent;
use ledger::{GroupLog, ProducerLog, PublishStatus, Seen};
use pacer::Pacer;

/// Live counters; written by the run, read by the progress display and the
/// fault timeline.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages sent (resends included).
    pub sent: AtomicU64,
    /// Messages confirmed.
    pub confirmed: AtomicU64,
    /// Distinct messages delivered, per consumer group (in plan order).
    pub delivered: Vec<AtomicU64>,
    /// Per group, confirmed messages not delivered yet; `u64::MAX` until the
    /// producers are done and the group has counted them.
    pub missing: Vec<AtomicU64>,
    /// Messages attempted, per producer.
    pub attempted: Vec<AtomicU64>,
    /// The phase, as an index into [`Phase::ALL`].
    pub phase: AtomicU64,
}

impl Progress {
    /// Counters for a plan's groups and producers.
    pub fn new(groups: usize, producers: usize) -> Self {
        Progress {
            delivered: (0..groups).map(|_| AtomicU64::new(0)).collect(),
            missing: (0..groups).map(|_| AtomicU64::new(u64::MAX)).collect(),
            attempted: (0..producers).map(|_| AtomicU64::new(0)).collect(),
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
    /// Publish history (moved to [`Measurement::publish_logs`] when the
    /// producers are done).
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
    /// Messages sent again after no or a negative confirmation (retry mode).
    pub resent: u64,
    /// When confirmations arrived.
    pub confirmed_at: Timeline,
    /// When publishes failed.
    pub errors_at: Timeline,
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
    /// When first deliveries arrived.
    pub delivered_at: Timeline,
    /// When receiving or acknowledging failed.
    pub errors_at: Timeline,
}

/// Everything one broker's run produced, before it is turned into results.
pub struct Measurement {
    /// Per producer.
    pub producers: Vec<ProducerOutcome>,
    /// Every producer's publish history, in producer order.
    pub publish_logs: Arc<Vec<ProducerLog>>,
    /// Per consumer group, in plan order.
    pub groups: Vec<GroupOutcome>,
    /// The faults applied, in order.
    pub faults: Vec<FaultEvent>,
    /// Durability settings the driver used.
    pub settings: Settings,
    /// Payload size of a message, bytes.
    pub message_bytes: usize,
    /// When the load (warmup first) began; timelines count from here.
    pub load_start: Instant,
    /// When the steady phase began.
    pub steady_start: Instant,
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
    /// No more waiting for confirmations or deliveries after this.
    deadline: Instant,
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

    /// Time since the load began, for timelines.
    fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }
}

/// Runs `plan` against the broker at `endpoint`, applying the plan's faults to
/// `target`. Connection and setup errors are returned (the broker cannot be
/// measured); everything after is data.
pub async fn measure(
    plan: &Plan,
    endpoint: &Endpoint,
    target: &mut dyn FaultTarget,
    run_id: u64,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<Measurement> {
    progress.set_phase(Phase::Setup);
    let broker = endpoint.kind;
    let connect = crate::broker::connect(plan, endpoint, run_id);
    let driver = connect
        .await
        .with_context(|| format!("cannot reach {broker} at {}", endpoint.shown()))?;
    driver
        .setup()
        .await
        .with_context(|| format!("setting up {broker} at {}", endpoint.shown()))?;

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
    let end = start + plan.load.warmup + plan.load.duration;
    let context = RunContext {
        run_id,
        epoch,
        start,
        steady_start: start + plan.load.warmup,
        end,
        deadline: end + plan.load.drain_timeout,
        message_size: plan.load.message_size,
        keys: plan.load.keys,
    };
    // The publish history, frozen, for the consumers once the producers are done.
    let (share_logs, published) = tokio::sync::watch::channel(None);
    let mut group_tasks = JoinSet::new();
    for (index, (consumer, group)) in consumers.into_iter().zip(&plan.consumers).enumerate() {
        let task = consume(
            consumer,
            group.clone(),
            context.clone(),
            (stop_consumers.clone(), published.clone()),
            (progress.clone(), index),
        );
        group_tasks.spawn(async move { (index, task.await) });
    }
    let mut producer_tasks = JoinSet::new();
    for (id, producer) in producers.into_iter().enumerate() {
        let pacer = plan
            .load
            .open_loop()
            .then(|| Pacer::new(start, plan.load.rate, id as u32, plan.load.producers));
        let task = ProducerTask {
            producer,
            id: id as u32,
            cx: context.clone(),
            retry: plan.recovery.on_unconfirmed == Unconfirmed::Retry,
            backoff_max: plan.recovery.backoff_max,
            max_in_flight: plan.load.max_in_flight,
            progress: progress.clone(),
            out: ProducerOutcome::default(),
            in_flight: FuturesUnordered::new(),
            retries: Vec::new(),
        };
        let cancel = cancel.clone();
        producer_tasks.spawn(async move { (id, task.run(pacer, cancel).await) });
    }

    // Load and faults; producers end after their confirmations (or the deadline).
    progress.set_phase(if plan.load.warmup.is_zero() {
        Phase::Steady
    } else {
        Phase::Warmup
    });
    let phases = async {
        tokio::time::sleep_until(context.steady_start.into()).await;
        progress.set_phase(Phase::Steady);
        tokio::time::sleep_until(context.end.into()).await;
        progress.set_phase(Phase::Drain);
        std::future::pending::<()>().await
    };
    let fault_run = faults::inject(
        &plan.faults,
        target,
        context.steady_start,
        context.deadline,
        cancel,
        progress,
    );
    tokio::pin!(phases, fault_run);
    let mut fault_events = None;
    let mut producer_outcomes: Vec<(usize, ProducerOutcome)> = Vec::new();
    while !producer_tasks.is_empty() {
        tokio::select! {
            joined = producer_tasks.join_next() => {
                if let Some(joined) = joined {
                    producer_outcomes.push(joined.context("a producer task failed")?);
                }
            }
            events = &mut fault_run, if fault_events.is_none() => fault_events = Some(events),
            _ = &mut phases => {}
        }
    }
    let steady_elapsed = Instant::now()
        .min(context.end)
        .saturating_duration_since(context.steady_start);
    producer_outcomes.sort_by_key(|(id, _)| *id);
    let mut producer_outcomes: Vec<ProducerOutcome> =
        producer_outcomes.into_iter().map(|(_, o)| o).collect();

    // Drain: until every group has every confirmed message, or the timeout.
    progress.set_phase(Phase::Drain);
    let drain_start = Instant::now();
    let publish_logs: Arc<Vec<ProducerLog>> = Arc::new(
        producer_outcomes
            .iter_mut()
            .map(|p| std::mem::take(&mut p.log))
            .collect(),
    );
    share_logs.send_replace(Some(Arc::clone(&publish_logs)));
    let mut drain_timed_out = false;
    loop {
        let all_in = progress
            .missing
            .iter()
            .all(|m| m.load(Ordering::Relaxed) == 0);
        if all_in || cancel.is_cancelled() {
            break;
        }
        if Instant::now() >= context.deadline {
            drain_timed_out = true;
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = cancel.cancelled() => {}
        }
    }
    let drain_elapsed = drain_start.elapsed();
    // A fault still in progress (a broker slow to come back) ends here.
    let fault_events = match fault_events {
        Some(events) => events,
        None => fault_run.await,
    };
    progress.set_phase(Phase::Report);
    stop_consumers.cancel();
    let mut groups: Vec<(usize, GroupOutcome)> = Vec::new();
    while let Some(joined) = group_tasks.join_next().await {
        groups.push(joined.context("a consumer task failed")?);
    }
    groups.sort_by_key(|(index, _)| *index);
    let settings = driver.settings();
    driver.close().await;
    let sample = Envelope {
        run: run_id,
        producer: 0,
        seq: 0,
        key: 0,
        intended_ns: 0,
        sent_ns: 0,
    };
    Ok(Measurement {
        producers: producer_outcomes,
        publish_logs,
        groups: groups.into_iter().map(|(_, g)| g).collect(),
        faults: fault_events,
        settings,
        message_bytes: event::encode(&sample, plan.load.message_size).payload.len(),
        load_start: context.start,
        steady_start: context.steady_start,
        steady_elapsed,
        drain_timed_out,
        drain_elapsed,
        cancelled: cancel.is_cancelled(),
    })
}

fn count(errors: &mut ErrorCounts, kind: ErrorKind) {
    *errors.entry(kind).or_default() += 1;
}

/// A message to send (again): who it is and when it was due.
#[derive(Clone, Copy)]
struct Send {
    seq: u64,
    key: u64,
    due: Instant,
    /// Sends of this message so far.
    attempt: u32,
}

/// The broker's answer to one send.
struct Answer {
    send: Send,
    sent: Instant,
    result: Result<(), ErrorKind>,
}

/// One producer: sends on schedule (or as fast as confirmations allow),
/// keeps up to `max_in_flight` confirmations outstanding, and, in retry mode,
/// sends unconfirmed messages again with the reconnection backoff.
struct ProducerTask {
    producer: Box<dyn Producer>,
    id: u32,
    cx: RunContext,
    retry: bool,
    backoff_max: Duration,
    max_in_flight: usize,
    progress: Arc<Progress>,
    out: ProducerOutcome,
    in_flight: FuturesUnordered<BoxFuture<'static, Answer>>,
    /// Messages to send again, each with the earliest time to do so.
    retries: Vec<(Instant, Send)>,
}

impl ProducerTask {
    async fn run(mut self, pacer: Option<Pacer>, cancel: CancellationToken) -> ProducerOutcome {
        let limit = pacer
            .as_ref()
            .map(|p| p.count_within(self.cx.end - self.cx.start));
        let mut k: u64 = 0;
        loop {
            let due = match (&pacer, limit) {
                (Some(p), Some(n)) if k < n => Some(p.intended(k)),
                (None, _) if Instant::now() < self.cx.end => Some(Instant::now()),
                _ => None,
            };
            if due.is_none() && self.in_flight.is_empty() && self.retries.is_empty() {
                break;
            }
            if Instant::now() >= self.cx.deadline {
                break; // what is still in flight, or never sent, stays unknown
            }
            let slot = self.in_flight.len() < self.max_in_flight;
            let now = Instant::now();
            // A retry whose time has come goes first.
            if let Some(i) = self
                .retries
                .iter()
                .position(|(at, _)| *at <= now)
                .filter(|_| slot)
            {
                let (_, send) = self.retries.swap_remove(i);
                self.out.resent += 1;
                self.send(send).await;
                continue;
            }
            if let Some(due) = due.filter(|d| *d <= now && slot) {
                let seq = self.out.log.attempt();
                self.progress.attempted[self.id as usize].fetch_add(1, Ordering::Relaxed);
                let key = rand::random_range(0..self.cx.keys);
                self.send(Send {
                    seq,
                    key,
                    due,
                    attempt: 0,
                })
                .await;
                k += 1;
                continue;
            }
            // Nothing to send yet: wait for the next due time, retry time or answer.
            let next_retry = self.retries.iter().map(|(at, _)| *at).min();
            let wake = [
                due.filter(|_| slot),
                next_retry.filter(|_| slot),
                Some(self.cx.deadline),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("the deadline is always there");
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(answer) = self.in_flight.next(), if !self.in_flight.is_empty() => self.settle(answer),
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        self.out
    }

    async fn send(&mut self, send: Send) {
        while let Some(Some(answer)) = self.in_flight.next().now_or_never() {
            self.settle(answer);
        }
        let sent = Instant::now();
        let envelope = Envelope {
            run: self.cx.run_id,
            producer: self.id,
            seq: send.seq,
            key: send.key,
            intended_ns: self.cx.ns(send.due),
            sent_ns: self.cx.ns(sent),
        };
        // The achieved rate counts first sends; resends are counted apart.
        self.out.steady_sent += u64::from(send.attempt == 0 && self.cx.in_steady(sent));
        self.progress.sent.fetch_add(1, Ordering::Relaxed);
        let send = Send {
            attempt: send.attempt + 1,
            ..send
        };
        match self
            .producer
            .send(event::encode(&envelope, self.cx.message_size))
            .await
        {
            Ok(confirmation) => {
                self.in_flight.push(
                    confirmation
                        .map(move |result| Answer { send, sent, result })
                        .boxed(),
                );
            }
            Err(kind) => self.failed(send, kind),
        }
    }

    fn settle(&mut self, Answer { send, sent, result }: Answer) {
        let now = Instant::now();
        match result {
            Ok(()) => {
                self.out.log.settle(send.seq, PublishStatus::Confirmed);
                self.progress.confirmed.fetch_add(1, Ordering::Relaxed);
                self.out.confirmed_at.record(self.cx.since_start(now));
                if self.cx.ns(send.due) >= self.cx.steady_ns() {
                    self.out.publish.record(now - send.due);
                    self.out.publish_service.record(now - sent);
                }
                self.out.steady_confirmed += u64::from(self.cx.in_steady(now));
            }
            Err(kind) => self.failed(send, kind),
        }
    }

    /// No confirmation: send again later (retry), or give the message up (drop).
    fn failed(&mut self, send: Send, kind: ErrorKind) {
        let now = Instant::now();
        count(&mut self.out.errors, kind);
        self.out.errors_at.record(self.cx.since_start(now));
        if !self.retry {
            self.out.log.settle(send.seq, PublishStatus::Failed);
        } else if now < self.cx.deadline {
            let wait = driver::backoff(send.attempt.saturating_sub(1), self.backoff_max);
            self.retries.push((now + wait, send));
        }
        // A retry past the deadline stays pending: unknown.
    }
}

/// The producers' history, published to the consumers when they are done.
type PublishedLogs = tokio::sync::watch::Receiver<Option<Arc<Vec<ProducerLog>>>>;

/// One consumer group: records every delivery in the ledger and the latency
/// histograms on arrival, processes up to `concurrency` messages at once, and
/// acknowledges each after its processing. Processing and acks run as futures
/// of this task, concurrently with receiving: waiting for one ack before
/// receiving the next message would make brokerbench the bottleneck.
async fn consume(
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
    let work = group.processing_time;
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
            Some(acked) = processing.next(), if !processing.is_empty() => {
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
                if first {
                    out.delivered_at.record(cx.since_start(now));
                }
                if first && envelope.intended_ns >= steady_ns {
                    let at = cx.ns(now);
                    out.end_to_end.record(Duration::from_nanos(
                        at.saturating_sub(envelope.intended_ns),
                    ));
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
                }
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
