//! Consumer groups written in other languages: an agent program per
//! language in `agents/` (docs/cross-language.md) consumes the group with
//! that language's usual client library and writes a receipt per delivery
//! to a pipe. [`AgentConsumer`] turns the receipts into deliveries of the
//! [`Consumer`] seam, so the group's account, latencies and dead letters are
//! kept exactly as for brokerbench's own consumers.

pub mod inventory;
mod receipt;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout};

pub use receipt::{parse, Record, RECEIPT_BYTES};

use crate::driver::{AgentSource, AgentState, Consumer, ErrorKind, Incoming, Settle, CALL_TIMEOUT};
use crate::kind::BrokerKind;
use crate::scenario::{ConsumerGroup, Failures, Language};

/// How long an agent may take to connect and subscribe.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an agent has to close its connection and exit once told to.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines of an agent's stderr kept for its error.
const STDERR_LINES: usize = 20;

/// The run an agent joins.
pub struct AgentRun {
    pub run_id: u64,
    /// The run's epoch, on this process's monotonic clock.
    pub epoch: Instant,
    /// The reconnection backoff's cap.
    pub backoff_max: Duration,
}

/// Where the agents are: `$BROKERBENCH_AGENTS`, else the source tree's `agents/`.
pub fn agents_dir() -> PathBuf {
    std::env::var_os("BROKERBENCH_AGENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/agents")))
}

/// The client library `language`'s agent uses on `broker`.
pub fn client(language: Language, broker: BrokerKind) -> &'static str {
    use BrokerKind::*;
    match (language, broker) {
        (Language::Rust, Rabbitmq) => "lapin",
        (Language::Rust, Jetstream) => "async-nats",
        (Language::Rust, Kafka) => "rdkafka",
        (Language::Go, Rabbitmq) => "amqp091-go",
        (Language::Go, Jetstream) => "nats.go jetstream",
        (Language::Go, Kafka) => "segmentio/kafka-go",
        (Language::Python, Rabbitmq) => "aio-pika",
        (Language::Python, Jetstream) => "nats-py",
        (Language::Python, Kafka) => "confluent-kafka",
        (Language::Node, Rabbitmq) => "amqplib",
        (Language::Node, Jetstream) => "@nats-io/jetstream",
        (Language::Node, Kafka) => "kafkajs",
    }
}

/// The program that runs `language`'s agent, with its arguments before the
/// configuration, and the command that installs it.
fn program(language: Language) -> Option<(PathBuf, Vec<PathBuf>, &'static str)> {
    let dir = agents_dir();
    match language {
        Language::Rust => None,
        Language::Python => Some((
            dir.join("python/.venv/bin/python"),
            vec![dir.join("python/agent.py")],
            "make agents",
        )),
        Language::Go => Some((dir.join("go/brokerbench-agent"), vec![], "make agents")),
        Language::Node => Some((
            PathBuf::from("node"),
            vec![dir.join("node/agent.js")],
            "make agents",
        )),
    }
}

/// The run's epoch as a raw `CLOCK_MONOTONIC` reading, which `Instant`
/// reads too on Linux: what the agents measure their instants from.
fn epoch_ns(epoch: Instant) -> Result<u64> {
    let now = Instant::now();
    let raw = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .context("reading CLOCK_MONOTONIC")?;
    let raw_ns = raw.tv_sec() as u64 * 1_000_000_000 + raw.tv_nsec() as u64;
    Ok(raw_ns.saturating_sub(now.saturating_duration_since(epoch).as_nanos() as u64))
}

/// The agent's configuration, as docs/cross-language.md gives it.
fn config(
    broker: BrokerKind,
    group: &ConsumerGroup,
    source: &AgentSource,
    run: &AgentRun,
) -> Result<serde_json::Value> {
    let failures = group.failures.as_ref().map(|f: &Failures| {
        json!({
            // As text: above 2^53, which a JavaScript number cannot hold.
            "seed": Failures::seed(&group.group).to_string(),
            "poison": f.poison,
            "transient": f.transient,
            "transient_attempts": f.transient_attempts,
        })
    });
    Ok(json!({
        "broker": broker.as_str(),
        "url": source.url,
        "group": group.group,
        "run": run.run_id.to_string(),
        "epoch_ns": epoch_ns(run.epoch)?,
        "concurrency": group.concurrency,
        "processing_ns": group.processing_time.as_nanos() as u64,
        "backoff_max_ms": run.backoff_max.as_millis() as u64,
        "failures": failures,
        "source": source.source,
    }))
}

/// The environment variable an agent reads its configuration (JSON) from.
pub const CONFIG_VARIABLE: &str = "BROKERBENCH_AGENT_CONFIG";

/// Starts `group`'s agent on `source` and waits until it has subscribed.
pub async fn start(
    group: &ConsumerGroup,
    source: AgentSource,
    run: &AgentRun,
) -> Result<Box<dyn Consumer>> {
    let language = group.language;
    let Some((program, args, install)) = program(language) else {
        bail!(
            "group {}: brokerbench's own consumer is not an agent",
            group.group
        );
    };
    let config = config(source.broker, group, &source, run)?;
    let mut command = tokio::process::Command::new(&program);
    // It dies with brokerbench, even with a brokerbench killed by SIGKILL,
    // which cannot stop it. SAFETY: prctl is async-signal-safe; nothing
    // is allocated in the closure.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    // The configuration goes in the environment, never on the command line:
    // its URL may carry a password, and every user can read
    // /proc/PID/cmdline. The agent removes it from its environment at once.
    let mut child = command
        .args(&args)
        .env(CONFIG_VARIABLE, config.to_string())
        .current_dir(
            args.first()
                .and_then(|a| a.parent())
                .unwrap_or(&agents_dir()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "group {}: starting the {} agent ({}); `{install}` installs it",
                group.group,
                language.as_str(),
                program.display()
            )
        })?;
    let stderr = keep_tail(&mut child);
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut agent = AgentConsumer {
        pid: child.id().unwrap_or(0),
        child,
        stdout: BufReader::with_capacity(64 * 1024, stdout),
        pending: [0; RECEIPT_BYTES],
        filled: 0,
        stderr,
        name: format!("the {} agent of group {}", language.as_str(), group.group),
        client: client(language, source.broker),
        ended: false,
        failure: None,
    };
    match tokio::time::timeout(READY_TIMEOUT, agent.read()).await {
        Ok(Ok(Record::Ready)) => Ok(Box::new(agent)),
        Ok(Ok(_)) => Err(agent.fail("wrote a delivery before it was ready").await),
        Ok(Err(why)) => Err(agent.fail(&why).await),
        Err(_) => Err(agent
            .fail(&format!(
                "was not ready within {}",
                humantime::format_duration(READY_TIMEOUT)
            ))
            .await),
    }
}

/// Reads the agent's stderr in a task of its own, keeping the last lines.
fn keep_tail(child: &mut Child) -> Arc<Mutex<VecDeque<String>>> {
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    if let Some(stderr) = child.stderr.take() {
        let kept = Arc::clone(&tail);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
                if kept.len() == STDERR_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
    }
    tail
}

/// One group's agent, read as a [`Consumer`].
pub struct AgentConsumer {
    child: Child,
    pid: u32,
    stdout: BufReader<ChildStdout>,
    /// The receipt being read, and how much of it is in.
    pending: [u8; RECEIPT_BYTES],
    filled: usize,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// "the python agent of group risk", for errors.
    name: String,
    client: &'static str,
    /// It exited, or wrote what is not a receipt: nothing more comes.
    ended: bool,
    /// Why it ended, with its stderr tail.
    failure: Option<String>,
}

impl AgentConsumer {
    /// The next record, or why there is none. Cancel-safe: the bytes of a
    /// receipt read so far stay in `pending` for the next call.
    async fn read(&mut self) -> Result<Record, String> {
        while self.filled < RECEIPT_BYTES {
            match self.stdout.read(&mut self.pending[self.filled..]).await {
                Ok(0) if self.filled == 0 => {
                    return Err("exited before it was told to stop".to_string())
                }
                Ok(0) => return Err("exited in the middle of a receipt".to_string()),
                Ok(n) => self.filled += n,
                Err(e) => return Err(format!("could not be read: {e}")),
            }
        }
        self.filled = 0;
        parse(&self.pending)
    }

    /// Stops the agent, and the error that says why, with its stderr tail.
    async fn fail(mut self, why: &str) -> anyhow::Error {
        self.stop().await;
        anyhow::anyhow!("{} {why}{}", self.name, self.stderr_tail())
    }

    fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.is_empty() {
            return String::new();
        }
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("; its stderr ends:\n  {}", lines.join("\n  "))
    }

    /// The agent's CPU time so far (user and system), from `/proc`.
    pub fn cpu(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // After the command name's closing parenthesis: fields 3 onwards.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // USER_HZ, 100 on Linux whatever the kernel's own tick.
        Some(Duration::from_millis(ticks * 10))
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
    async fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

#[async_trait]
impl Consumer for AgentConsumer {
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        if self.ended {
            return None;
        }
        match self.read().await {
            Ok(Record::Delivery {
                receipt,
                redelivered,
            }) => Some(Ok(Incoming {
                payload: Bytes::new(),
                redelivered,
                // The agent settled it already; the group's loop holds what
                // it did against what the ledger decides.
                settle: Box::new(move |how: Settle| {
                    Box::pin(async move {
                        match how == receipt.settled {
                            true => Ok(()),
                            false => Err(ErrorKind::Agent),
                        }
                    })
                }),
                receipt: Some(receipt),
            })),
            Ok(Record::Ready) => {
                self.ended = true;
                self.failure = Some(format!("{} wrote a second ready receipt", self.name));
                Some(Err(ErrorKind::Agent))
            }
            Err(why) => {
                self.ended = true;
                self.failure = Some(format!("{} {why}{}", self.name, self.stderr_tail()));
                Some(Err(ErrorKind::Agent))
            }
        }
    }

    fn agent(&self) -> Option<AgentState> {
        Some(AgentState {
            client: self.client.to_string(),
            cpu: self.cpu(),
            failure: self.failure.clone(),
        })
    }

    async fn close(mut self: Box<Self>) {
        let _ = tokio::time::timeout(CALL_TIMEOUT, self.stop()).await;
    }
}
