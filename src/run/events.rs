//! What the engine tells whoever watches a run, as typed events.
//!
//! The engine never formats text: it emits an [`Event`] to an [`Observer`],
//! and the command that runs it decides how each one looks (lines and
//! tables on stdout, progress bars on a terminal, nothing in tests). This
//! is ripgrep's `Sink`: the search emits matches, printers print them.

use std::sync::Arc;
use std::time::Duration;

use super::Progress;
use crate::kind::BrokerKind;
use crate::results::find_max::Step;
use crate::results::BrokerResult;
use crate::scenario::FaultAction;

/// One thing that happened during a run.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A broker was placed: started (local, compose) or reached (external).
    Placed {
        /// Which broker.
        kind: BrokerKind,
        /// Implementation and version, as results name it.
        implementation: &'a str,
        /// Where clients reach it, password hidden.
        endpoint: &'a str,
    },
    /// A measurement starts (the run, or one `--find-max` step); `progress`
    /// is a live snapshot of its counters until [`Event::Measured`].
    Measuring {
        /// Which broker.
        kind: BrokerKind,
        /// Its counters and phase, updated as the load runs.
        progress: Arc<Progress>,
    },
    /// That measurement is over.
    Measured,
    /// A fault of the timeline was applied to the broker being measured.
    FaultApplied {
        /// What was done.
        action: FaultAction,
        /// When, as planned: from the start of the steady phase.
        at: Duration,
    },
    /// After a fault, the broker accepted clients again (kill, restart) or
    /// ran again (pause); `after` is `None` if it never came back.
    Recovered {
        /// The fault's action.
        action: FaultAction,
        /// From the fault to the broker being back.
        after: Option<Duration>,
        /// Why it did not come back, if it did not.
        error: Option<&'a str>,
    },
    /// One window of a `--find-max` search was measured and judged.
    Step {
        /// Which broker.
        kind: BrokerKind,
        /// The step's number, from 1.
        number: usize,
        /// The window's figures and verdict.
        step: &'a Step,
    },
    /// The `--find-max` search stopped before it was done.
    SearchStopped {
        /// Which broker.
        kind: BrokerKind,
        /// Why.
        why: &'a str,
    },
    /// A broker's measurement is done and its result is in the results.
    BrokerDone {
        /// The result, as written.
        result: &'a BrokerResult,
    },
    /// A broker did not finish within its time bound; its results are lost.
    Hung {
        /// Which broker.
        kind: BrokerKind,
        /// What bound it overran.
        reason: &'a str,
    },
    /// Deleting the run's queues, streams or topics failed; the results
    /// stand.
    TeardownFailed {
        /// What went wrong.
        error: &'a anyhow::Error,
    },
    /// Something failed that does not stop the run.
    Warning {
        /// Which broker.
        kind: BrokerKind,
        /// What was being done.
        doing: &'static str,
        /// What went wrong.
        error: &'a anyhow::Error,
    },
}

/// Whoever watches a run. Events come from the session and from the fault
/// timeline, which runs beside the load, so an observer is shared.
pub(crate) trait Observer: Send + Sync {
    /// Something happened.
    fn event(&self, event: Event<'_>);
}

/// An observer that shows nothing.
#[cfg(test)]
pub(crate) struct Quiet;

#[cfg(test)]
impl Observer for Quiet {
    fn event(&self, _event: Event<'_>) {}
}
