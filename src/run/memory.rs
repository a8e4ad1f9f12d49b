//! An in-memory broker behind the [`Driver`] trait, with fault knobs, for
//! unit tests of the engine's own logic: the ledger's verdicts, the drain,
//! fault recovery times and the completeness rules, in milliseconds and with
//! no broker installed.
//!
//! It is compiled for tests only, so it can never stand in for a broker in
//! results. Broker behaviour is tested against real brokers (`tests/`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::broker::Endpoint;
use crate::driver::{
    Answer, Awaited, Consumer, Driver, ErrorKind, Failure, Incoming, Producer, Settings, Token,
};
use crate::env::{Environment, FaultTarget, Placed};
use crate::event::Outgoing;
use crate::kind::BrokerKind;
use crate::scenario::{ConsumerGroup, Plan};

/// What the in-memory broker does wrong, on purpose. "Every n-th" counts
/// publishes from 1 over the whole run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Knobs {
    /// Confirm every n-th publish, then forget it: lost.
    pub drop_after_confirm: Option<u64>,
    /// Deliver every n-th message twice to every group, the second time
    /// flagged as a redelivery: duplicates, redelivered.
    pub duplicate: Option<u64>,
    /// Hold every message this long before a group may receive it.
    pub delay: Duration,
    /// Take this long over each publish, one at a time: a broker whose
    /// capacity is one message per `slow`.
    pub slow: Option<Duration>,
    /// Spin the CPU this long in every send, on the producer's own thread:
    /// a harness made the limit by heavy per-message work.
    pub burn: Option<Duration>,
    /// Refuse every n-th publish without storing it: failed.
    pub refuse: Option<u64>,
    /// Store every n-th publish but answer it with a refusal: recovered.
    pub store_but_refuse: Option<u64>,
    /// Store every n-th publish and never answer it: unknown, then recovered.
    pub never_answer: Option<u64>,
    /// Queue every second message ahead of the one before it: out of order.
    pub swap_pairs: bool,
    /// Messages that are not ours, at the head of every group's queue: unexpected.
    pub foreign: usize,
    /// A kill or restart loses every queued message (the queues were not
    /// durable); the client declares them again when it reconnects.
    pub lose_topology_on_restart: bool,
    /// After a kill or restart it never comes back.
    pub never_back: bool,
    /// After a kill or restart it is back, but refuses every publish (as
    /// JetStream does once a memory stream is gone).
    pub refuse_after_restart: bool,
    /// Connecting fails: the broker cannot be measured.
    pub refuse_connect: bool,
    /// Declaring the topology fails: the broker cannot be measured.
    pub refuse_setup: bool,
    /// Closing the driver never returns: the session's bound must end it.
    pub hang_on_close: bool,
    /// Dead letters vanish instead of reaching the group's dead letters (as
    /// RabbitMQ at-most-once with no dead-letter exchange).
    pub drop_dead_letters: bool,
    /// It cannot say whether it holds dead letters on their way (as RabbitMQ
    /// quorum queues at least once): [`Driver::sees_dead_letters_in_flight`].
    pub hide_dead_letters_in_flight: bool,
    /// Counts [`Driver::teardown`]s, for the test that set it.
    pub teardowns: Arc<std::sync::atomic::AtomicUsize>,
}

/// A message held for one group.
struct Held {
    payload: Vec<u8>,
    ready_at: Instant,
    redelivered: bool,
}

#[derive(Default)]
struct State {
    published: u64,
    /// Publishes stored (not refused, not dropped), copies included.
    stored: u64,
    down: bool,
    restarted: bool,
    paused: bool,
    queues: BTreeMap<String, VecDeque<Held>>,
    /// Per group, its dead letters.
    dead: BTreeMap<String, VecDeque<Held>>,
    /// Deliveries of a failed message before it is dead-lettered.
    max_deliveries: u32,
}

/// One in-memory broker: its state and its knobs.
#[derive(Clone)]
pub(crate) struct MemoryBroker {
    state: Arc<Mutex<State>>,
    /// Held while a slow broker works on one publish.
    busy: Arc<tokio::sync::Mutex<()>>,
    knobs: Arc<Knobs>,
    endpoint: Endpoint,
}

/// How often a waiting consumer or confirmation looks again.
const POLL: Duration = Duration::from_millis(1);

impl MemoryBroker {
    fn new(kind: BrokerKind, knobs: Knobs) -> Self {
        MemoryBroker {
            state: Arc::default(),
            busy: Arc::default(),
            knobs: Arc::new(knobs),
            endpoint: Endpoint::local(kind, "127.0.0.1", 1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory broker lock")
    }

    /// Stores a publish and answers it, once the broker is up and running.
    async fn publish(self, payload: Vec<u8>) -> Result<(), Failure> {
        let _busy = match self.knobs.slow {
            Some(slow) => {
                let busy = self.busy.clone().lock_owned().await;
                tokio::time::sleep(slow).await;
                Some(busy)
            }
            None => None,
        };
        loop {
            match self.store(&payload) {
                Some(Some(answer)) => return answer,
                Some(None) => return std::future::pending().await,
                None => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// The answer to a publish: `None` while paused, `Some(None)` for no
    /// answer ever.
    fn store(&self, payload: &[u8]) -> Option<Option<Result<(), Failure>>> {
        let mut state = self.lock();
        if state.down {
            return Some(Some(Err(ErrorKind::Connection.into())));
        }
        if state.paused {
            return None;
        }
        if state.restarted && self.knobs.refuse_after_restart {
            return Some(Some(Err(ErrorKind::Refused.because("stream not found"))));
        }
        state.published += 1;
        let n = state.published;
        let every = |knob: Option<u64>| knob.is_some_and(|k| n % k == 0);
        let k = &self.knobs;
        if every(k.refuse) {
            return Some(Some(Err(ErrorKind::Refused.into())));
        }
        if every(k.drop_after_confirm) {
            return Some(Some(Ok(())));
        }
        let copies = if every(k.duplicate) { 2 } else { 1 };
        state.stored += copies;
        let ready_at = Instant::now() + k.delay;
        for queue in state.queues.values_mut() {
            for copy in 0..copies {
                let held = Held {
                    payload: payload.to_vec(),
                    ready_at,
                    redelivered: copy > 0,
                };
                // Ahead of the one before it, if that one still waits.
                if k.swap_pairs && n % 2 == 0 && !queue.is_empty() {
                    queue.insert(queue.len() - 1, held);
                } else {
                    queue.push_back(held);
                }
            }
        }
        if every(k.store_but_refuse) {
            return Some(Some(Err(ErrorKind::Refused.into())));
        }
        if every(k.never_answer) {
            return Some(None);
        }
        Some(Some(Ok(())))
    }

    /// The next message of `group` that is due, waiting while the broker is
    /// down or paused.
    async fn receive(&self, group: &str, dead: bool) -> Held {
        loop {
            {
                let mut state = self.lock();
                if !state.down && !state.paused {
                    let queues = if dead {
                        &mut state.dead
                    } else {
                        &mut state.queues
                    };
                    let queue = queues.entry(group.to_string()).or_default();
                    if queue.front().is_some_and(|h| h.ready_at <= Instant::now()) {
                        return queue.pop_front().expect("a front");
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn crash(&self) {
        let mut state = self.lock();
        state.down = true;
        if self.knobs.lose_topology_on_restart {
            for queue in state.queues.values_mut() {
                queue.clear();
            }
        }
    }

    fn come_back(&self) -> Result<()> {
        if self.knobs.never_back {
            bail!("the in-memory broker was told never to come back");
        }
        let mut state = self.lock();
        state.down = false;
        state.restarted = true;
        Ok(())
    }
}

/// Places a fresh in-memory broker with the same knobs for each kind.
pub(crate) struct MemoryEnv(pub Knobs);

#[async_trait]
impl Environment for MemoryEnv {
    fn name(&self) -> &'static str {
        "memory (tests only)"
    }

    async fn place(&mut self, kind: BrokerKind) -> Result<Box<dyn Placed>> {
        Ok(Box::new(MemoryBroker::new(kind, self.0.clone())))
    }
}

#[async_trait]
impl FaultTarget for MemoryBroker {
    async fn kill(&mut self) -> Result<()> {
        self.crash();
        Ok(())
    }

    async fn start(&mut self) -> Result<()> {
        self.come_back()
    }

    async fn restart(&mut self) -> Result<()> {
        self.crash();
        self.come_back()
    }

    async fn pause(&mut self) -> Result<()> {
        self.lock().paused = true;
        Ok(())
    }

    async fn resume(&mut self) -> Result<()> {
        self.lock().paused = false;
        Ok(())
    }
}

#[async_trait]
impl Placed for MemoryBroker {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn implementation(&self) -> &str {
        "in-memory test driver"
    }

    async fn connect(&self, plan: &Plan, _run_id: u64) -> Result<Box<dyn Driver>> {
        if self.knobs.refuse_connect {
            bail!("the in-memory broker refuses connections");
        }
        self.lock().max_deliveries = plan.dead_letter.max_deliveries;
        Ok(Box::new(self.clone()))
    }

    async fn shutdown(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// The settings the in-memory driver reports.
#[derive(Serialize)]
struct Applied {
    storage: &'static str,
}

#[async_trait]
impl Driver for MemoryBroker {
    async fn setup(&self) -> Result<()> {
        if self.knobs.refuse_setup {
            bail!("the in-memory broker refuses the topology");
        }
        Ok(())
    }

    async fn producer(&self, _id: u32) -> Result<Box<dyn Producer>> {
        Ok(Box::new(MemoryProducer {
            broker: self.clone(),
            answers: Awaited::new(),
        }))
    }

    async fn consumer(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        let mut state = self.lock();
        let queue = state.queues.entry(group.group.clone()).or_default();
        for i in 0..self.knobs.foreign {
            queue.push_back(Held {
                payload: format!("not one of ours {i}").into_bytes(),
                ready_at: Instant::now(),
                redelivered: false,
            });
        }
        Ok(Box::new(MemoryConsumer {
            broker: self.clone(),
            group: group.group.clone(),
            dead: false,
        }))
    }

    async fn dead_letters(&self, group: &ConsumerGroup) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(MemoryConsumer {
            broker: self.clone(),
            group: group.group.clone(),
            dead: true,
        }))
    }

    fn settings(&self) -> Settings {
        Settings::of(&Applied { storage: "memory" })
    }

    async fn backlog(&self, group: &ConsumerGroup) -> Result<u64> {
        let state = self.lock();
        Ok(state.queues.get(&group.group).map_or(0, |q| q.len() as u64))
    }

    fn sees_dead_letters_in_flight(&self) -> bool {
        !self.knobs.hide_dead_letters_in_flight
    }

    async fn stored(&self) -> Result<u64> {
        Ok(self.lock().stored)
    }

    /// Forgets every message, as a real broker deleting its queues would.
    async fn teardown(&self) -> Result<()> {
        let mut state = self.lock();
        state.stored = 0;
        state.queues.clear();
        state.dead.clear();
        self.knobs
            .teardowns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn close(&self) {
        if self.knobs.hang_on_close {
            std::future::pending::<()>().await;
        }
    }
}

/// Publishes to the in-memory broker; each publish's answer is a future.
struct MemoryProducer {
    broker: MemoryBroker,
    answers: Awaited<BoxFuture<'static, Result<(), Failure>>>,
}

#[async_trait]
impl Producer for MemoryProducer {
    async fn send(&mut self, token: Token, message: Outgoing) -> Result<(), Failure> {
        if let Some(burn) = self.broker.knobs.burn {
            let spin = Instant::now();
            while spin.elapsed() < burn {
                std::hint::spin_loop();
            }
        }
        if self.broker.lock().down {
            return Err(ErrorKind::Connection.because("connection refused"));
        }
        let answer = Box::pin(self.broker.clone().publish(message.payload));
        self.answers.push(token, answer);
        Ok(())
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer> {
        self.answers.poll_answer(cx)
    }
}

struct MemoryConsumer {
    broker: MemoryBroker,
    group: String,
    /// Reads the group's dead letters.
    dead: bool,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        let Held {
            payload,
            redelivered,
            ..
        } = self.broker.receive(&self.group, self.dead).await;
        // A failed message goes back to the end of the queue, or to the
        // group's dead letters at its last delivery.
        let (broker, group, copy) = (self.broker.clone(), self.group.clone(), payload.clone());
        let settle: crate::driver::Settler = Box::new(move |how| {
            Box::pin(async move {
                let attempt = match how {
                    crate::driver::Settle::Ack => return Ok(()),
                    // Dead-lettered at once (nobody reads a group's dead
                    // letters unless it has failures).
                    crate::driver::Settle::Refuse => u32::MAX,
                    crate::driver::Settle::Failed { attempt } => attempt,
                };
                {
                    let mut state = broker.lock();
                    let dead = attempt >= state.max_deliveries;
                    if dead && broker.knobs.drop_dead_letters {
                        return Ok(());
                    }
                    let held = Held {
                        payload: copy,
                        ready_at: Instant::now(),
                        redelivered: true,
                    };
                    let queues = if dead {
                        &mut state.dead
                    } else {
                        &mut state.queues
                    };
                    queues.entry(group).or_default().push_back(held);
                }
                Ok(())
            })
        });
        Some(Ok(Incoming {
            receipt: None,
            payload: payload.into(),
            redelivered,
            settle,
        }))
    }
}
