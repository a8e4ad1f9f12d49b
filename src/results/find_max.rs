//! `run --find-max` as results keep it: every step of the search and the
//! rate found. `run::find_max` searches.

use serde::{Deserialize, Serialize};

/// The most steps a search takes, the closed-loop window included (and
/// then the repeat of the last step, if it did not hold).
pub(crate) const MAX_STEPS: usize = 16;
/// What a step was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// As fast as confirmations allow: the ceiling.
    ClosedLoop,
    /// The closed-loop rate, then halves of it, until one holds.
    Coarse,
    /// Between the highest rate that held and the lowest that did not.
    Bisect,
    /// A rate that did not hold, measured once more.
    Repeat,
}

/// One measured window of the search.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Step {
    pub phase: Phase,
    /// The offered rate, msg/s; 0 for the closed-loop window.
    pub target_per_s: f64,
    /// Messages sent per second in the window.
    pub achieved_per_s: f64,
    /// Confirmations per second in the window.
    pub confirmed_per_s: f64,
    /// Corrected publish latency, p99, µs.
    pub publish_p99_us: Option<u64>,
    /// Corrected end-to-end latency, p99 of the slowest group, µs.
    pub end_to_end_p99_us: Option<u64>,
    /// Confirmed messages lost.
    pub lost: u64,
    /// Whether the rate held (always false for the closed-loop window, which
    /// has no target to hold).
    pub held: bool,
    /// Whether brokerbench itself may have been the limit in the window
    /// (its `harness` block): then a rate that did not hold says as much
    /// about brokerbench as about the broker.
    pub harness_limited: bool,
    /// Why it did not hold, one reason each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub why_not: Vec<String>,
}

/// A broker's search, in its results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct FindMaxResult {
    /// The SLO every held rate met, as written.
    pub slo: Vec<String>,
    /// The closed-loop window's confirmed rate, msg/s.
    pub closed_loop_per_s: f64,
    /// The highest rate that held, msg/s; none if none did.
    pub found_per_s: Option<f64>,
    /// Every window, in the order run.
    pub steps: Vec<Step>,
    /// Why the search stopped before it was done (a window that could not
    /// be measured); then the result is incomplete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Whether the step limit ended the search before the highest rate that
    /// held and the lowest that did not were within 3% of each other: the
    /// rate found is then a lower bound, further from the broker's rate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub step_limit_reached: bool,
}
