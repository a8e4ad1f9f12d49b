//! The management plugin's HTTP API, on local clusters: the one place that
//! says which node leads a quorum queue and which members are online (AMQP
//! does not). One GET per node per question ([`crate::broker::http`]).

use anyhow::Result;

use crate::broker::http::{get_json, majority_view};
use crate::driver::Leadership;

/// Who leads quorum queue `queue` (vhost `/`) and which members are online,
/// as most of the nodes in `bases` say: every node is asked at once, and the
/// answer is the first that a majority of all the nodes gives, else the one
/// most of those that answered give (the first of them on a tie). A node
/// cut off from the others by a partition still answers, with its own
/// stale view; a paused or unreachable one costs nothing.
pub(super) async fn queue_leadership(bases: &[String], queue: &str) -> Result<Leadership> {
    let path = format!("/api/queues/%2F/{}", queue.replace('/', "%2F"));
    let asks = bases.iter().map(|base| async {
        let info = get_json(base, &path).await?;
        Ok(leadership_of(&info))
    });
    majority_view(asks, bases.len()).await
}

/// A queue's `leader` and `online` members as the management API gives them.
fn leadership_of(info: &serde_json::Value) -> Leadership {
    let names = |field: &str| -> Vec<String> {
        info[field]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut in_sync = names("online");
    in_sync.sort();
    Leadership {
        leader: info["leader"].as_str().map(str::to_string),
        in_sync,
        ..Leadership::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quorum_queues_leader_and_online_members_are_read() {
        // As RabbitMQ 3.10's management API gives a quorum queue.
        let info = serde_json::json!({
            "name": "brokerbench.inventory",
            "type": "quorum",
            "leader": "brokerbench1@localhost",
            "members": ["brokerbench1@localhost", "brokerbench2@localhost", "brokerbench3@localhost"],
            "online": ["brokerbench2@localhost", "brokerbench1@localhost"],
        });
        let l = leadership_of(&info);
        assert_eq!(l.leader.as_deref(), Some("brokerbench1@localhost"));
        assert_eq!(
            l.in_sync,
            ["brokerbench1@localhost", "brokerbench2@localhost"]
        );
        assert_eq!(leadership_of(&serde_json::json!({})), Leadership::default());
    }
}
