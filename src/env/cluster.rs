//! A cluster of local broker processes on loopback: `[cluster] nodes = 3`.
//!
//! Each node is a [`LocalBroker`] with ports and a data directory of its own
//! (`<run dir>/<broker>/node-N/`), configured as its broker's documentation
//! clusters it: every node is told where every other listens. The nodes
//! start together (a node may wait for a quorum before it answers clients),
//! except where the others join the first, which then starts alone first
//! (RabbitMQ); the cluster is ready once each answers its handshake. Clients get every
//! node's address. Faults hit one node ([`FaultTarget::node`]) or, as on a
//! single broker, all of them.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures_util::future::join_all;

use super::binaries::Binary;
use super::local::{free_ports, LocalBroker};
use super::{Endpoint, FaultTarget, Placed};
use crate::broker::{self, PortRole, Ports, ServerSettings};

/// Loopback, as for single nodes.
const HOST: &str = "127.0.0.1";

/// Several local processes of one broker, joined into one cluster.
#[derive(Debug)]
pub struct LocalCluster {
    nodes: Vec<LocalBroker>,
    endpoint: Endpoint,
    implementation: String,
}

impl LocalCluster {
    /// Starts `nodes` nodes of `binary` with their data under
    /// `run_dir/<broker>/node-N/` and waits until every one is ready. A node
    /// that is not ready in time is an error naming it, with its log's tail.
    pub async fn start(
        binary: Binary,
        run_dir: &Path,
        server: ServerSettings,
        nodes: u8,
    ) -> Result<Self> {
        let kind = binary.kind;
        let info = broker::info(kind);
        let roles: Vec<PortRole> = info
            .extra_ports
            .iter()
            .chain(info.cluster_ports)
            .copied()
            .collect();
        let mut peers: Vec<Ports> = Vec::new();
        for _ in 0..nodes {
            let ports = free_ports(1 + roles.len())?;
            let mut node = Ports::assign(ports[0], &roles, &ports[1..]);
            if let Some(first) = peers.first() {
                share(&mut node, first, info.shared_ports);
            }
            peers.push(node);
        }
        let peers: Arc<[Ports]> = peers.into();
        let admin = peers
            .iter()
            .filter_map(|p| p.monitoring)
            .map(|port| format!("http://{HOST}:{port}"))
            .collect();
        let dir = run_dir.join(kind.as_str());
        let mut members = (0..usize::from(nodes))
            .map(|i| {
                let node_dir = dir.join(format!("node-{}", i + 1));
                LocalBroker::node(binary.clone(), node_dir, server, i, peers.clone())
            })
            .collect::<Result<Vec<_>>>()?;
        let clients: Vec<u16> = peers.iter().map(|p| p.client).collect();
        let mut cluster = LocalCluster {
            endpoint: Endpoint::cluster(kind, HOST, &clients).with_admin(admin),
            implementation: binary.implementation.clone(),
            nodes: Vec::new(),
        };
        // The first node alone, when the others join it.
        let together = if info.cluster_joins_first {
            let first = members[0].spawn().await.context("node 1")?;
            members[0]
                .await_ready(first)
                .await
                .with_context(|| format!("node 1 of the {kind} cluster did not start in time"))?;
            1
        } else {
            0
        };
        let mut spawned = Vec::new();
        for (i, member) in members.iter_mut().enumerate().skip(together) {
            spawned.push(
                member
                    .spawn()
                    .await
                    .with_context(|| format!("node {} of the {kind} cluster", i + 1))?,
            );
        }
        // The first node that fails (one that exits at once, or the first
        // still not ready at the deadline) fails the cluster; the others
        // are stopped with it.
        let readiness = futures_util::future::try_join_all(
            members
                .iter_mut()
                .enumerate()
                .skip(together)
                .zip(spawned)
                .map(|((i, member), spawned)| async move {
                    member.await_ready(spawned).await.with_context(|| {
                        format!("node {} of the {kind} cluster did not come up", i + 1)
                    })
                }),
        )
        .await;
        cluster.nodes = members;
        readiness?;
        Ok(cluster)
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[LocalBroker] {
        &self.nodes
    }

    /// Runs `each` on every node at once; the first error, if any.
    async fn every<'a, F, Fut>(&'a mut self, each: F) -> Result<()>
    where
        F: Fn(&'a mut LocalBroker) -> Fut,
        Fut: std::future::Future<Output = Result<()>> + 'a,
    {
        join_all(self.nodes.iter_mut().map(each))
            .await
            .into_iter()
            .collect()
    }
}

#[async_trait::async_trait]
impl Placed for LocalCluster {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn implementation(&self) -> &str {
        &self.implementation
    }

    async fn shutdown(self: Box<Self>) -> Result<()> {
        join_all(self.nodes.into_iter().map(LocalBroker::shutdown))
            .await
            .into_iter()
            .collect()
    }
}

/// Gives `node` the `first` node's port for each of `roles`.
fn share(node: &mut Ports, first: &Ports, roles: &[PortRole]) {
    for role in roles {
        let port = first.of(*role);
        match role {
            PortRole::Monitoring => node.monitoring = port,
            PortRole::Distribution => node.distribution = port,
            PortRole::Epmd => node.epmd = port,
            PortRole::Controller => node.controller = port,
            PortRole::Route => node.route = port,
        }
    }
}

/// A fault without a node hits every node at once, as on a single broker.
#[async_trait::async_trait]
impl FaultTarget for LocalCluster {
    async fn kill(&mut self) -> Result<()> {
        self.every(LocalBroker::kill).await
    }

    async fn start(&mut self) -> Result<()> {
        let mut spawned = Vec::new();
        for node in &mut self.nodes {
            spawned.push(node.spawn().await?);
        }
        join_all(
            self.nodes
                .iter_mut()
                .zip(spawned)
                .map(|(node, spawned)| node.await_ready(spawned)),
        )
        .await
        .into_iter()
        .try_for_each(|ready| ready.map(drop))
    }

    async fn restart(&mut self) -> Result<()> {
        self.every(LocalBroker::stop).await?;
        FaultTarget::start(self).await
    }

    async fn pause(&mut self) -> Result<()> {
        self.every(|n| async { LocalBroker::pause(n) }).await
    }

    async fn resume(&mut self) -> Result<()> {
        self.every(|n| async { LocalBroker::resume(n) }).await
    }

    fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(LocalBroker::node_name).collect()
    }

    /// From the nodes' logs, as the broker module reads them.
    fn active_controller(&self) -> Option<String> {
        let kind = self.nodes.first()?.kind();
        let logs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| std::fs::read_to_string(n.log_path()).unwrap_or_default())
            .collect();
        let index = broker::registry(kind).active_controller(&logs)?;
        Some(self.nodes[index].node_name())
    }

    fn node(&mut self, index: usize) -> Option<&mut dyn FaultTarget> {
        self.nodes
            .get_mut(index)
            .map(|node| node as &mut dyn FaultTarget)
    }
}
