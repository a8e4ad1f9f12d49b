//! Network namespaces for the nodes of a local cluster, so that a partition
//! can cut nodes off from each other (`action = "partition"`).
//!
//! Each node runs in a namespace of its own with one address, in a range
//! used only inside these namespaces (`10.213.X.N`). Every two nodes are
//! joined by a veth pair of their own, and every node to this machine's own
//! namespace by another (where the clients, the fault proxy and the probes
//! are), with a host route per address: no bridge, no forwarding, no
//! firewall (our machines have neither `iptables` nor `sch_netem`).
//!
//! A partition isolates a node from the others and then heals. The link
//! stays up and the routes stay; each side's neighbour entry for the other
//! is replaced by an address nobody has, so packets between them vanish
//! without an error, as a failed switch drops them (Jepsen drops them with
//! iptables). Connections stay open; what was sent arrives once the
//! partition heals, if neither side gave up first. The node still reaches
//! the clients, as a node cut off from its peers by a partition in the
//! cluster's own network would.
//!
//! Namespaces are named `bb-<pid>-<node>`; they outlive a process killed
//! with SIGKILL, so each new mesh first deletes those of processes that are
//! gone. Needs root and `ip` (iproute2).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The neighbour address a partition points peers at: locally administered,
/// nobody's.
const NOBODY: &str = "02:00:00:00:00:01";

/// The namespaces, links and addresses of one local cluster's nodes.
#[derive(Debug)]
pub struct Mesh {
    /// The namespaces, in node order.
    names: Vec<String>,
    /// The third byte of every address of this mesh.
    subnet: u8,
    /// Node (from 0) isolated now, if any.
    isolated: Option<usize>,
}

impl Mesh {
    /// Namespaces for `nodes` nodes, joined to each other and to this
    /// machine's namespace. Refused without root or `ip`.
    pub fn create(nodes: usize) -> Result<Self> {
        available()?;
        remove_stale();
        let subnet = free_subnet()?;
        let pid = std::process::id();
        let mut mesh = Mesh {
            names: (1..=nodes).map(|n| format!("bb-{pid}-{n}")).collect(),
            subnet,
            isolated: None,
        };
        mesh.build().with_context(|| {
            format!("making network namespaces for {nodes} nodes (ip netns, veth)")
        })?;
        Ok(mesh)
    }

    fn build(&mut self) -> Result<()> {
        let n = self.names.len();
        for (k, name) in self.names.iter().enumerate() {
            ip(&["netns", "add", name])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
            // To and from this machine's namespace.
            let outside = self.outside_link(k);
            let node = self.host(k).to_string();
            let here = self.gateway(k).to_string();
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", "r0", "netns", name,
            ])?;
            ip(&["addr", "add", &format!("{here}/32"), "dev", &outside])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{node}/32"),
                "dev",
                "lo",
            ])?;
            ip(&["-n", name, "link", "set", "r0", "up"])?;
            ip(&[
                "route",
                "add",
                &format!("{node}/32"),
                "dev",
                &outside,
                "src",
                &here,
            ])?;
            ip(&[
                "-n",
                name,
                "route",
                "add",
                &format!("{here}/32"),
                "dev",
                "r0",
                "src",
                &node,
            ])?;
        }
        // One link between every two nodes: `p<j>` in node i's namespace.
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (&self.names[i], &self.names[j]);
                let (to_j, to_i) = (format!("p{}", j + 1), format!("p{}", i + 1));
                ip(&[
                    "link", "add", &to_j, "netns", a, "type", "veth", "peer", "name", &to_i,
                    "netns", b,
                ])?;
                for (ns, dev, peer, own) in [(a, &to_j, j, i), (b, &to_i, i, j)] {
                    ip(&["-n", ns, "link", "set", dev, "up"])?;
                    let (peer, own) = (self.host(peer).to_string(), self.host(own).to_string());
                    ip(&[
                        "-n",
                        ns,
                        "route",
                        "add",
                        &format!("{peer}/32"),
                        "dev",
                        dev,
                        "src",
                        &own,
                    ])?;
                }
            }
        }
        Ok(())
    }

    /// Node `k`'s (from 0) address, where it listens.
    pub fn host(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, k as u8 + 1)
    }

    /// This machine's address on its link to node `k`.
    fn gateway(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 214, self.subnet, k as u8 + 1)
    }

    /// The name of this machine's end of the link to node `k`: unique
    /// while the mesh's addresses are.
    fn outside_link(&self, k: usize) -> String {
        format!("bb{}x{}", self.subnet, k + 1)
    }

    /// Node `k`'s namespace, as a process enters it (`setns`).
    pub fn namespace(&self, k: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.names[k])
    }

    /// Cuts node `k` off from every other node, both ways; the clients
    /// still reach it.
    pub fn isolate(&mut self, k: usize) -> Result<()> {
        for j in (0..self.names.len()).filter(|&j| j != k) {
            self.neighbour(k, j, Some(NOBODY))?;
            self.neighbour(j, k, Some(NOBODY))?;
        }
        self.isolated = Some(k);
        Ok(())
    }

    /// Ends a partition: every node reaches every other again.
    pub fn heal(&mut self) -> Result<()> {
        if let Some(k) = self.isolated.take() {
            for j in (0..self.names.len()).filter(|&j| j != k) {
                self.neighbour(k, j, None)?;
                self.neighbour(j, k, None)?;
            }
        }
        Ok(())
    }

    /// In node `from`'s namespace, its neighbour entry for node `to`: the
    /// address nobody has, or (`None`) learnt again.
    fn neighbour(&self, from: usize, to: usize, lladdr: Option<&str>) -> Result<()> {
        let (ns, dev, addr) = (
            &self.names[from],
            format!("p{}", to + 1),
            self.host(to).to_string(),
        );
        match lladdr {
            Some(mac) => ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                &addr,
                "lladdr",
                mac,
                "dev",
                &dev,
                "nud",
                "permanent",
            ]),
            // Gone already is fine: it is learnt again either way.
            None => ip(&["-n", ns, "neigh", "del", &addr, "dev", &dev]).or(Ok(())),
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it and their peers,
        // but not always at once: this machine's ends go first, by name.
        for k in 0..self.names.len() {
            let _ = ip(&["link", "del", &self.outside_link(k)]);
        }
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Whether namespaces can be made here: root, and `ip`.
pub fn available() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("a partition runs each node in a network namespace of its own, which needs root");
    }
    ip(&["netns", "list"]).context(
        "a partition needs `ip` (iproute2) to make network namespaces; \
         scripts/install-brokers installs it",
    )
}

/// Deletes the namespaces of brokerbench processes that are gone.
fn remove_stale() {
    let Ok(out) = Command::new(ip_program()).args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let pid = name
            .strip_prefix("bb-")
            .and_then(|rest| rest.split('-').next());
        if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) {
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
}

/// A third byte for this mesh's addresses that no route here uses yet.
fn free_subnet() -> Result<u8> {
    let routes = Command::new(ip_program())
        .args(["route", "show"])
        .output()?;
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    let start: u8 = rand::random();
    (0..=255u8)
        .map(|i| start.wrapping_add(i))
        .find(|x| !routes.contains(&format!("10.213.{x}.")))
        .context("every 10.213.X.0/24 is in use")
}

/// `ip`, from PATH or where Debian puts it (/usr/sbin is not on every PATH).
fn ip_program() -> PathBuf {
    which::which("ip")
        .ok()
        .or_else(|| {
            ["/usr/sbin/ip", "/sbin/ip"]
                .map(PathBuf::from)
                .into_iter()
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("ip"))
}

/// Runs `ip ARGS`; its stderr is the error.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new(ip_program())
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
