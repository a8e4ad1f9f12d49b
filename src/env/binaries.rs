//! Finding the broker programs and the versions that will actually run.
//!
//! Results must name what ran (the version that answered, never the one
//! hoped for), and `env check` must tell a newcomer exactly how to install what is
//! missing. Programs are looked up on `PATH` only, so that hiding one from
//! `PATH` hides it from brokerbench too.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::broker;
use crate::kind::BrokerKind;

/// A broker program found on this machine.
#[derive(Clone, Debug)]
pub struct Binary {
    /// Which broker it runs.
    pub kind: BrokerKind,
    /// The program to execute. For RabbitMQ this is the server script inside
    /// the versioned release directory, not Debian's `/usr/sbin` wrapper (which
    /// switches to the `rabbitmq` user when run as root).
    pub path: PathBuf,
    /// Implementation and version, as results name it: `RabbitMQ 3.10.8`,
    /// `nats-server 2.15.3`, `Apache Kafka 4.4.0`.
    pub implementation: String,
}

/// Finds the program for `kind` on `PATH` and reads its version.
pub async fn locate(kind: BrokerKind) -> Result<Binary> {
    let name = broker::info(kind).program;
    let found = which::which(name).map_err(|_| not_on_path(name))?;
    let (path, implementation) = broker::registry(kind).identify(&found).await?;
    Ok(Binary {
        kind,
        path,
        implementation,
    })
}

/// "not found on PATH", and where it is if a usual directory that is not on
/// `PATH` has it (Debian puts rabbitmq-server in `/usr/sbin`;
/// `scripts/install-brokers` puts Kafka's launchers and nats-server in the
/// tools directory's `bin/`).
fn not_on_path(name: &str) -> anyhow::Error {
    let tools = broker::tools_bin();
    let elsewhere = ["/usr/sbin", "/usr/local/sbin", "/sbin"]
        .iter()
        .map(PathBuf::from)
        .chain(tools)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file() && which::which(p).is_ok());
    match elsewhere {
        Some(path) => anyhow::anyhow!(
            "{name} not found on PATH, but {} exists: add {} to PATH",
            path.display(),
            path.parent().unwrap_or(Path::new("/")).display()
        ),
        None => anyhow::anyhow!("{name} not found on PATH"),
    }
}

/// Finds the programs for `kinds`; a missing one is an error that names the
/// broker and the command that installs it.
pub async fn locate_all(kinds: &[BrokerKind]) -> Result<Vec<Binary>> {
    let mut found = Vec::new();
    for &kind in kinds {
        let binary = locate(kind).await.with_context(|| {
            format!(
                "{kind} is not installed; install it with: {}",
                broker::info(kind).install_hint()
            )
        })?;
        found.push(binary);
    }
    Ok(found)
}
