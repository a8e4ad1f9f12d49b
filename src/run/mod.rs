//! The run engine: one scenario, measured honestly on each broker.
//!
//! A [`session::Session`] loops over the brokers (placing each with an
//! environment, connecting a driver, bounding the measurement, writing
//! results after each); [`measure`] runs one broker over a connected
//! [`Driver`], so the engine's verdicts can be tested on an in-memory driver
//! without any broker installed. Phases: setup (topology, consumers subscribed) -> warmup -> steady ->
//! drain -> report. Producers follow the open-loop [`pacer`]; every message is
//! accounted for in the [`ledger`]; latencies go into per-task histograms that
//! are merged at the end; [`faults`] are applied to the broker on their
//! timeline while the load runs. One [`CancellationToken`] stops everything:
//! the run then reports what it has, marked incomplete.
//!
//! Time bounds: producers stop sending at the end of the load and stop
//! waiting for confirmations (and retrying) at `end + drain_timeout`; the
//! drain of deliveries ends at the same deadline (plus a second for the
//! groups to count what they lack, when the producers ended only then). A
//! fault still in progress then (a broker that does not come back) adds at
//! most the broker's start deadline, and closing adds at most a few call
//! timeouts.

pub(crate) mod account;
mod consumer;
pub(crate) mod events;
pub(crate) mod faults;
pub(crate) mod find_max;
mod in_flight;
pub mod ledger;
#[cfg(test)]
pub(crate) mod memory;
pub mod pacer;
mod producer;
pub(crate) mod session;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentRun};
use crate::driver::{Consumer, Driver, ErrorCounts, ErrorKind, Producer, Settings, CALL_TIMEOUT};
use crate::env::FaultTarget;
use crate::event::{self, Envelope};
use crate::metrics::harness::Reading;
use crate::metrics::live::BrokerMetrics;
use crate::metrics::{Latency, LatencyIntervals, Timeline};
use crate::scenario::{Language, Plan};
use events::{Event, Observer};
use faults::FaultEvent;
use ledger::{GroupLog, ProducerLog};
use pacer::Pacer;
use producer::ProducerTask;

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
    /// Per group, set when its consumer ended for good (an agent that
    /// exited): the drain waits for it no longer.
    pub ended: Vec<AtomicBool>,
    /// Messages attempted, per producer.
    pub attempted: Vec<AtomicU64>,
    /// Publishes that got no answer within their timeout, so far.
    pub publish_timeouts: AtomicU64,
    /// The phase, as an index into [`Phase::ALL`].
    pub phase: AtomicU64,
    /// Set when the drain ran out and the groups read on at full speed.
    pub final_read: AtomicBool,
    /// Live metrics to update, when `--metrics-addr` serves them.
    pub(crate) live: Option<BrokerMetrics>,
}

impl Progress {
    /// Counters for a plan's groups and producers.
    pub fn new(groups: usize, producers: usize) -> Self {
        Progress {
            delivered: (0..groups).map(|_| AtomicU64::new(0)).collect(),
            missing: (0..groups).map(|_| AtomicU64::new(u64::MAX)).collect(),
            ended: (0..groups).map(|_| AtomicBool::new(false)).collect(),
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
    /// `publish`, second by second.
    pub publish_intervals: LatencyIntervals,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// Sends made during the steady phase (by actual send time), so a
    /// producer that fell behind shows a lower achieved rate.
    pub steady_sent: u64,
    /// Confirmations that arrived during the steady phase.
    pub steady_confirmed: u64,
    /// Messages sent again after no or a negative confirmation (retry mode).
    pub resent: u64,
    /// Messages that fell due during the load but were not sent by its end.
    pub unsent: u64,
    /// Per kind of publish failure, what the broker or client said first.
    pub first_errors: BTreeMap<ErrorKind, String>,
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
    /// `end_to_end`, second by second.
    pub end_to_end_intervals: LatencyIntervals,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// First deliveries that arrived during the steady phase.
    pub steady_delivered: u64,
    /// When first deliveries arrived.
    pub delivered_at: Timeline,
    /// When receiving or acknowledging failed.
    pub errors_at: Timeline,
    /// Confirmed messages first delivered (with failures: completed) in the final read.
    pub late: u64,
    /// With failures: when attempts failed on purpose.
    pub failed_at: Timeline,
    /// With failures: when messages were first read from the dead-letter destination.
    pub dead_lettered_at: Timeline,
    /// With failures: intended send time to the first read from the
    /// dead-letter destination.
    pub time_to_dead_letter: Latency,
    /// What the broker still held for the group at the end, as it reports
    /// it; `None` if it could not be asked.
    pub backlog: Option<u64>,
    /// A group in another language: its agent as it stood at the end.
    pub agent: Option<crate::driver::AgentState>,
    /// Deliveries its agent's typed decoder refused.
    pub decode_failed: u64,
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
    pub(crate) faults: Vec<FaultEvent>,
    /// Durability settings the driver used.
    pub settings: Settings,
    /// Whether the backlog the driver reports includes dead letters on their
    /// way to the dead-letter destination (see
    /// [`Driver::sees_dead_letters_in_flight`]).
    pub dead_letters_in_flight_seen: bool,
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
    /// How long the final read took (zero when the drain did not run out).
    pub final_read_elapsed: Duration,
    /// Set when the run was cancelled before it finished.
    pub cancelled: bool,
    /// Publish only: what the broker held at the end ([`Driver::stored`]);
    /// `None` with consumer groups, or when it could not be asked.
    pub stored: Option<u64>,
    /// What the fault proxy saw by the end, when clients went through it.
    pub proxy: Option<crate::env::proxy::ProxyCounts>,
    /// brokerbench's own use of the machine at the start and the end of the
    /// steady window (absent if the run never reached it).
    pub(crate) harness: Option<(Reading, Reading)>,
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
    /// The load: the messages' size, encoding, keys and event versions.
    load: Arc<crate::scenario::Load>,
}

impl RunContext {
    /// The context of run `run_id` of `plan`, its load starting now (in
    /// 10 ms), its instants counted from `epoch`.
    fn starting_now(plan: &Plan, run_id: u64, epoch: Instant) -> Self {
        let start = Instant::now() + Duration::from_millis(10);
        let end = start + plan.load.warmup + plan.load.duration;
        RunContext {
            run_id,
            epoch,
            start,
            steady_start: start + plan.load.warmup,
            end,
            deadline: end + plan.load.drain_timeout,
            load: Arc::new(plan.load.clone()),
        }
    }

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

    /// What brokerbench's own consumer makes of a received payload: one of
    /// this run's messages, decoded or refused by the typed decoder, or not.
    fn read(&self, payload: &[u8]) -> event::Read {
        match event::read(payload) {
            read if read.envelope().is_some_and(|e| e.run == self.run_id) => read,
            _ => event::Read::Foreign,
        }
    }

    /// The envelope of a received payload, if it is one of this run's
    /// messages, whether or not it decodes (a dead letter may be one that
    /// did not).
    fn envelope(&self, payload: &[u8]) -> Option<Envelope> {
        self.read(payload).envelope()
    }

    /// The event version of the message meant to be sent at `intended_ns`.
    fn event_version(&self, intended_ns: u64) -> event::EventVersion {
        let since = intended_ns
            .checked_sub(self.steady_ns())
            .map(Duration::from_nanos);
        self.load.event_version_at(since)
    }

    /// The instant `ns` nanoseconds after the epoch.
    fn at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// Time since the load began, for timelines.
    fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }
}

/// Runs `plan` over a connected `driver`, applying the plan's faults to
/// `target`. Setup errors (topology, subscriptions) are returned: the broker
/// cannot be measured. Everything after is data.
pub(crate) async fn measure(
    plan: &Plan,
    driver: &dyn Driver,
    target: &mut dyn FaultTarget,
    run_id: u64,
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
    observer: &dyn Observer,
) -> Result<Measurement> {
    progress.set_phase(Phase::Setup);
    driver.setup().await.context("setting up the topology")?;
    let epoch = Instant::now();
    let agents = AgentRun {
        run_id,
        epoch,
        backoff_max: plan.recovery.backoff_max,
    };
    let (consumers, producers) = open_clients(plan, driver, &agents).await?;

    // Everything is connected: the clock starts now.
    let cx = RunContext::starting_now(plan, run_id, epoch);
    // The publish history, frozen, for the consumers once the producers are done.
    let (share_logs, published) = tokio::sync::watch::channel(None);
    let stop_consumers = CancellationToken::new();
    let groups = (stop_consumers.clone(), published);
    let mut group_tasks = spawn_groups(plan, consumers, &cx, groups, progress);
    let producer_tasks = spawn_producers(plan, producers, &cx, progress, cancel);
    let faults = (target, driver, observer);
    let loaded = load_and_drain(
        plan,
        &cx,
        producer_tasks,
        share_logs,
        faults,
        cancel,
        progress,
    );
    let mut loaded = loaded.await?;

    progress.set_phase(Phase::Report);
    stop_consumers.cancel();
    let mut groups: Vec<(usize, GroupOutcome)> = Vec::new();
    while let Some(joined) = group_tasks.join_next().await {
        groups.push(joined.context("a consumer task failed")?);
    }
    groups.sort_by_key(|(index, _)| *index);
    let broker_down = loaded.faults.iter().any(|f| f.ready.is_none());
    let stored = ask_the_broker(plan, driver, &mut groups, progress, broker_down).await;
    let settings = driver.settings();
    let dead_letters_in_flight_seen = driver.sees_dead_letters_in_flight();
    driver.close().await;
    // The account is taken: the run's data goes, after the clients closed
    // (a producer that looks a deleted topic up could have it made again).
    // A broker that is down keeps it.
    if !plan.keep_data && !broker_down {
        teardown(driver, observer).await;
    }
    let sample = Envelope {
        run: run_id,
        producer: 0,
        seq: 0,
        key: 0,
        intended_ns: 0,
        sent_ns: 0,
    };
    Ok(Measurement {
        producers: std::mem::take(&mut loaded.producers),
        publish_logs: loaded.publish_logs,
        groups: groups.into_iter().map(|(_, g)| g).collect(),
        faults: loaded.faults,
        settings,
        dead_letters_in_flight_seen,
        message_bytes: event::encode(
            &sample,
            plan.load.message_size,
            plan.load.encoding,
            plan.load.event_version,
        )
        .payload
        .len(),
        load_start: cx.start,
        steady_start: cx.steady_start,
        steady_elapsed: loaded.steady_elapsed,
        drain_timed_out: loaded.drain.timed_out,
        drain_elapsed: loaded.drain.elapsed,
        final_read_elapsed: loaded.final_read_elapsed,
        cancelled: cancel.is_cancelled(),
        stored,
        proxy: None,
        harness: loaded.harness,
    })
}

/// Each group's consumer (and dead-letter reader), then each producer.
async fn open_clients(
    plan: &Plan,
    driver: &dyn Driver,
    agents: &AgentRun,
) -> Result<(Vec<GroupClients>, Vec<Box<dyn Producer>>)> {
    let mut consumers = Vec::new();
    for group in &plan.consumers {
        let consumer = match group.language {
            Language::Rust => driver.consumer(group).await,
            _ => match driver.agent_source(group).await {
                Ok(source) => agent::start(group, source, agents).await,
                Err(e) => Err(e),
            },
        }
        .with_context(|| format!("subscribing group {}", group.group))?;
        let dead_letters = match group.failures {
            Some(_) => Some(driver.dead_letters(group).await.with_context(|| {
                format!("reading group {}'s dead-letter destination", group.group)
            })?),
            None => None,
        };
        consumers.push((consumer, dead_letters));
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
    Ok((consumers, producers))
}

/// One task per consumer group, stopped by `stop` once the account is
/// taken; `published` gives them the publish history after the load.
fn spawn_groups(
    plan: &Plan,
    consumers: Vec<GroupClients>,
    cx: &RunContext,
    (stop, published): (CancellationToken, consumer::PublishedLogs),
    progress: &Arc<Progress>,
) -> JoinSet<(usize, GroupOutcome)> {
    let mut group_tasks = JoinSet::new();
    for (index, (consumer, group)) in consumers.into_iter().zip(&plan.consumers).enumerate() {
        let task = consumer::consume(
            consumer,
            group.clone(),
            cx.clone(),
            (stop.clone(), published.clone()),
            (progress.clone(), index),
        );
        group_tasks.spawn(async move { (index, task.await) });
    }
    group_tasks
}

/// One task per producer, each paced on its share of the schedule (closed
/// loop: unpaced).
fn spawn_producers(
    plan: &Plan,
    producers: Vec<Box<dyn Producer>>,
    cx: &RunContext,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> JoinSet<(u32, ProducerOutcome)> {
    let mut producer_tasks = JoinSet::new();
    for (id, producer) in producers.into_iter().enumerate() {
        let id = id as u32;
        let pacer = plan
            .load
            .open_loop()
            .then(|| Pacer::new(cx.start, plan.load.rate, id, plan.load.producers));
        let task = ProducerTask::new(producer, id, plan, cx.clone(), progress.clone());
        let cancel = cancel.clone();
        producer_tasks.spawn(async move { (id, task.run(pacer, cancel).await) });
    }
    producer_tasks
}

/// A group's consumer and, with failures, its dead-letter reader.
type GroupClients = (Box<dyn Consumer>, Option<Box<dyn Consumer>>);

/// What the load, the faults and the drain left.
struct Loaded {
    producers: Vec<ProducerOutcome>,
    publish_logs: Arc<Vec<ProducerLog>>,
    faults: Vec<FaultEvent>,
    steady_elapsed: Duration,
    harness: Option<(Reading, Reading)>,
    drain: Drain,
    final_read_elapsed: Duration,
}

/// Where the harness's readings of the steady window go. Without a warmup
/// the window opens now, not whenever the phases are first polled (a busy
/// runtime may poll them late).
fn window_readings(
    cx: &RunContext,
) -> (std::sync::OnceLock<Reading>, std::sync::OnceLock<Reading>) {
    let steady = std::sync::OnceLock::new();
    if cx.steady_start <= Instant::now() {
        let _ = steady.set(Reading::now());
    }
    (steady, std::sync::OnceLock::new())
}

/// The load with its phases and the fault timeline, until the producers
/// are done; then the drain (the groups get the publish history and count
/// down what they lack), the rest of the fault timeline, and the final read.
async fn load_and_drain(
    plan: &Plan,
    cx: &RunContext,
    mut producer_tasks: JoinSet<(u32, ProducerOutcome)>,
    share_logs: tokio::sync::watch::Sender<Option<Arc<Vec<ProducerLog>>>>,
    (target, driver, observer): (&mut dyn FaultTarget, &dyn Driver, &dyn Observer),
    cancel: &CancellationToken,
    progress: &Arc<Progress>,
) -> Result<Loaded> {
    // Load and faults; producers end after their confirmations (or the deadline).
    progress.set_phase(if plan.load.warmup.is_zero() {
        Phase::Steady
    } else {
        Phase::Warmup
    });
    // The harness reads its own use of the machine over the steady window.
    let (steady_reading, end_reading) = window_readings(cx);
    let phases = async {
        tokio::time::sleep_until(cx.steady_start.into()).await;
        progress.set_phase(Phase::Steady);
        let _ = steady_reading.set(Reading::now());
        tokio::time::sleep_until(cx.end.into()).await;
        let _ = end_reading.set(Reading::now());
        progress.set_phase(Phase::Drain);
        std::future::pending::<()>().await
    };
    let fault_run = faults::inject(
        &plan.faults,
        (target, driver),
        cx.steady_start,
        cx.deadline,
        cancel,
        progress,
        observer,
    );
    tokio::pin!(phases, fault_run);
    let mut fault_events = None;
    let mut producer_outcomes: Vec<(u32, ProducerOutcome)> = Vec::new();
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
        .min(cx.end)
        .saturating_duration_since(cx.steady_start);
    // Stopped early: the window ends now.
    let _ = end_reading.set(Reading::now());
    let harness = steady_reading
        .get()
        .cloned()
        .zip(end_reading.get().cloned());
    producer_outcomes.sort_by_key(|(id, _)| *id);
    let mut producers: Vec<ProducerOutcome> =
        producer_outcomes.into_iter().map(|(_, o)| o).collect();

    // Drain: the consumers get the publish history and count down what they lack.
    progress.set_phase(Phase::Drain);
    let publish_logs: Arc<Vec<ProducerLog>> = Arc::new(
        producers
            .iter_mut()
            .map(|p| std::mem::take(&mut p.log))
            .collect(),
    );
    share_logs.send_replace(Some(Arc::clone(&publish_logs)));
    let drain = drain(progress, cx.deadline, cancel).await;
    // A fault still in progress (a broker slow to come back) ends here.
    let faults = match fault_events {
        Some(events) => events,
        None => fault_run.await,
    };
    // The final read: what the drain left, read at full speed (Jepsen's);
    // pointless, like asking for the backlog, when the broker is still down.
    let broker_down = faults.iter().any(|f| f.ready.is_none());
    let mut final_read_elapsed = Duration::ZERO;
    if drain.timed_out && !cancel.is_cancelled() && !broker_down && !plan.load.final_read.is_zero()
    {
        progress.final_read.store(true, Ordering::Relaxed);
        final_read_elapsed = self::drain(progress, Instant::now() + plan.load.final_read, cancel)
            .await
            .elapsed;
    }
    Ok(Loaded {
        producers,
        publish_logs,
        faults,
        steady_elapsed,
        harness,
        drain,
        final_read_elapsed,
    })
}

/// Asks the broker, now that the consumers are closed, what each group
/// still lacks that it holds (backlog, not loss); publish only, what it
/// stores, so that whatever it no longer holds is lost. Not asked while it
/// is down.
async fn ask_the_broker(
    plan: &Plan,
    driver: &dyn Driver,
    groups: &mut [(usize, GroupOutcome)],
    progress: &Progress,
    broker_down: bool,
) -> Option<u64> {
    for ((index, outcome), group) in groups.iter_mut().zip(&plan.consumers) {
        outcome.backlog = match progress.missing[*index].load(Ordering::Relaxed) {
            0 => Some(0),
            _ if broker_down => None,
            _ => tokio::time::timeout(CALL_TIMEOUT, driver.backlog(group))
                .await
                .ok()
                .and_then(Result::ok),
        };
    }
    match plan.publish_only() && !broker_down {
        true => tokio::time::timeout(CALL_TIMEOUT, driver.stored())
            .await
            .ok()
            .and_then(Result::ok),
        false => None,
    }
}

/// Deletes the run's queues, streams or topics; a failure is a warning.
async fn teardown(driver: &dyn Driver, observer: &dyn Observer) {
    let error = match tokio::time::timeout(2 * CALL_TIMEOUT, driver.teardown()).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(_) => anyhow::anyhow!("no answer"),
    };
    observer.event(Event::TeardownFailed { error: &error });
}

/// How the drain ended.
struct Drain {
    timed_out: bool,
    elapsed: Duration,
}

/// How long past the deadline the groups may take to count what they lack,
/// when the producers only finished at the deadline (publishes never answered).
const COUNT_GRACE: Duration = Duration::from_secs(1);

/// Waits until every group has every confirmed message (each group counts
/// down what it lacks in [`Progress::missing`]), the deadline, or `cancel`.
/// At the deadline it waits up to [`COUNT_GRACE`] more for groups that have
/// not counted yet (producers that finished only at the deadline); it times
/// out when a group still lacks messages, or never counted.
async fn drain(progress: &Progress, deadline: Instant, cancel: &CancellationToken) -> Drain {
    let started = Instant::now();
    let mut timed_out = false;
    loop {
        // A group whose consumer ended for good has nothing more to count.
        let missing: Vec<u64> = (progress.missing.iter().zip(&progress.ended))
            .map(|(m, ended)| match ended.load(Ordering::Relaxed) {
                true => 0,
                false => m.load(Ordering::Relaxed),
            })
            .collect();
        let counted = missing.iter().all(|m| *m != u64::MAX);
        if (counted && missing.iter().all(|m| *m == 0)) || cancel.is_cancelled() {
            break;
        }
        let now = Instant::now();
        if now >= deadline && (counted || now >= deadline + COUNT_GRACE) {
            timed_out = true;
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = cancel.cancelled() => {}
        }
    }
    Drain {
        timed_out,
        elapsed: started.elapsed(),
    }
}

fn count(errors: &mut ErrorCounts, kind: ErrorKind) {
    *errors.entry(kind).or_default() += 1;
}
