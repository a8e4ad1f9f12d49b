//! The fault proxy: a TCP relay between the clients and each broker node,
//! through which network faults are injected (the machines have no
//! `sch_netem`, so `tc` cannot add delay).
//!
//! A scenario with network faults gets one listener per node on loopback;
//! every client connection goes through it (Kafka advertises the proxy's
//! port, NATS advertises no other address), and the results say so. The
//! link it gives is one of:
//!
//! - open: bytes are relayed as they come;
//! - delayed: each chunk read is written `latency` (± `jitter`) later, in
//!   order, each way, as netem's delay would (a chunk never overtakes the
//!   one before it, as TCP would not let it);
//! - black-holed: nothing is read or written, and new connections are held
//!   before the broker is reached, so the clients' own timeouts must fire.
//!   Nothing is dropped: TCP would deliver the bytes it retransmits once
//!   the hole closes, and so does the proxy;
//! - down: every connection is reset at once (a cut), and new ones are
//!   reset as they arrive until the link is open again.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Endpoint, FaultTarget, Placed};

/// How long the proxy waits to reach a broker node for a client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest chunk relayed at once.
const CHUNK: usize = 64 * 1024;
/// Chunks read but not yet written, per direction of a connection, before
/// the proxy stops reading (as a full TCP window would).
const QUEUED: usize = 256;

/// What the link between the clients and the brokers does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Bytes relayed as they come.
    Open,
    /// Each chunk written `latency` ± `jitter` after it was read.
    Delayed {
        /// Added each way.
        latency: Duration,
        /// The most a chunk's delay varies from `latency`, either way.
        jitter: Duration,
    },
    /// Nothing moves; connections stay open; new ones are held.
    Blackhole,
    /// New connections are reset as they arrive.
    Down,
}

/// What the proxy saw, counted from its start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyCounts {
    /// Client connections accepted.
    pub accepted: u64,
    /// Client connections relayed to a broker node.
    pub relayed: u64,
    /// Connections reset by a cut.
    pub cut: u64,
    /// Connections reset on arrival while the link was down.
    pub refused: u64,
    /// Connections open now.
    pub open: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    relayed: AtomicU64,
    cut: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
}

/// A relay on loopback in front of each node of one broker.
pub struct FaultProxy {
    ports: Vec<u16>,
    /// Where each port relays to, once known.
    upstreams: Vec<watch::Sender<Option<SocketAddr>>>,
    link: watch::Sender<Link>,
    /// Cancelled by a cut; every connection open then watches it.
    generation: Mutex<CancellationToken>,
    closing: CancellationToken,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("ports", &self.ports)
            .field("link", &*self.link.borrow())
            .finish()
    }
}

impl FaultProxy {
    /// Listens on `nodes` free loopback ports, one per broker node, and
    /// accepts at once; a connection waits until [`route`](Self::route) says
    /// where its node is (Kafka must be told the proxy's ports before it
    /// starts, and its readiness probe already goes through them).
    pub async fn bind(nodes: usize) -> Result<Arc<Self>> {
        let mut listeners = Vec::new();
        for _ in 0..nodes {
            listeners.push(
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .await
                    .context("binding the fault proxy on loopback")?,
            );
        }
        let ports = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.port()))
            .collect::<Result<_>>()?;
        let proxy = Arc::new(FaultProxy {
            ports,
            upstreams: (0..nodes).map(|_| watch::channel(None).0).collect(),
            link: watch::channel(Link::Open).0,
            generation: Mutex::new(CancellationToken::new()),
            closing: CancellationToken::new(),
            counters: Arc::default(),
        });
        for (index, listener) in listeners.into_iter().enumerate() {
            tokio::spawn(proxy.clone().accept_loop(listener, index));
        }
        Ok(proxy)
    }

    /// The proxy's port in front of each node, in node order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Relays connections to the port in front of node `index` to `upstream`.
    pub fn route(&self, index: usize, upstream: SocketAddr) {
        if let Some(slot) = self.upstreams.get(index) {
            slot.send_replace(Some(upstream));
        }
    }

    /// Sets what the link does from now on; what is queued keeps the delay
    /// it was read with.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// What the link does now.
    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// Resets every open connection at once; returns how many there were.
    pub fn cut(&self) -> u64 {
        let open = self.counters.open.load(Ordering::Relaxed);
        // Each connection counts itself in `cut` as it goes.
        std::mem::take(&mut *self.generation.lock().expect("not poisoned")).cancel();
        open
    }

    /// What it has seen so far.
    pub fn counts(&self) -> ProxyCounts {
        let c = &self.counters;
        ProxyCounts {
            accepted: c.accepted.load(Ordering::Relaxed),
            relayed: c.relayed.load(Ordering::Relaxed),
            cut: c.cut.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.closing.cancel();
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, index: usize) {
        loop {
            let accepted = tokio::select! {
                _ = self.closing.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((client, _)) = accepted else { continue };
            self.counters.accepted.fetch_add(1, Ordering::Relaxed);
            if self.link() == Link::Down {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                reset(client);
                continue;
            }
            let generation = self.generation.lock().expect("not poisoned").clone();
            let proxy = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = proxy.closing.cancelled() => {}
                    _ = proxy.relay(client, index, generation) => {}
                }
            });
        }
    }

    /// One client connection, relayed to node `index` until either side
    /// closes it or a cut resets it.
    async fn relay(&self, client: TcpStream, index: usize, cut: CancellationToken) {
        let mut routed = self.upstreams[index].subscribe();
        let upstream = tokio::select! {
            _ = cut.cancelled() => return reset(client),
            routed = routed.wait_for(Option::is_some) => match routed {
                Ok(upstream) => upstream.expect("waited for"),
                Err(_) => return,
            },
        };
        let mut link = self.link.subscribe();
        // A black hole holds the connection before the broker is reached.
        tokio::select! {
            _ = cut.cancelled() => return reset(client),
            _ = link.wait_for(|l| *l != Link::Blackhole) => {}
        }
        let server = tokio::select! {
            _ = cut.cancelled() => return reset(client),
            server = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)) => server,
        };
        let Ok(Ok(mut server)) = server else { return };
        let mut client = client;
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        self.counters.relayed.fetch_add(1, Ordering::Relaxed);
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        let was_cut = {
            let (client_read, client_write) = client.split();
            let (server_read, server_write) = server.split();
            let both = async {
                tokio::join!(
                    one_way(client_read, server_write, self.link.subscribe()),
                    one_way(server_read, client_write, self.link.subscribe()),
                )
            };
            tokio::select! {
                _ = cut.cancelled() => true,
                _ = both => false,
            }
        };
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        if was_cut {
            self.counters.cut.fetch_add(1, Ordering::Relaxed);
            reset(client);
            reset(server);
        }
    }
}

/// Closes `stream` with a reset, as a load balancer that drops a
/// connection does, rather than an orderly close.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Relays one direction until end of file or an error, each chunk written
/// when the link at its reading says.
async fn one_way<R, W>(mut from: R, mut to: W, link: watch::Receiver<Link>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (queue, mut queued) = mpsc::channel::<(Instant, Bytes)>(QUEUED);
    let mut read_link = link.clone();
    let reading = async move {
        let mut buf = vec![0; CHUNK];
        let mut last_due = Instant::now();
        loop {
            if read_link.wait_for(|l| *l != Link::Blackhole).await.is_err() {
                break;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            let due = match *read_link.borrow() {
                Link::Delayed { latency, jitter } => now + jittered(latency, jitter),
                _ => now,
            };
            // In order, as TCP delivers: never before the chunk before.
            last_due = due.max(last_due);
            if queue
                .send((last_due, Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let mut write_link = link;
    let writing = async move {
        while let Some((due, chunk)) = queued.recv().await {
            // Only a delayed chunk waits for the timer: tokio rounds a
            // deadline up to its next millisecond tick, which added 2.3-2.9 ms
            // to every round trip through an open link (scripts/proxy-cost).
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            if write_link
                .wait_for(|l| *l != Link::Blackhole)
                .await
                .is_err()
                || to.write_all(&chunk).await.is_err()
            {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reading, writing);
}

/// `latency` varied uniformly by up to `jitter` either way.
fn jittered(latency: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return latency;
    }
    let spread = jitter.as_secs_f64();
    let offset = rand::random_range(-spread..=spread);
    Duration::from_secs_f64((latency.as_secs_f64() + offset).max(0.0))
}

/// A placed broker whose clients all go through a fault proxy.
pub(crate) struct Proxied {
    inner: Box<dyn Placed>,
    proxy: Arc<FaultProxy>,
    endpoint: Endpoint,
}

impl Proxied {
    /// `inner`, reached through `proxy`: bound, and routed to each node
    /// before the node started (where the node's start routes it), one
    /// port per node of `inner`'s endpoint, in order.
    pub(crate) fn new(inner: Box<dyn Placed>, proxy: Arc<FaultProxy>) -> Result<Self> {
        let nodes = inner.endpoint().urls().len();
        anyhow::ensure!(
            nodes == proxy.ports().len(),
            "the fault proxy has {} ports for {nodes} nodes",
            proxy.ports().len(),
        );
        let endpoint = inner
            .endpoint()
            .through(&Ipv4Addr::LOCALHOST.to_string(), proxy.ports());
        Ok(Proxied {
            inner,
            proxy,
            endpoint,
        })
    }
}

#[async_trait]
impl FaultTarget for Proxied {
    async fn kill(&mut self) -> Result<()> {
        self.inner.kill().await
    }
    async fn start(&mut self) -> Result<()> {
        self.inner.start().await
    }
    async fn restart(&mut self) -> Result<()> {
        self.inner.restart().await
    }
    async fn pause(&mut self) -> Result<()> {
        self.inner.pause().await
    }
    async fn resume(&mut self) -> Result<()> {
        self.inner.resume().await
    }
    fn node_names(&self) -> Vec<String> {
        self.inner.node_names()
    }
    fn active_controller(&self) -> Option<String> {
        self.inner.active_controller()
    }
    fn node(&mut self, index: usize) -> Option<&mut dyn FaultTarget> {
        self.inner.node(index)
    }
    fn isolate(&mut self, index: usize) -> Result<()> {
        self.inner.isolate(index)
    }
    fn heal(&mut self) -> Result<()> {
        self.inner.heal()
    }
    fn proxy(&self) -> Option<&FaultProxy> {
        Some(&self.proxy)
    }
}

#[async_trait]
impl Placed for Proxied {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
    fn implementation(&self) -> &str {
        self.inner.implementation()
    }
    fn stand_in_for(&self) -> Option<&str> {
        self.inner.stand_in_for()
    }
    fn behind_proxy(&self) -> Option<&Endpoint> {
        Some(self.inner.endpoint())
    }
    async fn shutdown(self: Box<Self>) -> Result<()> {
        self.proxy.close();
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback, and the proxy in front of it.
    async fn echo_behind_proxy() -> Arc<FaultProxy> {
        let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let at = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = FaultProxy::bind(1).await.unwrap();
        proxy.route(0, at);
        proxy
    }

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<Duration> {
        let start = std::time::Instant::now();
        s.write_all(b"ping").await?;
        let mut buf = [0; 4];
        s.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(start.elapsed())
    }

    #[tokio::test]
    async fn a_delay_is_added_each_way_and_keeps_order() {
        let proxy = echo_behind_proxy().await;
        let mut s = TcpStream::connect(("127.0.0.1", proxy.ports()[0]))
            .await
            .unwrap();
        let open = round_trip(&mut s).await.unwrap();
        proxy.set(Link::Delayed {
            latency: Duration::from_millis(30),
            jitter: Duration::from_millis(10),
        });
        let delayed = round_trip(&mut s).await.unwrap();
        assert!(
            delayed >= Duration::from_millis(40) && delayed < Duration::from_millis(500),
            "a round trip through 30 ± 10 ms each way took {delayed:?} ({open:?} open)"
        );
        // Many small writes come back whole and in order despite the jitter.
        let sent: Vec<u8> = (0..200u8).collect();
        for b in &sent {
            s.write_all(&[*b]).await.unwrap();
        }
        let mut back = vec![0; sent.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, sent);
        proxy.set(Link::Open);
        assert!(round_trip(&mut s).await.unwrap() < Duration::from_millis(40));
    }

    #[tokio::test]
    async fn a_cut_resets_every_connection_and_down_refuses_new_ones() {
        let proxy = echo_behind_proxy().await;
        let port = proxy.ports()[0];
        let mut a = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut b = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        round_trip(&mut a).await.unwrap();
        round_trip(&mut b).await.unwrap();
        proxy.set(Link::Down);
        assert_eq!(proxy.cut(), 2);
        assert!(round_trip(&mut a).await.is_err());
        assert!(round_trip(&mut b).await.is_err());
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert!(
            round_trip(&mut c).await.is_err(),
            "down: a new connection is reset"
        );
        proxy.set(Link::Open);
        let mut d = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        round_trip(&mut d).await.unwrap();
        let counts = proxy.counts();
        assert_eq!((counts.cut, counts.refused, counts.open), (2, 1, 1));
    }

    #[tokio::test]
    async fn a_black_hole_holds_everything_until_it_closes() {
        let proxy = echo_behind_proxy().await;
        let port = proxy.ports()[0];
        let mut a = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        round_trip(&mut a).await.unwrap();
        proxy.set(Link::Blackhole);
        let held = tokio::time::timeout(Duration::from_millis(300), round_trip(&mut a)).await;
        assert!(held.is_err(), "nothing may come back through a black hole");
        // A new connection is accepted but reaches nothing.
        let mut b = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let held = tokio::time::timeout(Duration::from_millis(300), round_trip(&mut b)).await;
        assert!(held.is_err());
        assert_eq!(proxy.counts().relayed, 1);
        proxy.set(Link::Open);
        // What was sent into the hole arrives once it closes, in order.
        let mut buf = [0; 4];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        round_trip(&mut b).await.unwrap();
        assert_eq!(proxy.counts().relayed, 2);
    }
}
