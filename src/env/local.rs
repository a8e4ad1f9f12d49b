//! Brokers as local child processes: the default environment.
//!
//! Each broker runs in its own process group on free loopback ports, with its
//! data and log under `<run dir>/<broker>/`, so a run never touches (or is
//! disturbed by) a system instance. Faults are signals to that group: SIGTERM
//! for a graceful stop, SIGKILL for a crash, SIGSTOP/SIGCONT for a pause.
//! Restarts reuse the same ports and data, as a restarted server would.
//!
//! Nothing may outlive brokerbench: `Drop` kills whatever is still running,
//! and every child also gets `PR_SET_PDEATHSIG`, so that even a SIGKILL of
//! brokerbench itself takes the brokers down. (The death signal follows the
//! *thread* that spawned the child; launches happen on runtime worker threads
//! or the main thread, which live as long as the process, never on the
//! short-lived blocking pool.)

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::binaries::Binary;
use super::proxy::FaultProxy;
use super::{Endpoint, FaultTarget, Placed};
use crate::broker::{self, Launch, Ports, ServerSettings};
use crate::kind::BrokerKind;

const HOST: &str = "127.0.0.1";

/// How long a graceful stop may take before the process is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A broker started and owned by this process.
#[derive(Debug)]
pub struct LocalBroker {
    binary: Binary,
    dir: PathBuf,
    server: ServerSettings,
    endpoint: Endpoint,
    /// The ports it listens on, client port first.
    ports: Ports,
    process: Option<Child>,
    /// A process the broker needs beside it (RabbitMQ: our own epmd on a
    /// private port, since Erlang would otherwise start a daemonised one
    /// that outlives the run).
    helper: Option<Child>,
    paused: bool,
    ready_in: Duration,
    /// Its place in a cluster: this node's index and every node's ports.
    cluster: Option<(usize, std::sync::Arc<[Ports]>)>,
    /// The address it listens on (loopback, or its own in a namespace).
    host: String,
    /// The network namespace it runs in, if not this process's.
    netns: Option<PathBuf>,
}

impl LocalBroker {
    /// Starts `binary` with its data under `run_dir/<broker>/` and waits until
    /// it answers its protocol's handshake.
    pub async fn start(binary: Binary, run_dir: &Path) -> Result<Self> {
        Self::start_with(binary, run_dir, ServerSettings::default()).await
    }

    /// [`start`](Self::start), with settings for the whole server.
    pub async fn start_with(
        binary: Binary,
        run_dir: &Path,
        server: ServerSettings,
    ) -> Result<Self> {
        Self::start_behind(binary, run_dir, server, None).await
    }

    /// [`start_with`](Self::start_with), behind `proxy`: it relays to the
    /// broker before the broker starts, and the broker tells clients to
    /// connect to the proxy where it tells them where to connect (Kafka).
    pub async fn start_behind(
        binary: Binary,
        run_dir: &Path,
        server: ServerSettings,
        proxy: Option<&FaultProxy>,
    ) -> Result<Self> {
        let kind = binary.kind;
        let dir = run_dir.join(kind.as_str());
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let roles = broker::info(kind).extra_ports;
        // A port found free can be taken before the broker binds it (another
        // program picking ports the same way): then pick fresh ones.
        let mut attempts = 0;
        loop {
            let ports = free_ports(1 + roles.len())?;
            let mut broker = LocalBroker {
                endpoint: Endpoint::local(kind, HOST, ports[0])
                    .secured_local(server.credentials.as_deref()),
                ports: Ports {
                    advertised: proxy.map(|p| p.ports()[0]),
                    ..Ports::assign(ports[0], roles, &ports[1..])
                },
                binary: binary.clone(),
                dir: dir.clone(),
                server: server.clone(),
                process: None,
                helper: None,
                paused: false,
                ready_in: Duration::ZERO,
                cluster: None,
                host: HOST.to_string(),
                netns: None,
            };
            if let Some(proxy) = proxy {
                proxy.route(0, (Ipv4Addr::LOCALHOST, ports[0]).into());
            }
            match broker.launch().await {
                Ok(_) => return Ok(broker),
                Err(err) if err.is::<PortInUse>() && attempts < 3 => attempts += 1,
                Err(err) => return Err(err),
            }
        }
    }

    /// Node `index` of a cluster whose nodes listen on `peers`, with its
    /// data under `dir`, in network namespace `netns` if given; not started
    /// yet ([`spawn`](Self::spawn) it).
    pub(crate) fn node(
        binary: Binary,
        dir: PathBuf,
        server: ServerSettings,
        (index, peers): (usize, std::sync::Arc<[Ports]>),
        netns: Option<PathBuf>,
    ) -> Result<Self> {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let ports = peers[index];
        let host = ports.ip().to_string();
        Ok(LocalBroker {
            endpoint: Endpoint::local(binary.kind, &host, ports.client)
                .secured_local(server.credentials.as_deref()),
            host,
            netns,
            ports,
            binary,
            dir,
            server,
            process: None,
            helper: None,
            paused: false,
            ready_in: Duration::ZERO,
            cluster: Some((index, peers)),
        })
    }

    /// The name the broker gives this node (a server name, a node id).
    pub fn node_name(&self) -> String {
        broker::registry(self.kind()).node_name(&self.launch_spec())
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.binary.kind
    }

    /// Where clients reach it.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Implementation and version that runs, e.g. `RabbitMQ 3.10.8`.
    pub fn implementation(&self) -> &str {
        &self.binary.implementation
    }

    /// The broker's data and log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The broker's log (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// Every port this broker listens on, client port first.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.all()
    }

    /// Process ids of the broker and its helper (epmd) that are running now.
    pub fn pids(&self) -> Vec<u32> {
        [&self.process, &self.helper]
            .into_iter()
            .flatten()
            .filter_map(Child::id)
            .collect()
    }

    /// How long the latest start took, from spawn to a successful handshake.
    pub fn ready_in(&self) -> Duration {
        self.ready_in
    }

    /// Whether the broker process is running (paused counts as running).
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the broker again on the same ports with the same data, after a
    /// [`stop`](Self::stop) or [`kill`](Self::kill). Returns the time to ready.
    pub async fn launch(&mut self) -> Result<Duration> {
        let spawned = self.spawn().await?;
        self.await_ready(spawned).await
    }

    /// Starts the process, without waiting for it to be ready (a node of a
    /// cluster may need the others before it answers); give what it
    /// returns to [`await_ready`](Self::await_ready).
    pub(crate) async fn spawn(&mut self) -> Result<Spawned> {
        if self.is_running() {
            bail!("{} is already running", self.kind());
        }
        let launch = self.launch_spec();
        let helper = broker::registry(self.kind()).helper(&launch)?;
        // A port shared with the first node of a cluster is the first node's
        // to open.
        let shared = launch
            .cluster
            .map(|node| node.shared(self.kind()))
            .unwrap_or_default();
        // (In a namespace of its own, nothing else listens there.)
        let ports = if self.netns.is_some() {
            Vec::new()
        } else {
            self.ports()
        };
        for port in ports {
            let in_use = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err();
            let ours = self.helper.is_some() && helper.as_ref().map(|h| h.port) == Some(port);
            if in_use && !ours && !shared.contains(&port) {
                return Err(PortInUse {
                    port,
                    kind: self.kind(),
                }
                .into());
            }
        }
        if let (Some(helper), None) = (helper, &self.helper) {
            self.helper = Some(spawn_helper(helper, &self.host, self.netns.as_deref()).await?);
        }
        let started = Instant::now();
        let log = self.open_log()?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut command = self.command().await?;
        command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_owned(&mut command, self.netns.as_deref())
            .with_context(|| format!("starting {}", self.binary.path.display()))?;
        self.process = Some(child);
        self.paused = false;
        Ok(Spawned { started, log_start })
    }

    /// Waits until a [`spawn`](Self::spawn)ed broker answers its protocol's
    /// handshake; kills it if it does not in time. Returns the time to ready.
    pub(crate) async fn await_ready(&mut self, spawned: Spawned) -> Result<Duration> {
        let Spawned { started, log_start } = spawned;
        let deadline = started + broker::info(self.kind()).ready_deadline;
        let mut admitted = false;
        loop {
            if !self.is_running() {
                bail!(
                    "{} at {} exited during start-up; its log ({}) ends with:\n{}",
                    self.kind(),
                    self.endpoint.url(),
                    self.log_path().display(),
                    self.log_tail(log_start)
                );
            }
            let ready = async {
                if !admitted {
                    broker::registry(self.kind())
                        .admit_users(&self.host, &self.ports, &self.server)
                        .await?;
                    admitted = true;
                }
                broker::handshake(&self.endpoint).await
            };
            let err = match ready.await {
                // Still ours? A stale process could have answered on the port.
                Ok(()) if self.is_running() => break,
                Ok(()) => continue,
                Err(err) => err,
            };
            if Instant::now() >= deadline {
                self.kill().await.ok();
                bail!(
                    "{} at {} was not ready within {:?} (last attempt: {err:#}); its log ({}) ends with:\n{}",
                    self.kind(),
                    self.endpoint.url(),
                    broker::info(self.kind()).ready_deadline,
                    self.log_path().display(),
                    self.log_tail(log_start)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.ready_in = started.elapsed();
        Ok(self.ready_in)
    }

    /// Graceful stop: SIGTERM, then SIGKILL if it has not exited within 30 s.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.process.take() else {
            return Ok(());
        };
        // `Child::id` is gone once the child is reaped; the group is needed after.
        let Some(pgid) = child.id() else {
            return Ok(()); // already reaped
        };
        if std::mem::take(&mut self.paused) {
            signal_pgid(pgid, Signal::SIGCONT);
        }
        signal_pgid(pgid, Signal::SIGTERM);
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_elapsed) => {
                signal_pgid(pgid, Signal::SIGKILL);
                child.wait().await?;
            }
        }
        // The broker's own helpers (erl_child_setup, ...) share its group and
        // may outlive the leader by a moment: take them down too.
        signal_pgid(pgid, Signal::SIGKILL);
        Ok(())
    }

    /// A crash: SIGKILL to the broker's process group, no chance to flush.
    pub async fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.process.take() else {
            return Ok(());
        };
        signal_group(&child, Signal::SIGKILL);
        self.paused = false;
        child.wait().await?;
        Ok(())
    }

    /// Graceful stop, then start on the same ports with the same data.
    pub async fn restart(&mut self) -> Result<Duration> {
        self.stop().await?;
        self.launch().await
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing answers.
    /// Returns once every thread of the process group is seen stopped: a
    /// signal is delivered asynchronously, and a thread still running can
    /// answer a client after `killpg` returns (CI saw nats-server do so).
    pub async fn pause(&mut self) -> Result<()> {
        self.paused = true;
        self.signal_until(Signal::SIGSTOP, true).await
    }

    /// Lets a paused broker run again (SIGCONT), once every thread is seen
    /// running again.
    pub async fn resume(&mut self) -> Result<()> {
        self.paused = false;
        self.signal_until(Signal::SIGCONT, false).await
    }

    /// Sends `signal` to the broker's group until /proc shows every thread
    /// of it `stopped` (or none stopped), within [`SIGNAL_TIMEOUT`].
    async fn signal_until(&self, signal: Signal, stopped: bool) -> Result<()> {
        let child = self.process.as_ref().context("broker is not running")?;
        let pgid = child.id().context("broker is not running")?;
        let deadline = Instant::now() + SIGNAL_TIMEOUT;
        loop {
            signal_pgid(pgid, signal);
            if group_threads(pgid)
                .iter()
                .all(|&s| is_stopped(s) == stopped)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}'s threads not all {} {SIGNAL_TIMEOUT:?} after {signal}",
                    self.kind(),
                    if stopped { "stopped" } else { "running" },
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Stops the broker gracefully and every helper process it needed.
    pub async fn shutdown(mut self) -> Result<()> {
        let stopped = self.stop().await;
        if let Some(mut helper) = self.helper.take() {
            signal_group(&helper, Signal::SIGKILL);
            helper.wait().await?;
        }
        stopped
    }

    fn open_log(&self) -> Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))
    }

    /// The last lines the broker wrote since `from` (a byte offset), for errors.
    fn log_tail(&self, from: u64) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(self.log_path()) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let start = from.max(len.saturating_sub(4096));
            if file.seek(SeekFrom::Start(start)).is_ok() {
                let _ = file.read_to_string(&mut text);
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn launch_spec(&self) -> Launch<'_> {
        Launch {
            program: &self.binary.path,
            dir: &self.dir,
            host: &self.host,
            ports: self.ports,
            server: self.server.clone(),
            cluster: self.cluster.as_ref().map(|(index, peers)| broker::NodeOf {
                index: *index,
                peers,
            }),
        }
    }

    /// Writes the broker's configuration (and on a first start readies its
    /// data), then gives the command that runs it.
    async fn command(&self) -> Result<Command> {
        let broker = broker::registry(self.kind());
        let launch = self.launch_spec();
        broker.prepare(&launch).await.with_context(|| {
            format!(
                "preparing {} in {} to start",
                self.kind(),
                self.dir.display()
            )
        })?;
        broker.command(&launch)
    }
}

/// A broker process just started: when, and where its log of this start begins.
#[derive(Debug)]
pub(crate) struct Spawned {
    started: Instant,
    log_start: u64,
}

/// Starts a broker's helper process (in `netns`, if given) and waits until
/// it listens on `host`.
async fn spawn_helper(helper: broker::Helper, host: &str, netns: Option<&Path>) -> Result<Child> {
    let broker::Helper { mut command, port } = helper;
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let mut child =
        spawn_owned(&mut command, netns).with_context(|| format!("starting {program}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect((host, port)).await.is_err() {
        if child.try_wait()?.is_some() || Instant::now() >= deadline {
            signal_group(&child, Signal::SIGKILL);
            bail!("{program} did not start listening on {host}:{port}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(child)
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        for child in [self.process.take(), self.helper.take()]
            .into_iter()
            .flatten()
        {
            signal_group(&child, Signal::SIGCONT);
            signal_group(&child, Signal::SIGKILL);
            // tokio reaps the exited child in the background.
        }
    }
}

#[async_trait::async_trait]
impl Placed for LocalBroker {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn implementation(&self) -> &str {
        &self.binary.implementation
    }

    async fn shutdown(self: Box<Self>) -> Result<()> {
        LocalBroker::shutdown(*self).await
    }
}

#[async_trait::async_trait]
impl FaultTarget for LocalBroker {
    async fn kill(&mut self) -> Result<()> {
        LocalBroker::kill(self).await
    }

    async fn start(&mut self) -> Result<()> {
        self.launch().await.map(drop)
    }

    async fn restart(&mut self) -> Result<()> {
        LocalBroker::restart(self).await.map(drop)
    }

    async fn pause(&mut self) -> Result<()> {
        LocalBroker::pause(self).await
    }

    async fn resume(&mut self) -> Result<()> {
        LocalBroker::resume(self).await
    }
}

/// Spawns `command` in a process group of its own (so a terminal's Ctrl-C
/// reaches brokerbench only, which then stops brokers in order) that dies
/// with this process.
/// In network namespace `netns`, if given.
fn spawn_owned(command: &mut Command, netns: Option<&Path>) -> std::io::Result<Child> {
    command.process_group(0).kill_on_drop(true);
    // Opened here, entered in the child: the file closes on exec.
    let namespace = netns.map(File::open).transpose()?;
    // SAFETY: prctl and setns are async-signal-safe; nothing is allocated
    // in the closure.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if let Some(namespace) = &namespace {
                nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    command.spawn()
}

fn signal_group(child: &Child, signal: Signal) {
    if let Some(pid) = child.id() {
        signal_pgid(pid, signal);
    }
}

/// How long a pause or resume may take to reach every thread.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(2);

/// The state letter of every live thread of every process in group `pgid`,
/// as /proc shows them.
fn group_threads(pgid: u32) -> Vec<char> {
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_stat(&format!("/proc/{pid}/stat")).is_some_and(|(_, g)| g == pgid))
        .flat_map(|pid| {
            fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
        })
        .filter_map(|task| proc_stat(&task.ok()?.path().join("stat").to_string_lossy()))
        .map(|(state, _)| state)
        .filter(|state| !matches!(state, 'Z' | 'X')) // exited threads answer nothing
        .collect()
}

/// Whether a /proc state letter is a stopped thread.
fn is_stopped(state: char) -> bool {
    matches!(state, 'T' | 't')
}

/// A /proc stat file's state letter and process group.
fn proc_stat(path: &str) -> Option<(char, u32)> {
    let stat = fs::read_to_string(path).ok()?;
    // The command name in parentheses may hold spaces; fields follow the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgid = fields.nth(1)?.parse().ok()?;
    Some((state, pgid))
}

fn signal_pgid(pgid: u32, signal: Signal) {
    // ESRCH (already gone) is fine: the goal state is reached.
    let _ = killpg(Pid::from_raw(pgid as i32), signal);
}

/// A port the broker must listen on is taken by another program.
#[derive(Debug, thiserror::Error)]
#[error(
    "port {port} on {HOST} is already in use, so {kind} cannot start there \
     (a broker left over from an earlier run?)"
)]
pub struct PortInUse {
    port: u16,
    kind: BrokerKind,
}

/// Ports this process has handed out. A port is never handed out twice, even
/// after its broker stopped: a killed broker must find its ports free again
/// when it restarts, while other brokers of the same process are starting.
static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());

/// Where listening ports are picked from when the kernel's ephemeral range
/// cannot be read.
const FALLBACK_EPHEMERAL_START: u16 = 32768;
/// The lowest port picked for a broker.
const LOWEST_PORT: u16 = 10_000;

/// `n` distinct free loopback ports for brokers to listen on.
///
/// They come from below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`): a port there is never taken by
/// an outgoing client connection, so a killed broker can listen on it again.
/// Picks start at a random point, so concurrent processes rarely collide, and
/// each port is checked by binding it.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let end = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(FALLBACK_EPHEMERAL_START);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    if end <= LOWEST_PORT + 1000 {
        // An unusual ephemeral range: let the kernel choose.
        return kernel_chosen_ports(n, &mut handed_out);
    }
    let span = end - LOWEST_PORT;
    let start = rand::random_range(0..span);
    let mut chosen = Vec::with_capacity(n);
    for step in 0..span {
        let port = LOWEST_PORT + (start + step) % span;
        if !handed_out.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            chosen.push(port);
            if chosen.len() == n {
                handed_out.extend(&chosen);
                return Ok(chosen);
            }
        }
    }
    bail!("no {n} free loopback ports between {LOWEST_PORT} and {end}")
}

fn kernel_chosen_ports(n: usize, handed_out: &mut BTreeSet<u16>) -> Result<Vec<u16>> {
    let mut listeners = Vec::new();
    let mut chosen = Vec::with_capacity(n);
    while chosen.len() < n {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding free loopback ports")?;
        let port = listener.local_addr()?.port();
        if handed_out.insert(port) {
            chosen.push(port);
        }
        listeners.push(listener);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(5).unwrap();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 5);
        for port in &ports {
            TcpListener::bind((Ipv4Addr::LOCALHOST, *port)).unwrap();
        }
        let again = free_ports(5).unwrap();
        assert!(
            again.iter().all(|p| !ports.contains(p)),
            "a port was handed out twice: {ports:?} then {again:?}"
        );
        assert!(ports.iter().all(|p| *p >= LOWEST_PORT));
    }
}
