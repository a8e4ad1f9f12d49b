//! Questions to a broker's own HTTP API (RabbitMQ's management plugin,
//! nats-server's monitoring): one GET over hyper's HTTP/1 client, with the
//! call timeout; and the view of a cluster most of its nodes give.

use anyhow::{bail, Context, Result};
use base64::Engine;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::driver::{timed, Leadership};

/// `GET {base}{path}` with the account in `base`
/// (`http://user:password@host:port`), else the default one; the JSON body.
pub(crate) async fn get_json(base: &str, path: &str) -> Result<serde_json::Value> {
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

/// Who leads, as most of a cluster's `nodes` say, each asked by one of
/// `asks` at once: the first answer that a majority of all the nodes gives,
/// else the one most of those that answered give (the first of them on a
/// tie). A node cut off from the others by a partition still answers, with
/// its own stale view; a paused or unreachable one costs nothing.
pub(crate) async fn majority_view<F>(
    asks: impl IntoIterator<Item = F>,
    nodes: usize,
) -> Result<Leadership>
where
    F: std::future::Future<Output = Result<Leadership>>,
{
    let mut asks: FuturesUnordered<F> = asks.into_iter().collect();
    if asks.is_empty() {
        bail!("no address to ask");
    }
    let majority = nodes / 2 + 1;
    let mut answers: Vec<(Leadership, usize)> = Vec::new();
    let mut last_error = None;
    while let Some(answer) = asks.next().await {
        let now = match answer {
            Ok(now) => now,
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

#[cfg(test)]
mod tests {
    use super::*;

    type Ask = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Leadership>>>>;

    fn says(leader: &'static str) -> Ask {
        Box::pin(async move {
            Ok(Leadership {
                leader: Some(leader.to_string()),
                ..Leadership::default()
            })
        })
    }

    fn refuses() -> Ask {
        Box::pin(async { Err(anyhow::anyhow!("refused")) })
    }

    #[tokio::test]
    async fn the_majoritys_view_wins_over_an_isolated_nodes() {
        let view = majority_view([says("n1"), says("n2"), says("n2")], 3).await;
        assert_eq!(view.unwrap().leader.as_deref(), Some("n2"));
        // Only the isolated node answers: its view, for want of another.
        let view = majority_view([says("n1"), refuses(), refuses()], 3).await;
        assert_eq!(view.unwrap().leader.as_deref(), Some("n1"));
        let none = majority_view([refuses()], 3).await.unwrap_err();
        assert!(none.to_string().contains("refused"), "{none}");
    }
}
