//! The version a broker program reports, so that results name what ran.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The version a program prints for `--version`, e.g. `2.9.10` from
/// `nats-server: v2.9.10`.
pub(super) async fn version_flag(program: &Path) -> Result<String> {
    let out = version_output(program, "--version").await?;
    last_version_token(&out).with_context(|| {
        format!(
            "unexpected `{} --version` output: {out:?}",
            program.display()
        )
    })
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
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!(
            "`{} {arg}` failed ({}): {}",
            program.display(),
            output.status,
            text.trim()
        );
    }
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
