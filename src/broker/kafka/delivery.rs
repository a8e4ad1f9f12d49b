//! librdkafka's delivery reports, each routed to whoever sent the message,
//! without a future, a channel or an allocation per message.
//!
//! rdkafka's `FutureProducer` gives every message a boxed oneshot sender,
//! and every delivery future a task of its own in the caller's
//! `FuturesUnordered`; at 100-byte messages and half a million a second,
//! that was where most of brokerbench's own CPU per Kafka message went
//! (docs/performance.md). Here a message's opaque is a number: the index
//! of its sink and its send's token. The producer client's polling thread
//! appends each report to its sink, and the producer task takes all that
//! came in at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;

use crate::driver::{Answer, ErrorKind, Failure, Token};

/// The run's one producer client (one connection, one polling thread),
/// shared by every producer task and dead-letter writer.
pub(super) type Client = ThreadedProducer<Reports>;

/// The low bits of an opaque carry the token, the bits above it the sink.
const TOKEN_BITS: u32 = 48;
const TOKEN_MASK: usize = (1 << TOKEN_BITS) - 1;
const _: () = assert!(
    usize::BITS == 64,
    "an opaque packs a sink and a 48-bit token"
);

/// Where each delivery report goes: the client's context.
#[derive(Default)]
pub(super) struct Reports {
    /// By index; `None` once its owner is gone.
    sinks: RwLock<Vec<Option<Sink>>>,
    /// The client's last error event.
    pub(super) last_error: LastError,
}

/// librdkafka's last error event. Its API answers a refused SASL login or
/// an untrusted certificate with "broker transport failure" alone, after
/// the whole timeout; the reason comes as an event, kept here to be told
/// with the failure, and to give up at once on one no retry mends.
#[derive(Default)]
pub(super) struct LastError(Mutex<Option<(bool, String)>>);

impl LastError {
    /// Keeps `reason`, unless it only says every broker is down, which
    /// follows the event that says why.
    fn record(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code != Some(RDKafkaErrorCode::AllBrokersDown) {
            let refused = code == Some(RDKafkaErrorCode::Authentication)
                || reason.contains("SSL handshake failed");
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((refused, reason.to_string()));
        }
    }

    /// Whether the last event was a refused login or certificate.
    fn refused(&self) -> bool {
        let last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref().is_some_and(|(refused, _)| *refused)
    }

    /// `error`, with the last error event's reason when there was one.
    pub(super) fn explain(&self, error: KafkaError) -> anyhow::Error {
        match self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some((_, reason)) => anyhow::anyhow!(error).context(reason),
            None => anyhow::anyhow!(error),
        }
    }
}

/// The cluster's metadata from `client` within `timeout` (blocking), asked
/// for a second at a time so that a refused login or certificate ends the
/// wait at once, with its reason.
pub(super) fn metadata<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    last_error: &LastError,
    timeout: std::time::Duration,
) -> anyhow::Result<rdkafka::metadata::Metadata> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match client.fetch_metadata(None, left.min(std::time::Duration::from_secs(1))) {
            Ok(metadata) => return Ok(metadata),
            Err(e) if last_error.refused() || left <= std::time::Duration::from_secs(1) => {
                return Err(last_error.explain(e))
            }
            // An answer faster than the second asked for (no broker up
            // yet): a pause, not a busy loop.
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

impl ClientContext for LastError {
    fn error(&self, error: KafkaError, reason: &str) {
        self.record(error, reason);
    }
}

/// For a producer client that sends nothing (the readiness probe).
impl ProducerContext for LastError {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

#[derive(Clone)]
enum Sink {
    /// A producer task's answers, taken in batches.
    Answers(Arc<Answers>),
    /// Senders each waiting for one message (the dead-letter writers).
    Waiters(Arc<Waiters>),
}

impl Reports {
    /// Registers `sink` with `client`'s reports: its index, and the client
    /// to unregister it from when its owner is dropped.
    fn join(client: &Client, sink: Sink) -> (Client, usize) {
        (client.clone(), client.context().register(sink))
    }

    fn register(&self, sink: Sink) -> usize {
        let mut sinks = self.sinks.write().unwrap_or_else(PoisonError::into_inner);
        match sinks.iter().position(Option::is_none) {
            Some(free) => {
                sinks[free] = Some(sink);
                free
            }
            None => {
                sinks.push(Some(sink));
                sinks.len() - 1
            }
        }
    }

    fn unregister(&self, index: usize) {
        let mut sinks = self.sinks.write().unwrap_or_else(PoisonError::into_inner);
        sinks[index] = None;
    }
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        self.last_error.record(error, reason);
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let token = (opaque & TOKEN_MASK) as Token;
        let answer = match result {
            Ok(_) => Ok(()),
            Err((e, _)) => Err(failure(e)),
        };
        let sinks = self.sinks.read().unwrap_or_else(PoisonError::into_inner);
        match sinks.get(opaque >> TOKEN_BITS) {
            Some(Some(Sink::Answers(answers))) => answers.push((token, answer)),
            Some(Some(Sink::Waiters(waiters))) => waiters.answer(token, answer),
            // Its sender is gone: nobody to tell.
            Some(None) | None => {}
        }
    }
}

/// What a failed delivery means to the run.
fn failure(e: &KafkaError) -> Failure {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => ErrorKind::Timeout.because(e),
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => {
            ErrorKind::Connection.because("the producer was closed")
        }
        _ => ErrorKind::Refused.because(e),
    }
}

/// Answers in, not yet taken.
#[derive(Default)]
struct Answers {
    ready: Mutex<Vec<Answer>>,
    waker: AtomicWaker,
}

impl Answers {
    fn push(&self, answer: Answer) {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(answer);
        // Wakes the producer task once; until it polls again, a no-op.
        self.waker.wake();
    }
}

/// A producer task's sink: the opaque of each of its sends, and their answers.
pub(super) struct Inbox {
    client: Client,
    index: usize,
    answers: Arc<Answers>,
    /// Taken from `answers` in one go, handed out one by one (in any order:
    /// each answer carries its token).
    taken: Vec<Answer>,
}

impl Inbox {
    pub(super) fn new(client: &Client) -> Self {
        let answers = Arc::new(Answers::default());
        let (client, index) = Reports::join(client, Sink::Answers(Arc::clone(&answers)));
        Inbox {
            client,
            index,
            answers,
            taken: Vec::new(),
        }
    }

    /// The opaque that brings `token`'s delivery report back here.
    pub(super) fn opaque(&self, token: Token) -> usize {
        opaque(self.index, token)
    }

    /// The next answer in; pending while there is none.
    pub(super) fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer> {
        if let Some(answer) = self.taken.pop() {
            return Poll::Ready(answer);
        }
        // Registered before looking, so that a report pushed after the look
        // wakes this task.
        self.answers.waker.register(cx.waker());
        {
            let mut ready = self
                .answers
                .ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Both keep their capacity: no allocation in the steady state.
            std::mem::swap(&mut *ready, &mut self.taken);
        }
        match self.taken.pop() {
            Some(answer) => Poll::Ready(answer),
            None => Poll::Pending,
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.client.context().unregister(self.index);
    }
}

fn opaque(sink: usize, token: Token) -> usize {
    debug_assert!(token as usize <= TOKEN_MASK, "token {token} over 48 bits");
    sink << TOKEN_BITS | (token as usize & TOKEN_MASK)
}

/// Senders each waiting for the report on one message.
#[derive(Default)]
struct Waiters {
    next: AtomicU64,
    waiting: Mutex<HashMap<Token, oneshot::Sender<Result<(), Failure>>>>,
}

impl Waiters {
    fn answer(&self, token: Token, answer: Result<(), Failure>) {
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token);
        if let Some(waiter) = waiter {
            let _ = waiter.send(answer);
        }
    }
}

/// A sink for senders that await each message's report (the dead-letter
/// writers, a few messages a second at most).
pub(super) struct Awaiting {
    client: Client,
    index: usize,
    waiters: Arc<Waiters>,
}

/// A send awaiting its report.
pub(super) struct Expected {
    /// The opaque to send the message with.
    pub(super) opaque: usize,
    token: Token,
    report: oneshot::Receiver<Result<(), Failure>>,
}

impl Awaiting {
    pub(super) fn new(client: &Client) -> Self {
        let waiters = Arc::new(Waiters::default());
        let (client, index) = Reports::join(client, Sink::Waiters(Arc::clone(&waiters)));
        Awaiting {
            client,
            index,
            waiters,
        }
    }

    /// A new send to await.
    pub(super) fn expect(&self) -> Expected {
        let token = self.waiters.next.fetch_add(1, Ordering::Relaxed);
        let (tell, report) = oneshot::channel();
        self.waiters
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, tell);
        Expected {
            opaque: opaque(self.index, token),
            token,
            report,
        }
    }

    /// The report on `expected`'s message; librdkafka reports every message,
    /// if only as timed out after `message.timeout.ms`.
    pub(super) async fn report(&self, expected: Expected) -> Result<(), Failure> {
        match expected.report.await {
            Ok(answer) => answer,
            Err(_) => Err(ErrorKind::Connection.because("the producer was closed")),
        }
    }

    /// Forgets `expected`, whose message was never sent.
    pub(super) fn forget(&self, expected: Expected) {
        self.waiters
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&expected.token);
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.client.context().unregister(self.index);
    }
}
