//! The `compose` environment: brokers from `docker-compose.yml`, faults as
//! `docker compose` commands.
//!
//! Our machines have no Docker engine, so this module is checked by tests of
//! the commands it builds; the commands are the documented Docker Compose CLI.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;

use super::{BrokerKind, FaultTarget};

/// The compose service that runs each broker (see `docker-compose.yml`).
pub fn service(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::Rabbitmq => "rabbitmq",
        BrokerKind::Jetstream => "nats",
        BrokerKind::Kafka => "kafka",
    }
}

/// One broker's service in a compose project.
#[derive(Clone, Debug)]
pub struct ComposeBroker {
    /// The compose file.
    pub file: PathBuf,
    /// Which broker.
    pub kind: BrokerKind,
}

/// A fault operation, as `docker compose` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `kill -s KILL`: a crash.
    Kill,
    /// `start`: after a kill.
    Start,
    /// `restart`: graceful stop and start.
    Restart,
    /// `pause`: freeze (cgroup freezer).
    Pause,
    /// `unpause`.
    Resume,
}

impl ComposeBroker {
    /// The argv for `operation` on this broker's service.
    pub fn command(&self, operation: Operation) -> Vec<String> {
        let mut argv: Vec<String> = vec![
            "docker".into(),
            "compose".into(),
            "-f".into(),
            self.file.display().to_string(),
        ];
        let verb: &[&str] = match operation {
            Operation::Kill => &["kill", "-s", "KILL"],
            Operation::Start => &["start"],
            Operation::Restart => &["restart"],
            Operation::Pause => &["pause"],
            Operation::Resume => &["unpause"],
        };
        argv.extend(verb.iter().map(|s| s.to_string()));
        argv.push(service(self.kind).to_string());
        argv
    }

    async fn execute(&self, operation: Operation) -> Result<()> {
        let argv = self.command(operation);
        let output = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("`{}` did not finish within 120 s", argv.join(" ")))?
        .with_context(|| format!("could not run `{}`", argv.join(" ")))?;
        if !output.status.success() {
            bail!(
                "`{}` failed: {}",
                argv.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

#[async_trait]
impl FaultTarget for ComposeBroker {
    async fn kill(&mut self) -> Result<()> {
        self.execute(Operation::Kill).await
    }

    async fn start(&mut self) -> Result<()> {
        self.execute(Operation::Start).await
    }

    async fn restart(&mut self) -> Result<()> {
        self.execute(Operation::Restart).await
    }

    async fn pause(&mut self) -> Result<()> {
        self.execute(Operation::Pause).await
    }

    async fn resume(&mut self) -> Result<()> {
        self.execute(Operation::Resume).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_map_to_docker_compose_commands() {
        let broker = ComposeBroker {
            file: "docker-compose.yml".into(),
            kind: BrokerKind::Jetstream,
        };
        for (operation, verb) in [
            (Operation::Kill, "kill -s KILL"),
            (Operation::Start, "start"),
            (Operation::Restart, "restart"),
            (Operation::Pause, "pause"),
            (Operation::Resume, "unpause"),
        ] {
            let expected = format!("docker compose -f docker-compose.yml {verb} nats");
            assert_eq!(broker.command(operation).join(" "), expected);
        }
    }

    #[test]
    fn every_broker_has_a_service_in_the_compose_file() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
                .unwrap();
        for kind in BrokerKind::ALL {
            assert!(
                text.contains(&format!("\n  {}:\n", service(kind))),
                "{kind}"
            );
        }
    }
}
