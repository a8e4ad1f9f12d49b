//! The `compose` environment: brokers from `docker-compose.yml`, faults as
//! `docker compose` commands.
//!
//! Our machines have no Docker engine, so this module is checked by tests of
//! the commands it builds; the commands are the documented Docker Compose CLI.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::external::CommandBroker;
use super::{Endpoint, Operation};
use crate::broker;
use crate::kind::BrokerKind;

/// One broker's service in a compose project.
#[derive(Clone, Debug)]
pub(crate) struct ComposeBroker {
    /// The compose file.
    pub file: PathBuf,
    /// Which broker.
    pub kind: BrokerKind,
}

impl ComposeBroker {
    fn compose(&self, verb: &[&str]) -> Vec<String> {
        ["docker", "compose", "-f"]
            .iter()
            .map(|s| s.to_string())
            .chain([self.file.display().to_string()])
            .chain(verb.iter().map(|s| s.to_string()))
            .chain([broker::info(self.kind).compose_service.to_string()])
            .collect()
    }

    /// The argv for `operation` on this broker's service.
    pub(crate) fn command(&self, operation: Operation) -> Vec<String> {
        self.compose(match operation {
            Operation::Kill => &["kill", "-s", "KILL"],
            Operation::Start => &["start"],
            Operation::Restart => &["restart"],
            Operation::Pause => &["pause"],
            Operation::Resume => &["unpause"],
        })
    }

    /// Starts the service and waits for its healthcheck.
    pub(crate) fn up(&self) -> Vec<String> {
        self.compose(&["up", "--detach", "--wait"])
    }

    /// Stops the service (its volume, and so its data, stays).
    pub(crate) fn down(&self) -> Vec<String> {
        self.compose(&["stop"])
    }

    /// The image the service runs, as the compose file names it.
    pub(crate) fn image(&self) -> Result<String> {
        let text = std::fs::read_to_string(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        image_of(&text, broker::info(self.kind).compose_service).with_context(|| {
            format!(
                "{} has no `image:` for service {}",
                self.file.display(),
                broker::info(self.kind).compose_service
            )
        })
    }

    /// Starts the service and returns it as a broker driven by `docker
    /// compose` commands, ready when it answers its protocol.
    pub(crate) async fn place(file: &Path, kind: BrokerKind) -> Result<CommandBroker> {
        let compose = ComposeBroker {
            file: file.to_path_buf(),
            kind,
        };
        let implementation = format!("{} (docker compose)", compose.image()?);
        let commands: BTreeMap<Operation, Vec<String>> = Operation::ALL
            .into_iter()
            .map(|op| (op, compose.command(op)))
            .collect();
        let endpoint = Endpoint::local(kind, "127.0.0.1", broker::info(kind).compose_port);
        let broker =
            CommandBroker::new(endpoint, implementation, commands).with_down(compose.down());
        broker.execute("up", &compose.up()).await.context(
            "the compose environment needs the Docker Compose plugin and a running Docker \
             engine; without them, use --env local (the default)",
        )?;
        broker.wait_ready().await?;
        Ok(broker)
    }
}

/// The `image:` of `service` in a compose file: the first `image:` line
/// indented under the service's own line in `services:`.
fn image_of(text: &str, service: &str) -> Option<String> {
    let mut lines = text.lines().skip_while(|l| l.trim_end() != "services:");
    let header = format!("{service}:");
    let mut lines = lines
        .by_ref()
        .skip_while(|l| l.trim() != header || !l.starts_with(' '));
    let indent = lines.next()?.find(|c: char| c != ' ')?;
    lines
        .take_while(|l| l.trim().is_empty() || l.find(|c: char| c != ' ') > Some(indent))
        .find_map(|l| l.trim().strip_prefix("image:"))
        .map(|image| image.trim().trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> BrokerKind {
        name.parse().unwrap()
    }

    #[test]
    fn faults_map_to_docker_compose_commands() {
        let broker = ComposeBroker {
            file: "docker-compose.yml".into(),
            kind: kind("jetstream"),
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
    fn up_and_down_address_one_service() {
        let broker = ComposeBroker {
            file: "docker-compose.yml".into(),
            kind: kind("kafka"),
        };
        assert_eq!(
            broker.up().join(" "),
            "docker compose -f docker-compose.yml up --detach --wait kafka"
        );
        assert_eq!(
            broker.down().join(" "),
            "docker compose -f docker-compose.yml stop kafka"
        );
    }

    #[test]
    fn the_image_that_runs_is_read_from_the_compose_file() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml");
        let image = |name| {
            ComposeBroker {
                file: file.into(),
                kind: kind(name),
            }
            .image()
            .unwrap()
        };
        assert!(image("rabbitmq").starts_with("rabbitmq:4."));
        assert!(image("jetstream").starts_with("nats:2."));
        assert!(image("kafka").starts_with("apache/kafka:"));
        let text = "services:\n  a:\n    ports: []\n  b:\n    image: \"b:1\"\n";
        assert_eq!(image_of(text, "a"), None);
        assert_eq!(image_of(text, "b").as_deref(), Some("b:1"));
    }
}
