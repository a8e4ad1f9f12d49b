//! TLS and authentication against real brokers, and a planted secret that
//! must show nowhere: not in brokerbench's output or results, not on any
//! child process's command line, not in the broker's logs, configuration
//! or data.

use crate::util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PLANTED: &str = "planted-secret-b7d1c09e";

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(path);
            }
        }
    }
    found
}

/// The first file under `dir` whose name ends with `suffix`.
fn find(dir: &Path, suffix: &str) -> Option<PathBuf> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                return Some(path);
            }
        }
    }
    None
}

/// A run against the secured broker through a targets file: refused with
/// exit 2, and what it said.
fn refused_external(dir: &Path, port: u16, tls: &str, password_env: (&str, &str)) -> String {
    let scenario = dir.join("external.toml");
    std::fs::write(
        &scenario,
        "name = \"x\"\nbrokers = [\"rabbitmq\"]\n[load]\nrate = 10\nduration = \"2s\"\n\
         [[consumers]]\ngroup = \"g\"\n",
    )
    .unwrap();
    let targets = dir.join("targets.toml");
    std::fs::write(
        &targets,
        format!(
            "[rabbitmq]\nurl = \"amqps://127.0.0.1:{port}/%2f\"\nready_timeout = \"5s\"\n\
             {tls}[rabbitmq.auth]\nuser = \"brokerbench\"\npassword_env = \"{}\"\n",
            password_env.0
        ),
    )
    .unwrap();
    let out = util::run_command(&[scenario.to_str().unwrap()], dir)
        .args(["--env", "external", "--targets", targets.to_str().unwrap()])
        .env(password_env.0, password_env.1)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{said}");
    println!("refused as it should be:\n{said}");
    said
}

#[test]
fn rabbitmq_over_tls_as_a_user_and_the_secret_shows_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tmp");
    std::fs::create_dir_all(&data).unwrap();
    let (scenario_dir, scenario) = util::scenario_file(
        "name = \"secured\"\nbrokers = [\"rabbitmq\"]\n[load]\nrate = 200\nduration = \"12s\"\n\
         [[consumers]]\ngroup = \"a\"\n[security]\ntls = true\nauth = true\n",
    );
    let log = dir.path().join("run.log");
    let mut child = util::run_command(&[scenario.to_str().unwrap(), "--json"], dir.path())
        .env("TMPDIR", &data)
        .env("BROKERBENCH_LOCAL_PASSWORD", PLANTED)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // While it runs: the node listens with TLS only, the user logged in, and
    // no process brokerbench started carries the secret on its command line.
    let started = Instant::now();
    let node_log = loop {
        let node_log = find(&data, "@localhost.log")
            .map(|p| (std::fs::read_to_string(&p).unwrap_or_default(), p));
        if let Some((text, path)) = node_log {
            if text.contains("user 'brokerbench' authenticated") {
                break (text, path);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(90) && child.try_wait().unwrap().is_none(),
            "the secured run never logged in"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (text, _) = &node_log;
    assert!(
        text.contains("started TLS (SSL) listener on 127.0.0.1:"),
        "{text}"
    );
    assert!(!text.contains("started TCP listener"), "{text}");
    let port: u16 = text
        .split("started TLS (SSL) listener on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    for process in util::descendants(child.id()) {
        assert!(!process.command.contains(PLANTED), "{process:?}");
    }
    let leaked = files_containing(&data, PLANTED);
    assert!(leaked.is_empty(), "the secret is in {leaked:?}");

    // The same broker through a targets file: a wrong password, and a CA
    // that is not the one that signed the broker's certificate (the
    // system's roots), each a clear error and exit 2.
    let ca = find(&data, "tls/ca.pem").unwrap();
    let trusted = format!("[rabbitmq.tls]\nca = \"{}\"\n", ca.display());
    let said = refused_external(
        scenario_dir.path(),
        port,
        &trusted,
        ("BROKERBENCH_TEST_PW", "not-the-password"),
    );
    assert!(
        said.contains("ACCESS_REFUSED") || said.contains("access refused"),
        "{said}"
    );
    assert!(!said.contains("not-the-password"), "{said}");
    let said = refused_external(
        scenario_dir.path(),
        port,
        "[rabbitmq.tls]\n",
        ("BROKERBENCH_TEST_PW", PLANTED),
    );
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    assert!(!said.contains(PLANTED), "{said}");

    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains(PLANTED) && !stderr.contains(PLANTED));
    let results: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    util::validate_results(&results);
    assert_eq!(results["scenario"]["security"]["tls"], true, "{results:#}");
    let broker = &results["brokers"][0];
    let group = &broker["groups"][0];
    assert_eq!(group["lost"], 0, "{broker:#}");
    assert!(group["delivered"].as_u64().unwrap() > 0, "{broker:#}");
    let leaked = files_containing(dir.path(), PLANTED);
    assert!(leaked.is_empty(), "the secret is in {leaked:?}");
}
