//! The fault timeline: faults are data, applied to the broker on schedule.
//!
//! Each fault is recorded with when it really started, when the broker was
//! ready again (or the error if it never was), and where each producer's
//! sequence numbers stood at that moment, so the messages sent during and
//! after it can be accounted for separately.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::events::{Event, Observer};
use super::Progress;
use crate::env::FaultTarget;
use crate::scenario::{Fault, FaultAction};

/// What happened when one fault was applied.
#[derive(Clone, Debug)]
pub(crate) struct FaultEvent {
    /// The fault as planned.
    pub fault: Fault,
    /// When it was applied.
    pub started: Instant,
    /// When the broker was ready again (kill, restart) or resumed (pause);
    /// `None` if it never came back.
    pub ready: Option<Instant>,
    /// Why the broker did not come back, if it did not.
    pub error: Option<String>,
    /// Per producer, the number of messages attempted when the fault started.
    pub window_start: Vec<u64>,
}

/// Applies `faults` to `target` at `steady_start + fault.at`, one after the
/// other, until done, cancelled or `deadline` (the end of the drain): a broker
/// still down then is recorded as never back, and is not started again.
pub(crate) async fn inject(
    faults: &[Fault],
    target: &mut dyn FaultTarget,
    steady_start: Instant,
    deadline: Instant,
    cancel: &CancellationToken,
    progress: &Progress,
    observer: &dyn Observer,
) -> Vec<FaultEvent> {
    let mut events = Vec::new();
    for fault in faults {
        tokio::select! {
            _ = tokio::time::sleep_until((steady_start + fault.at).into()) => {}
            _ = cancel.cancelled() => break,
        }
        let started = Instant::now();
        let window_start = progress
            .attempted
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        observer.event(Event::FaultApplied {
            action: fault.action,
            at: fault.at,
        });
        let outcome = apply(fault, target, deadline).await;
        let ready = outcome.is_ok().then(Instant::now);
        let error = outcome.err().map(|e| format!("{e:#}"));
        observer.event(Event::Recovered {
            action: fault.action,
            after: ready.map(|r| r.saturating_duration_since(started)),
            error: error.as_deref(),
        });
        events.push(FaultEvent {
            fault: fault.clone(),
            started,
            ready,
            error,
            window_start,
        });
    }
    events
}

async fn apply(
    fault: &Fault,
    target: &mut dyn FaultTarget,
    deadline: Instant,
) -> anyhow::Result<()> {
    let until = (Instant::now() + fault.duration).min(deadline);
    match fault.action {
        FaultAction::Kill => {
            target.kill().await?;
            tokio::time::sleep_until(until.into()).await;
            if until == deadline {
                anyhow::bail!(
                    "still down at the end of the run (planned down time {:?})",
                    fault.duration
                );
            }
            target.start().await
        }
        FaultAction::Restart => target.restart().await,
        FaultAction::Pause => {
            target.pause().await?;
            tokio::time::sleep_until(until.into()).await;
            target.resume().await
        }
    }
}
