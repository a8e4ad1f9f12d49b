//! The fault timeline: faults are data, applied to the broker on schedule.
//!
//! Each fault is recorded with when it really started, when the broker was
//! ready again (or the error if it never was), and where each producer's
//! sequence numbers stood at that moment, so the messages sent during and
//! after it can be accounted for separately.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::events::{Event, Observer};
use super::Progress;
use crate::driver::{Driver, Leadership};
use crate::env::FaultTarget;
use crate::scenario::{Fault, FaultAction, NodeChoice};

/// What happened when one fault was applied.
#[derive(Clone, Debug)]
pub(crate) struct FaultEvent {
    /// The fault as planned.
    pub fault: Fault,
    /// When it was applied.
    pub started: Instant,
    /// When the broker was ready again (kill, restart) or resumed (pause);
    /// `None` if it never came back. On a cluster: the node hit (the last
    /// one, in a rolling restart).
    pub ready: Option<Instant>,
    /// Why the broker did not come back, if it did not.
    pub error: Option<String>,
    /// Per producer, the number of messages attempted when the fault started.
    pub window_start: Vec<u64>,
    /// On a cluster, who led what the run uses just before the fault, as
    /// the broker reported it (`None` if it did not answer).
    pub leadership_before: Option<Leadership>,
    /// On a cluster, the node it hit (a rolling restart: each in turn).
    pub nodes: Vec<NodeEvent>,
}

impl FaultEvent {
    /// When the broker served clients again: on a cluster, once a leader
    /// other than the node hit was reported; else when it was back.
    pub fn serving(&self) -> Option<Instant> {
        match self.nodes.first() {
            Some(node) => node
                .led_by_another
                .as_ref()
                .map(|(_, at)| *at)
                .or(self.ready),
            None => self.ready,
        }
    }
}

/// What happened to one node of a cluster in a fault.
#[derive(Clone, Debug)]
pub(crate) struct NodeEvent {
    /// Which node, counting from 1.
    pub number: usize,
    /// Its name, as the broker reports leaders.
    pub name: String,
    /// Whether it led what the run uses when it was hit.
    pub was_leader: bool,
    /// When it was hit.
    pub hit: Instant,
    /// When it accepted clients again; `None` if it never did.
    pub ready: Option<Instant>,
    /// The first leadership the broker reported after the node was hit in
    /// which another node led (Kafka: every partition), and when.
    pub led_by_another: Option<(Leadership, Instant)>,
    /// When the broker reported its copy caught up again; `None` if it
    /// never did before the end of the run.
    pub rejoined: Option<Instant>,
}

/// How often the broker is asked who leads, during a fault on a cluster.
const LEADER_POLL: Duration = Duration::from_millis(100);
/// How long one such question may take.
const LEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Applies `faults` to `target` at `steady_start + fault.at`, one after the
/// other, until done, cancelled or `deadline` (the end of the drain): a broker
/// still down then is recorded as never back, and is not started again.
pub(crate) async fn inject(
    faults: &[Fault],
    (target, driver): (&mut dyn FaultTarget, &dyn Driver),
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
        let names = target.node_names();
        let (outcome, leadership_before, nodes) = if names.is_empty() {
            (apply(fault, target, deadline).await, None, Vec::new())
        } else {
            let before = leadership(driver).await.map(|mut now| {
                now.controller = now.controller.or_else(|| target.active_controller());
                now
            });
            let mut nodes = Vec::new();
            let outcome = match fault.action {
                FaultAction::RollingRestart => {
                    rolling(fault, target, driver, &names, deadline, &mut nodes).await
                }
                _ => {
                    let index = choose(fault.node, before.as_ref(), &names);
                    let hit = on_node(fault, target, driver, &names, index, deadline).await;
                    nodes.push(hit.0);
                    hit.1
                }
            };
            (outcome, before, nodes)
        };
        // On a cluster: when the (last) node hit accepted clients again.
        let ready = match nodes.last() {
            Some(node) => node.ready,
            None => outcome.is_ok().then(Instant::now),
        };
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
            leadership_before,
            nodes,
        });
    }
    events
}

/// What the broker reports about leadership now; `None` if it cannot say
/// or does not answer in time.
async fn leadership(driver: &dyn Driver) -> Option<Leadership> {
    tokio::time::timeout(LEADER_TIMEOUT, driver.leadership())
        .await
        .ok()?
        .ok()
        .flatten()
}

/// The node (from 0) that `choice` names, given who leads: the leader or
/// a follower as reported (the first node when the broker did not say),
/// any node at random, or a number.
fn choose(choice: Option<NodeChoice>, now: Option<&Leadership>, names: &[String]) -> usize {
    let leader = now
        .and_then(|l| l.leader.as_deref())
        .and_then(|leader| names.iter().position(|n| n == leader));
    match choice.unwrap_or(NodeChoice::Leader) {
        NodeChoice::Leader => leader.unwrap_or(0),
        NodeChoice::Follower => match leader {
            Some(l) => (l + 1) % names.len(),
            None => 1 % names.len(),
        },
        NodeChoice::Any => rand::random_range(0..names.len()),
        NodeChoice::Number(n) => usize::from(n - 1).min(names.len() - 1),
    }
}

/// Applies `fault` to node `index` alone, watching the broker elect a
/// leader other than it meanwhile, then waits for it to rejoin.
async fn on_node(
    fault: &Fault,
    target: &mut dyn FaultTarget,
    driver: &dyn Driver,
    names: &[String],
    index: usize,
    deadline: Instant,
) -> (NodeEvent, anyhow::Result<()>) {
    let name = names[index].clone();
    let before = leadership(driver).await;
    let hit = Instant::now();
    let mut event = NodeEvent {
        number: index + 1,
        was_leader: before.and_then(|l| l.leader).as_deref() == Some(name.as_str()),
        name,
        hit,
        ready: None,
        led_by_another: None,
        rejoined: None,
    };
    let Some(node) = target.node(index) else {
        return (
            event,
            Err(anyhow::anyhow!("node {} is not there", index + 1)),
        );
    };
    let watch = tokio::time::timeout_at(deadline.into(), led_by_another(driver, &event.name));
    let (outcome, elected) = tokio::join!(apply(fault, node, deadline), watch);
    event.led_by_another = elected.ok();
    if outcome.is_ok() {
        event.ready = Some(Instant::now());
        event.rejoined = rejoined(driver, &event.name, deadline).await;
    }
    (event, outcome)
}

/// Restarts every node in turn, each once the one before has rejoined.
async fn rolling(
    fault: &Fault,
    target: &mut dyn FaultTarget,
    driver: &dyn Driver,
    names: &[String],
    deadline: Instant,
    nodes: &mut Vec<NodeEvent>,
) -> anyhow::Result<()> {
    for index in 0..names.len() {
        let (event, outcome) = on_node(fault, target, driver, names, index, deadline).await;
        let rejoined = event.rejoined.is_some();
        nodes.push(event);
        outcome?;
        if !rejoined {
            anyhow::bail!(
                "node {} did not rejoin before the end of the run",
                index + 1
            );
        }
    }
    Ok(())
}

/// Waits until the broker reports a leader other than `name`, and (Kafka)
/// no partition led by it; returns who leads then, and when.
async fn led_by_another(driver: &dyn Driver, name: &str) -> (Leadership, Instant) {
    loop {
        if let Some(now) = leadership(driver).await {
            let moved = now.leader.as_deref().is_some_and(|leader| leader != name)
                && !now.partitions.values().any(|leader| leader == name);
            if moved {
                return (now, Instant::now());
            }
        }
        tokio::time::sleep(LEADER_POLL).await;
    }
}

/// When the broker reports `name`'s copy caught up again, if before `deadline`.
async fn rejoined(driver: &dyn Driver, name: &str, deadline: Instant) -> Option<Instant> {
    let caught_up = async {
        loop {
            if leadership(driver)
                .await
                .is_some_and(|l| l.in_sync.iter().any(|n| n == name))
            {
                return Instant::now();
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
    };
    tokio::time::timeout_at(deadline.into(), caught_up)
        .await
        .ok()
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
        FaultAction::Restart | FaultAction::RollingRestart => target.restart().await,
        FaultAction::Pause => {
            target.pause().await?;
            tokio::time::sleep_until(until.into()).await;
            target.resume().await
        }
    }
}
