//! The harness measures itself: a load generator that saturates first
//! measures itself, not the broker.
//!
//! Two [`Reading`]s, at the start and the end of the steady window, give
//! brokerbench's own CPU time (user and system, `getrusage(RUSAGE_SELF)`: the
//! whole process, client library threads included, a local broker not), how
//! busy each async runtime worker was (tokio's stable runtime metrics) and,
//! on Linux, how busy the whole machine was (`/proc/stat`). [`HarnessUse`]
//! turns them into figures per message and says when brokerbench may have
//! been the limit.

use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeValLike;
use serde::{Deserialize, Serialize};

/// A runtime worker busier than this share of the window may have held the
/// load back (its tasks queued behind each other).
pub(crate) const WORKER_LIMIT: f64 = 0.9;

/// brokerbench using more than this share of the machine's cores may have
/// been the limit.
pub(crate) const CORES_LIMIT: f64 = 0.9;

/// A machine busier than this share of all its cores was saturated, by
/// brokerbench, the broker or anything else on it.
pub(crate) const MACHINE_LIMIT: f64 = 0.95;

/// The process's and the machine's use of the CPU at one instant.
#[derive(Clone, Debug)]
pub(crate) struct Reading {
    at: Instant,
    user: Duration,
    system: Duration,
    /// Per async runtime worker, its total busy time (empty outside a runtime).
    busy: Vec<Duration>,
    /// The machine's busy and total CPU time, in clock ticks, when the OS tells.
    machine: Option<(u64, u64)>,
    /// Peak resident set size so far, KiB.
    max_rss_kib: u64,
}

impl Reading {
    /// Reads now.
    pub(crate) fn now() -> Self {
        let (user, system, max_rss_kib) = match getrusage(UsageWho::RUSAGE_SELF) {
            Ok(u) => (
                Duration::from_micros(u.user_time().num_microseconds().max(0) as u64),
                Duration::from_micros(u.system_time().num_microseconds().max(0) as u64),
                u.max_rss().max(0) as u64,
            ),
            Err(_) => (Duration::ZERO, Duration::ZERO, 0),
        };
        let busy = match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let metrics = handle.metrics();
                (0..metrics.num_workers())
                    .map(|w| metrics.worker_total_busy_duration(w))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        Reading {
            at: Instant::now(),
            user,
            system,
            busy,
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|stat| machine_ticks(&stat)),
            max_rss_kib,
        }
    }
}

/// The machine's (busy, total) CPU ticks from the first line of `/proc/stat`:
/// `cpu user nice system idle iowait irq softirq steal ...`; idle and iowait
/// are not busy.
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // guest and guest_nice (9th and 10th) are already counted in user and nice.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// brokerbench's own use of the machine over the steady window, and whether
/// it may have been the limit. In every `results.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct HarnessUse {
    /// Length of the window (the steady phase), seconds.
    pub wall_s: f64,
    /// brokerbench's user CPU time in the window, seconds (every thread of
    /// the process: the runtime, the client libraries' own threads).
    pub cpu_user_s: f64,
    /// Its system CPU time in the window, seconds.
    pub cpu_system_s: f64,
    /// Messages it handled in the window: confirmations plus deliveries to
    /// every group (the denominator of `cpu_per_message_us`).
    pub messages: u64,
    /// User plus system CPU per message handled, microseconds; absent when
    /// no message was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_per_message_us: Option<f64>,
    /// CPU time over wall time: how many cores' worth brokerbench used.
    pub cores_used: f64,
    /// The cores the machine offers this process.
    pub cores: usize,
    /// Per async runtime worker, the share of the window it was busy (0 to 1).
    pub worker_busy: Vec<f64>,
    /// The share of all the machine's CPU that was busy in the window, every
    /// process included (Linux only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_busy: Option<f64>,
    /// brokerbench's peak resident memory by the end of the window, MiB.
    pub max_rss_mib: f64,
    /// brokerbench itself was near saturation: a runtime worker busy more
    /// than 90% of the window, or more than 90% of the cores used.
    pub limited: bool,
    /// What the figures say, when brokerbench may have been the limit or the
    /// machine was saturated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl HarnessUse {
    /// The use between `start` and `end`, with `messages` handled in between.
    pub(crate) fn between(start: &Reading, end: &Reading, messages: u64) -> Self {
        let wall = end.at.saturating_duration_since(start.at);
        let wall_s = wall.as_secs_f64();
        let user = end.user.saturating_sub(start.user).as_secs_f64();
        let system = end.system.saturating_sub(start.system).as_secs_f64();
        let share = |d: f64| if wall_s > 0.0 { d / wall_s } else { 0.0 };
        let worker_busy: Vec<f64> = if start.busy.len() == end.busy.len() {
            start
                .busy
                .iter()
                .zip(&end.busy)
                .map(|(a, b)| round3(share(b.saturating_sub(*a).as_secs_f64()).min(1.0)))
                .collect()
        } else {
            Vec::new()
        };
        let machine_busy = match (start.machine, end.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some(round3(b1.saturating_sub(b0) as f64 / (t1 - t0) as f64))
            }
            _ => None,
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores_used = share(user + system);
        let mut use_ = HarnessUse {
            wall_s: round3(wall_s),
            cpu_user_s: round3(user),
            cpu_system_s: round3(system),
            messages,
            cpu_per_message_us: (messages > 0)
                .then(|| round3((user + system) * 1e6 / messages as f64)),
            cores_used: round3(cores_used),
            cores,
            worker_busy,
            machine_busy,
            max_rss_mib: round3(end.max_rss_kib as f64 / 1024.0),
            limited: false,
            warning: None,
        };
        use_.limited = use_.worker_saturated() || use_.cores_saturated();
        use_.warning = use_.warning_text();
        use_
    }

    /// The busiest runtime worker's share of the window.
    pub(crate) fn busiest_worker(&self) -> f64 {
        self.worker_busy.iter().copied().fold(0.0, f64::max)
    }

    /// A runtime worker was busy more than [`WORKER_LIMIT`] of the window.
    fn worker_saturated(&self) -> bool {
        self.busiest_worker() > WORKER_LIMIT
    }

    /// brokerbench used more than [`CORES_LIMIT`] of the machine's cores.
    fn cores_saturated(&self) -> bool {
        self.cores_used > CORES_LIMIT * self.cores as f64
    }

    fn warning_text(&self) -> Option<String> {
        let machine = self.machine_busy.filter(|m| *m > MACHINE_LIMIT);
        if !self.limited && machine.is_none() {
            return None;
        }
        let mut said = Vec::new();
        if self.worker_saturated() {
            said.push(format!(
                "its busiest runtime worker was busy {:.0}% of the steady window",
                self.busiest_worker() * 100.0
            ));
        }
        if self.cores_saturated() {
            said.push(format!(
                "it used {:.2} of the machine's {} cores",
                self.cores_used, self.cores
            ));
        }
        let mut text = if said.is_empty() {
            String::new()
        } else {
            format!("the harness may have been the limit: {}", said.join(", "))
        };
        if let Some(m) = machine {
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(&format!(
                "the machine's CPU was {:.0}% busy (brokerbench used {:.2} cores of {}): \
                 brokerbench and whatever else runs there, a local broker included, competed for it",
                m * 100.0,
                self.cores_used,
                self.cores
            ));
        }
        Some(text)
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, cpu_ms: u64, busy_ms: &[u64], machine: Option<(u64, u64)>) -> Reading {
        Reading {
            at,
            user: Duration::from_millis(cpu_ms),
            system: Duration::ZERO,
            busy: busy_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            machine,
            max_rss_kib: 2048,
        }
    }

    #[test]
    fn proc_stat_busy_excludes_idle_and_iowait() {
        let stat = "cpu  100 5 50 800 40 3 2 0 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        // total: 100+5+50+800+40+3+2+0 = 1000; idle 800 + iowait 40.
        assert_eq!(machine_ticks(stat), Some((160, 1000)));
        assert_eq!(machine_ticks("intr 1 2 3"), None);
    }

    #[test]
    fn a_busy_worker_or_too_many_cores_flags_the_harness() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        let calm = HarnessUse::between(
            &reading(t0, 0, &[0, 0], Some((0, 0))),
            &reading(t1, 2_000, &[3_000, 1_000], Some((500, 1_000))),
            10_000,
        );
        assert!(!calm.limited && calm.warning.is_none(), "{calm:?}");
        assert_eq!(calm.cpu_per_message_us, Some(200.0));
        assert_eq!(calm.cores_used, 0.2);
        assert_eq!(calm.worker_busy, vec![0.3, 0.1]);
        assert_eq!(calm.machine_busy, Some(0.5));
        assert_eq!(calm.max_rss_mib, 2.0);

        let hot = HarnessUse::between(
            &reading(t0, 0, &[0, 0], None),
            &reading(t1, 9_000, &[9_700, 1_000], None),
            0,
        );
        assert!(hot.limited);
        assert_eq!(hot.cpu_per_message_us, None);
        let warning = hot.warning.expect("a warning");
        assert!(
            warning.starts_with("the harness may have been the limit")
                && warning.contains("busy 97%"),
            "{warning}"
        );

        let crowded = HarnessUse::between(
            &reading(t0, 0, &[0], Some((0, 0))),
            &reading(t1, 1_000, &[1_000], Some((990, 1_000))),
            1,
        );
        assert!(!crowded.limited);
        let warning = crowded.warning.expect("a warning");
        assert!(warning.contains("machine's CPU was 99% busy"), "{warning}");
    }
}
