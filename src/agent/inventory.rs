//! What `env check` says of the agents: each language's runtime and its
//! version, the client libraries pinned for it, and whether it is installed
//! (and the command that installs it when not).

use std::path::Path;
use std::time::Duration;

use super::agents_dir;
use crate::scenario::Language;

/// One language's agent, as installed here.
pub struct Installed {
    pub language: Language,
    /// The runtime and its version (`Python 3.11.7`), or why it is not known.
    pub runtime: String,
    /// The client libraries pinned for it, with their versions.
    pub libraries: String,
    /// `Ok` when a run can start it; else what is missing.
    pub status: Result<(), String>,
}

/// The command that installs every agent.
pub const INSTALL: &str = "scripts/install-brokers";

/// Every language's agent.
pub async fn inventory() -> Vec<Installed> {
    let dir = agents_dir();
    vec![
        Installed {
            language: Language::Go,
            runtime: version("go", &["version"]).await,
            libraries: go_requires(&dir.join("go/go.mod")),
            status: present(
                &dir.join("go/brokerbench-agent"),
                "agents/go/brokerbench-agent",
            ),
        },
        Installed {
            language: Language::Python,
            runtime: version(
                dir.join("python/.venv/bin/python")
                    .to_str()
                    .unwrap_or("python"),
                &["--version"],
            )
            .await,
            libraries: python_pins(&dir.join("python/requirements.in")),
            status: same(
                &dir.join("python/requirements.txt"),
                &dir.join("python/.venv/.installed"),
                "agents/python/.venv",
            ),
        },
        Installed {
            language: Language::Node,
            runtime: version("node", &["--version"]).await,
            libraries: node_dependencies(&dir.join("node/package.json")),
            status: same(
                &dir.join("node/package-lock.json"),
                &dir.join("node/node_modules/.installed"),
                "agents/node/node_modules",
            ),
        },
    ]
}

/// The first line `program args` prints, within 10 s.
async fn version(program: &str, args: &[&str]) -> String {
    let run = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            text.lines().next().unwrap_or("").trim().to_string()
        }
        Ok(Ok(out)) => format!("{program}: exit {}", out.status),
        Ok(Err(e)) => format!("{program}: {e}"),
        Err(_) => format!("{program}: no answer within 10 s"),
    }
}

fn present(path: &Path, what: &str) -> Result<(), String> {
    match path.exists() {
        true => Ok(()),
        false => Err(format!("{what} is not built")),
    }
}

/// Installed from `lock` when the copy the installer left beside it matches.
fn same(lock: &Path, installed: &Path, what: &str) -> Result<(), String> {
    match (std::fs::read(lock), std::fs::read(installed)) {
        (Ok(a), Ok(b)) if a == b => Ok(()),
        (Err(_), _) => Err(format!("{} is not in this tree", lock.display())),
        (Ok(_), Err(_)) => Err(format!("{what} is not installed")),
        (Ok(_), Ok(_)) => Err(format!("{what} is older than {}", lock.display())),
    }
}

/// `name==version` lines of a requirements file, as `name version`.
fn python_pins(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let pins: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once("=="))
        .map(|(name, version)| format!("{} {}", name.trim(), version.trim()))
        .collect();
    pins.join(", ")
}

/// The direct requirements of a go.mod.
fn go_requires(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut inside = false;
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        match line {
            "require (" => inside = true,
            ")" => inside = false,
            _ if inside && !line.contains("// indirect") => {
                if let Some((module, version)) = line.split_once(' ') {
                    let name = module.rsplit('/').next().unwrap_or(module);
                    found.push(format!("{name} {version}"));
                }
            }
            _ => {}
        }
    }
    found.join(", ")
}

/// The `dependencies` of a package.json.
fn node_dependencies(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return "-".to_string();
    };
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let found: Vec<String> = json["dependencies"]
        .as_object()
        .map(|deps| {
            deps.iter()
                .map(|(name, version)| format!("{name} {}", version.as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    found.join(", ")
}
