//! Finding the broker programs and the versions that will actually run.
//!
//! Results must name what ran (a tansu run is never presented as Apache
//! Kafka), and `env check` must tell a newcomer exactly how to install what is
//! missing. Programs are looked up on `PATH` only, so that hiding one from
//! `PATH` hides it from brokerbench too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::broker::BrokerKind;

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

/// Finds the program for `kind` on `PATH` and reads its version.
pub async fn locate(kind: BrokerKind) -> Result<Binary> {
    let name = kind.info().program;
    let found = which::which(name).map_err(|_| not_on_path(name))?;
    let (path, implementation) = kind.broker().identify(&found).await?;
    Ok(Binary {
        kind,
        path,
        implementation,
    })
}

/// The version a program prints for `--version`, e.g. `2.9.10` from
/// `nats-server: v2.9.10`.
pub(crate) async fn version_flag(program: &Path) -> Result<String> {
    let out = version_output(program, "--version").await?;
    last_version_token(&out).with_context(|| {
        format!(
            "unexpected `{} --version` output: {out:?}",
            program.display()
        )
    })
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
                kind.info().install_hint()
            )
        })?;
        found.push(binary);
    }
    Ok(found)
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
}
