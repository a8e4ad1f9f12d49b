//! Finding the broker programs and the versions that will actually run.
//!
//! Results must name what ran (a tansu run is never presented as Apache
//! Kafka), and `env check` must tell a newcomer exactly how to install what is
//! missing. Programs are looked up on `PATH` only, so that hiding one from
//! `PATH` hides it from brokerbench too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::BrokerKind;

/// The tansu release brokerbench is tested with (see `scripts/install-brokers`).
pub const TANSU_VERSION: &str = "0.6.0";

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
    /// `nats-server 2.9.10`, `tansu 0.6.0 (Kafka protocol)`.
    pub implementation: String,
}

/// The program looked up on `PATH` for a broker.
pub fn program_name(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::Rabbitmq => "rabbitmq-server",
        BrokerKind::Jetstream => "nats-server",
        BrokerKind::Kafka => "tansu",
    }
}

/// The exact command that installs a missing broker on Debian or Ubuntu.
pub fn install_hint(kind: BrokerKind) -> String {
    match kind {
        BrokerKind::Rabbitmq => {
            "sudo apt-get update && sudo apt-get install -y rabbitmq-server".to_string()
        }
        BrokerKind::Jetstream => {
            "sudo apt-get update && sudo apt-get install -y nats-server".to_string()
        }
        BrokerKind::Kafka => {
            format!("cargo install --locked tansu --version {TANSU_VERSION} --features libsql")
        }
    }
}

/// Finds the program for `kind` on `PATH` and reads its version.
pub async fn locate(kind: BrokerKind) -> Result<Binary> {
    let name = program_name(kind);
    let found = which::which(name).map_err(|_| not_on_path(name))?;
    match kind {
        BrokerKind::Rabbitmq => locate_rabbitmq(&found),
        BrokerKind::Jetstream | BrokerKind::Kafka => {
            let out = version_output(&found, "--version").await?;
            let version = last_version_token(&out)
                .with_context(|| format!("unexpected `{name} --version` output: {out:?}"))?;
            let implementation = match kind {
                BrokerKind::Jetstream => format!("nats-server {version}"),
                _ => format!("tansu {version} (Kafka protocol)"),
            };
            Ok(Binary {
                kind,
                path: found,
                implementation,
            })
        }
    }
}

/// "not found on PATH", and where it is if a usual system directory that is
/// not on `PATH` has it (Debian puts both servers in `/usr/sbin`).
fn not_on_path(name: &str) -> anyhow::Error {
    let elsewhere = ["/usr/sbin", "/usr/local/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
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
                install_hint(kind)
            )
        })?;
        found.push(binary);
    }
    Ok(found)
}

/// RabbitMQ's release directory is named `rabbitmq_server-X.Y.Z`; that is both
/// where the real server script lives and the version that runs. Debian puts
/// a wrapper in `/usr/sbin` and the releases under `/usr/lib/rabbitmq/lib`.
fn locate_rabbitmq(found: &Path) -> Result<Binary> {
    let canonical = found
        .canonicalize()
        .with_context(|| format!("resolving {}", found.display()))?;
    let script = if release_version(&canonical).is_some() {
        canonical
    } else {
        // Debian: /usr/lib/rabbitmq/bin/rabbitmq-script-wrapper -> ../lib/rabbitmq_server-*/sbin
        let lib = canonical
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("lib"))
            .context("unexpected rabbitmq-server location")?;
        newest_release_script(&lib).with_context(|| {
            format!(
                "{} is a wrapper, and no rabbitmq_server-*/sbin/rabbitmq-server was found in {}",
                found.display(),
                lib.display()
            )
        })?
    };
    let version = release_version(&script).context("no version in the RabbitMQ release path")?;
    Ok(Binary {
        kind: BrokerKind::Rabbitmq,
        implementation: format!("RabbitMQ {version}"),
        path: script,
    })
}

/// `.../rabbitmq_server-3.10.8/sbin/rabbitmq-server` -> `3.10.8`.
fn release_version(script: &Path) -> Option<String> {
    let release = script.parent()?.parent()?.file_name()?.to_str()?;
    let version = release.strip_prefix("rabbitmq_server-")?;
    version
        .chars()
        .next()?
        .is_ascii_digit()
        .then(|| version.to_string())
}

fn newest_release_script(lib: &Path) -> Option<PathBuf> {
    let mut scripts: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|entry| {
            let script = entry.ok()?.path().join("sbin").join("rabbitmq-server");
            let version = release_version(&script)?;
            let key = version.split('.').map(|p| p.parse().unwrap_or(0)).collect();
            script.is_file().then_some((key, script))
        })
        .collect();
    scripts.sort();
    scripts.pop().map(|(_, script)| script)
}

async fn version_output(program: &Path, arg: &str) -> Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(program)
            .arg(arg)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("`{} {arg}` did not answer within 10 s", program.display()))?
    .with_context(|| format!("could not run `{} {arg}`", program.display()))?;
    if !output.status.success() {
        bail!("`{} {arg}` failed: {}", program.display(), output.status);
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(text.trim().to_string())
}

/// The last token that looks like a version (`v2.9.10`, `0.6.0`), without the `v`.
fn last_version_token(text: &str) -> Option<String> {
    text.rsplit(|c: char| c.is_whitespace() || c == ':')
        .map(|t| t.trim_start_matches('v'))
        .find(|t| t.contains('.') && t.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tokens_from_real_outputs() {
        assert_eq!(
            last_version_token("nats-server: v2.9.10").as_deref(),
            Some("2.9.10")
        );
        assert_eq!(last_version_token("tansu 0.6.0").as_deref(), Some("0.6.0"));
        assert_eq!(last_version_token("no version here"), None);
    }

    #[test]
    fn rabbitmq_version_from_release_dir() {
        let p = Path::new("/usr/lib/rabbitmq/lib/rabbitmq_server-3.10.8/sbin/rabbitmq-server");
        assert_eq!(release_version(p).as_deref(), Some("3.10.8"));
        assert_eq!(
            release_version(Path::new("/usr/sbin/rabbitmq-server")),
            None
        );
    }

    #[test]
    fn newest_release_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["3.9.29", "3.10.8", "3.10.10"] {
            let sbin = dir.path().join(format!("rabbitmq_server-{v}/sbin"));
            std::fs::create_dir_all(&sbin).unwrap();
            std::fs::write(sbin.join("rabbitmq-server"), "").unwrap();
        }
        let script = newest_release_script(dir.path()).unwrap();
        assert_eq!(release_version(&script).as_deref(), Some("3.10.10"));
    }

    #[test]
    fn every_broker_has_an_install_command() {
        for kind in BrokerKind::ALL {
            assert!(install_hint(kind).contains("install"), "{kind}");
        }
        assert!(install_hint(BrokerKind::Kafka).contains("--features libsql"));
    }
}
