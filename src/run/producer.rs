//! One producer task: open-loop sends on the pacer's schedule (or closed
//! loop at rate 0), confirmations awaited concurrently, and in retry mode
//! unconfirmed messages sent again with the reconnection backoff.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::in_flight::InFlight;
use super::ledger::PublishStatus;
use super::pacer::Pacer;
use super::{count, ProducerOutcome, Progress, RunContext};
use crate::driver::{self, Answer, ErrorKind, Failure, Producer, Token};
use crate::event::{self, Envelope};
use crate::scenario::{Plan, Unconfirmed};

/// A message to send (again): who it is and when it was due.
#[derive(Clone, Copy)]
struct Send {
    seq: u64,
    key: u64,
    due: Instant,
    /// Sends of this message so far.
    attempt: u32,
}

/// A send awaiting the broker's answer.
struct Outstanding {
    send: Send,
    sent: Instant,
}

/// How often sends are checked for an answer overdue by the producer's
/// [`Producer::confirm_timeout`].
const OVERDUE_CHECK: Duration = Duration::from_secs(1);

/// How long after the end of the load a producer still sends what fell due
/// before it: the timer can wake a little late.
const SEND_GRACE: Duration = Duration::from_millis(50);

/// One producer: sends on schedule (or as fast as confirmations allow),
/// keeps up to `max_in_flight` confirmations outstanding, and, in retry mode,
/// sends unconfirmed messages again with the reconnection backoff.
pub(super) struct ProducerTask {
    producer: Box<dyn Producer>,
    id: u32,
    cx: RunContext,
    retry: bool,
    backoff_max: Duration,
    max_in_flight: usize,
    progress: Arc<Progress>,
    out: ProducerOutcome,
    /// Sends awaiting an answer, by token.
    in_flight: InFlight<Outstanding>,
    /// The token of the next send.
    next_token: Token,
    /// When sends are next checked for an overdue answer.
    overdue_check: Instant,
    /// How long a send may wait for its answer (none: the client decides).
    confirm_timeout: Option<Duration>,
    /// Messages to send again, each with the earliest time to do so.
    retries: Vec<(Instant, Send)>,
}

impl ProducerTask {
    /// Producer `id` of `plan` over `producer`.
    pub(super) fn new(
        producer: Box<dyn Producer>,
        id: u32,
        plan: &Plan,
        cx: RunContext,
        progress: Arc<Progress>,
    ) -> Self {
        // The scenario's timeout where brokerbench times sends out itself;
        // where the client does (Kafka), its driver was given it.
        let confirm_timeout = producer
            .confirm_timeout()
            .map(|own| plan.recovery.confirm_timeout.unwrap_or(own));
        ProducerTask {
            producer,
            id,
            cx,
            retry: plan.recovery.on_unconfirmed == Unconfirmed::Retry,
            backoff_max: plan.recovery.backoff_max,
            max_in_flight: plan.load.max_in_flight,
            progress,
            out: ProducerOutcome::default(),
            in_flight: InFlight::new(plan.load.max_in_flight),
            next_token: 0,
            overdue_check: Instant::now() + OVERDUE_CHECK,
            confirm_timeout,
            retries: Vec::new(),
        }
    }

    /// Sends until the load ends and every confirmation is in (or the
    /// deadline, or `cancel`); returns what it measured.
    pub(super) async fn run(
        mut self,
        pacer: Option<Pacer>,
        cancel: CancellationToken,
    ) -> ProducerOutcome {
        let limit = pacer
            .as_ref()
            .map(|p| p.count_within(self.cx.end - self.cx.start));
        // New messages go out until the end of the load (and a tick more for
        // a timer that woke late); what fell due and was not sent by then is
        // unsent, not sent late. Retries of sent messages go on until the deadline.
        let last_send = self.cx.end + SEND_GRACE;
        let mut k: u64 = 0;
        loop {
            // A send may finish without ever waiting (the clients queue it):
            // this gives the runtime back now and then, so that a producer
            // flooded with answers cannot starve the consumers on its worker.
            // It comes before the clock is read, so a turn given away never
            // ages the reading that is written into the message.
            tokio::task::consume_budget().await;
            // The answers already in are settled first, for the same reason,
            // at one reading of the clock (none when there are none).
            let mut settled_at = None;
            while let Some(answer) = self.producer.ready() {
                let at = *settled_at.get_or_insert_with(Instant::now);
                self.settle(answer, at);
            }
            // One reading of the clock per turn: it is read per message.
            let now = Instant::now();
            let due = match (&pacer, limit) {
                (Some(p), Some(n)) if k < n && now < last_send => Some(p.intended(k)),
                (None, _) if now < self.cx.end => Some(now),
                _ => None,
            };
            if due.is_none() && self.in_flight.is_empty() && self.retries.is_empty() {
                break;
            }
            if now >= self.cx.deadline {
                break; // what is still in flight, or never sent, stays unknown
            }
            if let Some(limit) = self.confirm_timeout.filter(|_| now >= self.overdue_check) {
                self.time_out(now, limit);
            }
            let slot = self.in_flight.len() < self.max_in_flight;
            // A retry whose time has come goes first.
            if let Some(i) = self
                .retries
                .iter()
                .position(|(at, _)| *at <= now)
                .filter(|_| slot)
            {
                let (_, send) = self.retries.swap_remove(i);
                self.out.resent += 1;
                self.send(send, now).await;
                continue;
            }
            if let Some(due) = due.filter(|d| *d <= now && slot) {
                self.send_new(due, now).await;
                k += 1;
                continue;
            }
            // Nothing to send yet: wait for the next due time, retry time or answer.
            let wake = self.wake(due, slot);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                answer = std::future::poll_fn(|cx| self.producer.poll_answer(cx)), if !self.in_flight.is_empty() => self.settle(answer, Instant::now()),
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        // Unsent: what fell due before the load ended (or the run was
        // stopped) and was not sent; not what would have fallen due later.
        if let (Some(p), Some(n)) = (&pacer, limit) {
            let cutoff = Instant::now().min(last_send);
            let due = p
                .count_within(cutoff.saturating_duration_since(self.cx.start))
                .min(n);
            self.out.unsent = due.saturating_sub(k);
        }
        self.out
    }

    /// Sends the next new message, due at `due`, at `now`.
    async fn send_new(&mut self, due: Instant, now: Instant) {
        let seq = self.out.log.attempt();
        self.progress.attempted[self.id as usize].fetch_add(1, Ordering::Relaxed);
        let key = rand::random_range(0..self.cx.load.keys);
        let send = Send {
            seq,
            key,
            due,
            attempt: 0,
        };
        self.send(send, now).await;
    }

    /// When to look again with nothing to send yet: the next due time or
    /// retry time (when a slot is free), the next overdue check, or the
    /// deadline.
    fn wake(&self, due: Option<Instant>, slot: bool) -> Instant {
        let next_retry = self.retries.iter().map(|(at, _)| *at).min();
        let overdue = (!self.in_flight.is_empty() && self.confirm_timeout.is_some())
            .then_some(self.overdue_check);
        [
            due.filter(|_| slot),
            next_retry.filter(|_| slot),
            overdue,
            Some(self.cx.deadline),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the deadline is always there")
    }

    /// Sends `send` at `sent`, the time read for this turn.
    async fn send(&mut self, send: Send, sent: Instant) {
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
        if let Some(live) = &self.progress.live {
            live.published.inc();
        }
        let send = Send {
            attempt: send.attempt + 1,
            ..send
        };
        let token = self.next_token;
        self.next_token += 1;
        let version = self.cx.event_version(envelope.intended_ns);
        let load = &self.cx.load;
        let message = event::encode(&envelope, load.message_size, load.encoding, version);
        // Out of the runtime's budget, which the turn already paid: the
        // send waits only if the client's queue is full, never to give the
        // turn away after `sent` was written into the message.
        match tokio::task::unconstrained(self.producer.send(token, message)).await {
            Ok(()) => {
                self.in_flight.insert(token, Outstanding { send, sent });
            }
            Err(failure) => self.failed(send, failure),
        }
    }

    /// Gives up on the sends unanswered for `limit`, the producer's confirm
    /// timeout: a timeout each (an answer that still comes is ignored).
    fn time_out(&mut self, now: Instant, limit: Duration) {
        self.overdue_check = now + OVERDUE_CHECK;
        let overdue: Vec<Token> = self
            .in_flight
            .iter()
            .filter(|(_, o)| now.duration_since(o.sent) >= limit)
            .map(|(token, _)| token)
            .collect();
        for token in overdue {
            if let Some(Outstanding { send, .. }) = self.in_flight.remove(token) {
                let why = format!(
                    "no confirmation within {}",
                    humantime::format_duration(limit)
                );
                self.failed(send, ErrorKind::Timeout.because(why));
            }
        }
    }

    /// Settles an answer that came in at `now`.
    fn settle(&mut self, (token, result): Answer, now: Instant) {
        // None: an answer after its send timed out, already counted.
        let Some(Outstanding { send, sent }) = self.in_flight.remove(token) else {
            return;
        };
        match result {
            Ok(()) => {
                self.out.log.settle(send.seq, PublishStatus::Confirmed);
                self.progress.confirmed.fetch_add(1, Ordering::Relaxed);
                let (since, latency) = (self.cx.since_start(now), now - send.due);
                if let Some(live) = &self.progress.live {
                    live.confirmed.inc();
                    live.publish_latency.observe(latency.as_secs_f64());
                }
                self.out.confirmed_at.record(since);
                if self.cx.ns(send.due) >= self.cx.steady_ns() {
                    self.out.publish.record(latency);
                    self.out.publish_intervals.record(since, latency);
                    self.out.publish_service.record(now - sent);
                }
                self.out.steady_confirmed += u64::from(self.cx.in_steady(now));
            }
            Err(failure) => self.failed(send, failure),
        }
    }

    /// No confirmation: send again later (retry), or give the message up (drop).
    fn failed(&mut self, send: Send, Failure { kind, why }: Failure) {
        let now = Instant::now();
        count(&mut self.out.errors, kind);
        if kind == ErrorKind::Timeout {
            self.progress
                .publish_timeouts
                .fetch_add(1, Ordering::Relaxed);
        }
        if let Some(why) = why {
            self.out.first_errors.entry(kind).or_insert(why);
        }
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
