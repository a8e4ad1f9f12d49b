//! The management plugin's HTTP API, on local clusters: the one place that
//! says which node leads a quorum queue and which members are online (AMQP
//! does not). One GET per question, over hyper's HTTP/1 client, each with
//! the call timeout.

use anyhow::{bail, Context, Result};
use base64::Engine;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::driver::{timed, Leadership};

/// `GET {base}{path}` with the account in `base`
/// (`http://user:password@host:port`), else the default one; the JSON body.
async fn get_json(base: &str, path: &str) -> Result<serde_json::Value> {
    let rest = base
        .strip_prefix("http://")
        .with_context(|| format!("'{base}' is not an http:// address"))?;
    let rest = rest.trim_end_matches('/');
    let (account, authority) = match rest.rsplit_once('@') {
        Some((account, authority)) => (account, authority),
        None => ("guest:guest", rest),
    };
    let shown = format!("http://{authority}");
    let stream = timed(
        &format!("connecting to the management API at {shown}"),
        tokio::net::TcpStream::connect(authority),
    )
    .await?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = timed(
        "an HTTP handshake with the management API",
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io),
    )
    .await?;
    tokio::spawn(connection);
    let auth = base64::engine::general_purpose::STANDARD.encode(account);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::AUTHORIZATION, format!("Basic {auth}"))
        .body(Empty::new())?;
    let response = timed("asking the management API", sender.send_request(request)).await?;
    let status = response.status();
    let body = timed("reading the management API's answer", response.collect())
        .await?
        .to_bytes();
    if !status.is_success() {
        bail!(
            "the management API answered {status} for {path}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).with_context(|| format!("the answer to {path}"))
}

/// Who leads quorum queue `queue` (vhost `/`) and which members are online,
/// as most of the nodes in `bases` say: every node is asked at once, and the
/// answer is the first that a majority of all the nodes gives, else the one
/// most of those that answered give (the first of them on a tie). A node
/// cut off from the others by a partition still answers, with its own
/// stale view; a paused or unreachable one costs nothing.
pub(super) async fn queue_leadership(bases: &[String], queue: &str) -> Result<Leadership> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let path = format!("/api/queues/%2F/{}", queue.replace('/', "%2F"));
    let mut asks = bases
        .iter()
        .map(|base| get_json(base, &path))
        .collect::<FuturesUnordered<_>>();
    if asks.is_empty() {
        bail!("no management API address");
    }
    let majority = bases.len() / 2 + 1;
    let mut answers: Vec<(Leadership, usize)> = Vec::new();
    let mut last_error = None;
    while let Some(answer) = asks.next().await {
        let now = match answer {
            Ok(info) => leadership_of(&info),
            Err(e) => {
                last_error = Some(e);
                continue;
            }
        };
        let votes = match answers.iter_mut().find(|(l, _)| l.leader == now.leader) {
            Some((_, votes)) => {
                *votes += 1;
                *votes
            }
            None => {
                answers.push((now.clone(), 1));
                1
            }
        };
        if votes >= majority {
            return Ok(now);
        }
    }
    // The most votes; `max_by_key` would keep the last of a tie.
    let best = answers.iter().map(|(_, v)| *v).max();
    match answers.into_iter().find(|(_, v)| Some(*v) == best) {
        Some((leadership, _)) => Ok(leadership),
        None => Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no node answered"))),
    }
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
