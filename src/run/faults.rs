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
use crate::driver::{Driver, Leadership, NO_LEADER};
use crate::env::proxy::{FaultProxy, Link, ProxyCounts};
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
    /// Publishes timed out so far when it started.
    pub timeouts_at_start: u64,
    /// A network fault: what the fault proxy did.
    pub network: Option<NetworkEvent>,
}

/// What the fault proxy did in a network fault.
#[derive(Clone, Debug)]
pub(crate) struct NetworkEvent {
    /// Its counts when the fault started.
    pub before: ProxyCounts,
    /// Its counts once the clients had reconnected (or the watch ended).
    pub after: ProxyCounts,
    /// When as many client connections were open through it as before the
    /// fault (after a cut: once the clients had reconnected); `None` if
    /// that did not happen before the next fault or the end of the run.
    pub reconnected: Option<Instant>,
}

impl FaultEvent {
    /// When the broker served clients again: on a cluster, once a leader
    /// other than the (last) node hit was reported; else when it was back.
    pub fn serving(&self) -> Option<Instant> {
        match self.nodes.last() {
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
/// How long the question before a fault may take: the fault waits for it,
/// since it decides where the fault is aimed (Kafka's metadata took more
/// than 2 s at 8000 msg/s on a loaded machine).
const BEFORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker is watched for another leader once the node hit is
/// back (a pause shorter than the broker's failure detection moves none).
const LEADER_GRACE: Duration = Duration::from_secs(10);

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
    for (i, fault) in faults.iter().enumerate() {
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
        let timeouts_at_start = progress.publish_timeouts.load(Ordering::Relaxed);
        observer.event(Event::FaultApplied {
            action: fault.action,
            at: fault.at,
        });
        let names = target.node_names();
        let mut network = None;
        let (outcome, leadership_before, nodes) = if fault.action.is_network() {
            let next = faults.get(i + 1).map(|next| steady_start + next.at);
            let watch_until = next.unwrap_or(deadline).min(deadline);
            let (outcome, event) =
                through_proxy(fault, target.proxy(), deadline, watch_until).await;
            network = event;
            (outcome, None, Vec::new())
        } else if names.is_empty() {
            (apply(fault, target, deadline).await, None, Vec::new())
        } else {
            on_cluster(fault, (target, driver), &names, deadline).await
        };
        // On a cluster: when the (last) node hit accepted clients again; a
        // fault that hit no node (it could not be aimed) took nothing down.
        let ready = match nodes.last() {
            Some(node) => node.ready,
            None if !names.is_empty() && !fault.action.is_network() => Some(Instant::now()),
            None => outcome.is_ok().then(Instant::now),
        };
        // A network fault: when the link was open again.
        let ready = network.as_ref().map_or(ready, |n| Some(n.healed));
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
            timeouts_at_start,
            network: network.map(|n| n.event),
        });
    }
    events
}

/// A fault on a cluster: who leads just before, then the node it is aimed
/// at hit alone (or each in turn, for a rolling restart).
async fn on_cluster(
    fault: &Fault,
    (target, driver): (&mut dyn FaultTarget, &dyn Driver),
    names: &[String],
    deadline: Instant,
) -> (anyhow::Result<()>, Option<Leadership>, Vec<NodeEvent>) {
    let before = leadership_within(driver, BEFORE_TIMEOUT)
        .await
        .map(|mut now| {
            now.controller = now.controller.or_else(|| target.active_controller());
            now
        });
    let mut nodes = Vec::new();
    let outcome = match fault.action {
        FaultAction::RollingRestart => {
            rolling(fault, target, driver, names, deadline, &mut nodes).await
        }
        _ => match unknown_leader(before.as_ref(), names) {
            Some(error) => Err(error),
            None => {
                let index = choose(fault.node, before.as_ref(), names);
                let aimed = (index, before.as_ref());
                let hit = on_node(fault, (target, driver), names, aimed, deadline).await;
                nodes.push(hit.0);
                hit.1
            }
        },
    };
    (outcome, before, nodes)
}

/// A network fault as the proxy applied it, and when the link was open again.
struct Proxied {
    event: NetworkEvent,
    healed: Instant,
}

/// How often the proxy's open connections are counted after a fault.
const RECONNECT_POLL: Duration = Duration::from_millis(10);

/// Sets the proxy's link as `fault` says for its duration (a cut resets
/// every connection first), opens it again, then waits until as many
/// connections are open as before, until `watch_until` at most.
async fn through_proxy(
    fault: &Fault,
    proxy: Option<&FaultProxy>,
    deadline: Instant,
    watch_until: Instant,
) -> (anyhow::Result<()>, Option<Proxied>) {
    let Some(proxy) = proxy else {
        let missing =
            anyhow::anyhow!("a network fault needs the fault proxy, which is not running");
        return (Err(missing), None);
    };
    let before = proxy.counts();
    let until = (Instant::now() + fault.duration).min(deadline);
    proxy.set(match (fault.action, fault.delay) {
        (FaultAction::Delay, Some(d)) => Link::Delayed {
            latency: d.latency,
            jitter: d.jitter,
        },
        (FaultAction::Blackhole, _) => Link::Blackhole,
        _ => Link::Down,
    });
    if fault.action == FaultAction::Cut {
        proxy.cut();
    }
    tokio::time::sleep_until(until.into()).await;
    proxy.set(Link::Open);
    let healed = Instant::now();
    let reconnected = async {
        while proxy.counts().open < before.open {
            tokio::time::sleep(RECONNECT_POLL).await;
        }
        Instant::now()
    };
    let reconnected = tokio::time::timeout_at(watch_until.max(healed).into(), reconnected)
        .await
        .ok();
    let event = NetworkEvent {
        before,
        after: proxy.counts(),
        reconnected,
    };
    (Ok(()), Some(Proxied { event, healed }))
}

/// What the broker reports about leadership now; `None` if it cannot say
/// or does not answer in time.
async fn leadership(driver: &dyn Driver) -> Option<Leadership> {
    leadership_within(driver, LEADER_TIMEOUT).await
}

/// [`leadership`], waiting up to `timeout` for the answer.
async fn leadership_within(driver: &dyn Driver, timeout: Duration) -> Option<Leadership> {
    tokio::time::timeout(timeout, driver.leadership())
        .await
        .ok()?
        .ok()
        .flatten()
}

/// An error when the broker reports a leader that is none of the nodes
/// named (a targets file's `name`s that are not what the broker calls them):
/// the fault could not be aimed.
fn unknown_leader(now: Option<&Leadership>, names: &[String]) -> Option<anyhow::Error> {
    let leader = now?.leader.as_deref()?;
    (!names.iter().any(|n| n == leader)).then(|| {
        anyhow::anyhow!(
            "the broker reports {leader} leading, which is none of the nodes named \
             ({}): the fault was not applied; check the nodes' names",
            names.join(", ")
        )
    })
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

/// Applies `fault` to node `index` alone, given who led just before
/// (`None`: the broker did not say), watching the broker report another
/// leader meanwhile, then waits for the node to rejoin. Without a report
/// before, nothing is watched; once the node is back, the watch goes on
/// for [`LEADER_GRACE`] at most.
async fn on_node(
    fault: &Fault,
    (target, driver): (&mut dyn FaultTarget, &dyn Driver),
    names: &[String],
    (index, before): (usize, Option<&Leadership>),
    deadline: Instant,
) -> (NodeEvent, anyhow::Result<()>) {
    let name = names[index].clone();
    let mut event = NodeEvent {
        number: index + 1,
        was_leader: before.and_then(|l| l.leader.as_deref()) == Some(name.as_str()),
        name,
        hit: Instant::now(),
        ready: None,
        led_by_another: None,
        rejoined: None,
    };
    let applied = async {
        let outcome = match (fault.action, target.node(index)) {
            (FaultAction::Partition, _) => partition(fault, target, index, deadline).await,
            (_, Some(node)) => apply(fault, node, deadline).await,
            (_, None) => Err(anyhow::anyhow!("node {} is not there", index + 1)),
        };
        (outcome, Instant::now())
    };
    tokio::pin!(applied);
    let watch = led_by_another(driver, &names[index]);
    tokio::pin!(watch);
    let watching = before.is_some();
    let (outcome, back) = tokio::select! {
        done = &mut applied => done,
        elected = &mut watch, if watching => {
            event.led_by_another = Some(elected);
            applied.await
        }
    };
    if watching && event.led_by_another.is_none() {
        let grace = (back + LEADER_GRACE).min(deadline);
        event.led_by_another = tokio::time::timeout_at(grace.into(), watch).await.ok();
    }
    if outcome.is_ok() {
        event.ready = Some(back);
        if watching {
            event.rejoined = rejoined(driver, &event.name, deadline).await;
        }
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
        let before = leadership(driver).await;
        let aimed = (index, before.as_ref());
        let (event, outcome) = on_node(fault, (target, driver), names, aimed, deadline).await;
        let rejoined = event.rejoined.is_some();
        nodes.push(event);
        outcome?;
        if !rejoined && before.is_some() {
            anyhow::bail!(
                "node {} did not rejoin before the end of the run",
                index + 1
            );
        }
    }
    Ok(())
}

/// Waits until the broker reports a leader other than `name`, and (Kafka)
/// no partition led by it or by none; returns who leads then, and when.
async fn led_by_another(driver: &dyn Driver, name: &str) -> (Leadership, Instant) {
    reported(driver, |now| {
        now.leader.as_deref().is_some_and(|leader| leader != name)
            && !now
                .partitions
                .values()
                .any(|leader| leader == name || leader == NO_LEADER)
    })
    .await
}

/// When the broker reports `name`'s copy caught up again, if before `deadline`.
async fn rejoined(driver: &dyn Driver, name: &str, deadline: Instant) -> Option<Instant> {
    let caught_up = reported(driver, |now| now.in_sync.iter().any(|n| n == name));
    tokio::time::timeout_at(deadline.into(), caught_up)
        .await
        .ok()
        .map(|(_, at)| at)
}

/// Asks the broker who leads every [`LEADER_POLL`] until what it reports
/// meets `holds`; returns that report, and when it came.
async fn reported(
    driver: &dyn Driver,
    holds: impl Fn(&Leadership) -> bool,
) -> (Leadership, Instant) {
    loop {
        if let Some(now) = leadership(driver).await.filter(|now| holds(now)) {
            return (now, Instant::now());
        }
        tokio::time::sleep(LEADER_POLL).await;
    }
}

/// Cuts node `index` off from the others for the fault's duration, then
/// heals the partition.
async fn partition(
    fault: &Fault,
    target: &mut dyn FaultTarget,
    index: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    let until = (Instant::now() + fault.duration).min(deadline);
    target.isolate(index)?;
    tokio::time::sleep_until(until.into()).await;
    target.heal()
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
        FaultAction::Delay | FaultAction::Cut | FaultAction::Blackhole => {
            anyhow::bail!("{} is applied through the proxy", fault.action.as_str())
        }
        FaultAction::Partition => anyhow::bail!("a partition is applied to the cluster"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn led_by(leader: &str) -> Leadership {
        Leadership {
            leader: Some(leader.to_string()),
            ..Leadership::default()
        }
    }

    #[test]
    fn faults_are_aimed_at_the_node_the_broker_reports() {
        let names: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let now = led_by("n2");
        assert_eq!(choose(Some(NodeChoice::Leader), Some(&now), &names), 1);
        assert_eq!(choose(None, Some(&now), &names), 1);
        assert_eq!(choose(Some(NodeChoice::Follower), Some(&now), &names), 2);
        assert_eq!(choose(Some(NodeChoice::Number(3)), Some(&now), &names), 2);
        // The broker did not say: the first node (was_leader then false).
        assert_eq!(choose(Some(NodeChoice::Leader), None, &names), 0);
        assert!((0..3).contains(&choose(Some(NodeChoice::Any), None, &names)));
        assert!(unknown_leader(Some(&now), &names).is_none());
        assert!(unknown_leader(None, &names).is_none());
        let wrong = unknown_leader(Some(&led_by("rabbit@mq9")), &names).unwrap();
        assert!(wrong.to_string().contains("rabbit@mq9"), "{wrong}");
    }
}
