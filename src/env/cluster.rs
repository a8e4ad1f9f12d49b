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
use super::netns::Mesh;
use super::proxy::FaultProxy;
use super::{Endpoint, FaultTarget, Placed};
use crate::broker::{self, PortRole, Ports, ServerSettings};
use crate::kind::BrokerKind;

/// Several local processes of one broker, joined into one cluster.
#[derive(Debug)]
pub struct LocalCluster {
    nodes: Vec<LocalBroker>,
    endpoint: Endpoint,
    implementation: String,
    /// The nodes' network namespaces, when partitions may cut them apart
    /// (after `nodes`: dropped once the processes are gone).
    mesh: Option<Mesh>,
}

impl LocalCluster {
    /// Starts `nodes` nodes of `binary` with their data under
    /// `run_dir/<broker>/node-N/` and waits until every one is ready. A node
    /// that is not ready in time is an error naming it, with its log's tail.
    /// Behind `proxy`, if given, node N is reached through its Nth port,
    /// which relays to it before it starts, and the broker tells clients
    /// to connect to those ports where it tells them (Kafka). With `mesh`,
    /// each node runs in its network namespace, on its address there.
    pub async fn start(
        binary: Binary,
        run_dir: &Path,
        server: ServerSettings,
        nodes: u8,
        (proxy, mesh): (Option<&FaultProxy>, Option<Mesh>),
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
        for i in 0..usize::from(nodes) {
            let ports = free_ports(1 + roles.len())?;
            let mut node = Ports::assign(ports[0], &roles, &ports[1..]);
            node.host = mesh.as_ref().map(|m| m.host(i));
            if let Some(proxy) = proxy {
                node.advertised = proxy.ports().get(i).copied();
                proxy.route(i, (node.ip(), node.client).into());
            }
            // A shared port is the first node's.
            if let Some(first) = peers.first() {
                for role in info.shared_ports {
                    *node.slot(*role) = first.of(*role);
                }
            }
            peers.push(node);
        }
        let peers: Arc<[Ports]> = peers.into();
        let admin = peers
            .iter()
            .filter_map(|p| Some(format!("http://{}:{}", p.ip(), p.monitoring?)))
            .collect();
        let dir = run_dir.join(kind.as_str());
        let mut members = (0..usize::from(nodes))
            .map(|i| {
                let node_dir = dir.join(format!("node-{}", i + 1));
                let netns = mesh.as_ref().map(|m| m.namespace(i));
                let at = (i, peers.clone());
                LocalBroker::node(binary.clone(), node_dir, server.clone(), at, netns)
            })
            .collect::<Result<Vec<_>>>()?;
        let clients: Vec<(String, u16)> = peers
            .iter()
            .map(|p| (p.ip().to_string(), p.client))
            .collect();
        let mut cluster = LocalCluster {
            endpoint: Endpoint::nodes(kind, &clients).with_admin(admin),
            implementation: binary.implementation.clone(),
            nodes: Vec::new(),
            mesh,
        };
        // The first node alone first, when the others join it.
        let alone = usize::from(info.cluster_joins_first);
        start_together(&mut members[..alone], 0, kind).await?;
        let readiness = start_together(&mut members[alone..], alone, kind).await;
        cluster.nodes = members;
        readiness?;
        Ok(cluster)
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

/// Starts `nodes` (node `first + 1` onwards) at once and waits until each
/// is ready. The first node that fails (one that exits at once, or the
/// first still not ready at the deadline) is the error, naming it; the
/// others are not waited for.
async fn start_together(nodes: &mut [LocalBroker], first: usize, kind: BrokerKind) -> Result<()> {
    let mut spawned = Vec::new();
    for (i, node) in nodes.iter_mut().enumerate() {
        let started = node.spawn().await;
        spawned.push(
            started.with_context(|| format!("node {} of the {kind} cluster", first + i + 1))?,
        );
    }
    futures_util::future::try_join_all(nodes.iter_mut().enumerate().zip(spawned).map(
        |((i, node), spawned)| async move {
            node.await_ready(spawned).await.with_context(|| {
                format!(
                    "node {} of the {kind} cluster did not come up",
                    first + i + 1
                )
            })
        },
    ))
    .await
    .map(drop)
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

/// A fault without a node hits every node at once, as on a single broker.
#[async_trait::async_trait]
impl FaultTarget for LocalCluster {
    async fn kill(&mut self) -> Result<()> {
        self.every(LocalBroker::kill).await
    }

    async fn start(&mut self) -> Result<()> {
        let kind = self.endpoint.kind;
        start_together(&mut self.nodes, 0, kind).await
    }

    async fn restart(&mut self) -> Result<()> {
        self.every(LocalBroker::stop).await?;
        FaultTarget::start(self).await
    }

    async fn pause(&mut self) -> Result<()> {
        self.every(LocalBroker::pause).await
    }

    async fn resume(&mut self) -> Result<()> {
        self.every(LocalBroker::resume).await
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

    fn isolate(&mut self, index: usize) -> Result<()> {
        self.mesh
            .as_mut()
            .context("the nodes do not run in network namespaces")?
            .isolate(index)
    }

    fn heal(&mut self) -> Result<()> {
        self.mesh.as_mut().map_or(Ok(()), Mesh::heal)
    }
}
