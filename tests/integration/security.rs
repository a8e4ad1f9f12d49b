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

/// A run against the secured broker `kind` at `url` through a targets
/// file whose `[KIND.tls]` and `[KIND.auth]` tables follow the URL:
/// refused with exit 2, and what it said.
fn refused_external(dir: &Path, kind: &str, url: &str, tables: &str, env: (&str, &str)) -> String {
    let scenario = dir.join("external.toml");
    std::fs::write(
        &scenario,
        format!(
            "name = \"x\"\nbrokers = [\"{kind}\"]\n[load]\nrate = 10\nduration = \"2s\"\n\
             [[consumers]]\ngroup = \"g\"\n"
        ),
    )
    .unwrap();
    let targets = dir.join("targets.toml");
    std::fs::write(
        &targets,
        format!("[{kind}]\nurl = \"{url}\"\nready_timeout = \"5s\"\n{tables}"),
    )
    .unwrap();
    let out = util::run_command(&[scenario.to_str().unwrap()], dir)
        .args(["--env", "external", "--targets", targets.to_str().unwrap()])
        .env(env.0, env.1)
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

/// The user tables of a targets file for RabbitMQ's or Kafka's user
/// `brokerbench`, its password in `BROKERBENCH_TEST_PW`.
fn password_auth(kind: &str, mechanism: &str) -> String {
    format!(
        "[{kind}.auth]\nmechanism = \"{mechanism}\"\nuser = \"brokerbench\"\n\
         password_env = \"BROKERBENCH_TEST_PW\"\n"
    )
}

/// Waits until `file` (found under `dir` by its name's end) holds `text`,
/// while `child` runs; its content.
fn wait_for(dir: &Path, file: &str, text: &str, child: &mut std::process::Child) -> String {
    let started = Instant::now();
    loop {
        if let Some(path) = find(dir, file) {
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            if content.contains(text) {
                return content;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120) && child.try_wait().unwrap().is_none(),
            "{file} never said {text:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// No process under `root` carries `secret` on its command line, and no
/// file under `dir` holds it but `except`.
fn nowhere_but(root: u32, dir: &Path, secret: &str, except: Option<&Path>) {
    for process in util::descendants(root) {
        assert!(!process.command.contains(secret), "{process:?}");
    }
    let leaked: Vec<_> = files_containing(dir, secret)
        .into_iter()
        .filter(|p| Some(p.as_path()) != except)
        .collect();
    assert!(leaked.is_empty(), "the secret is in {leaked:?}");
}

/// A brokerbench run a test started, killed if the test ends before it
/// (a failed assertion), so that it never outlives the test: its brokers
/// die with it.
struct Started(Option<std::process::Child>);

impl std::ops::Deref for Started {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("running")
    }
}

impl std::ops::DerefMut for Started {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The finished run of `child`: it passed, said no secret, lost nothing on
/// any broker, and says that TLS was on.
fn check_finished(mut child: Started, log: &Path, secrets: &[&str], brokers: usize) {
    let out = child.0.take().expect("running").wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = std::fs::read_to_string(log).unwrap();
    assert!(out.status.success(), "{stdout}{stderr}");
    for secret in secrets {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }
    let results: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    util::validate_results(&results);
    assert_eq!(results["scenario"]["security"]["tls"], true, "{results:#}");
    assert_eq!(results["brokers"].as_array().unwrap().len(), brokers);
    for broker in results["brokers"].as_array().unwrap() {
        let group = &broker["groups"][0];
        assert_eq!(group["lost"], 0, "{broker:#}");
        assert!(group["delivered"].as_u64().unwrap() > 0, "{broker:#}");
    }
}

/// A run of 12 s at 200 msg/s per broker on `brokers` (TOML list items)
/// with `[security] tls = true, auth = true` and the planted password,
/// started: its directory, the data directory it makes its brokers' under
/// (its `TMPDIR`), a directory for other scenarios, its stdout, and it.
fn start_secured(
    brokers: &str,
) -> (
    tempfile::TempDir,
    PathBuf,
    tempfile::TempDir,
    PathBuf,
    Started,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tmp");
    std::fs::create_dir_all(&data).unwrap();
    let (scenario_dir, scenario) = util::scenario_file(&format!(
        "name = \"secured\"\nbrokers = [{brokers}]\n[load]\nrate = 200\nduration = \"12s\"\n\
         [[consumers]]\ngroup = \"a\"\n[security]\ntls = true\nauth = true\n"
    ));
    let log = dir.path().join("run.log");
    let child = util::run_command(&[scenario.to_str().unwrap(), "--json"], dir.path())
        .env("TMPDIR", &data)
        .env("BROKERBENCH_LOCAL_PASSWORD", PLANTED)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (dir, data, scenario_dir, log, Started(Some(child)))
}

#[test]
fn rabbitmq_over_tls_as_a_user_and_the_secret_shows_nowhere() {
    let (dir, data, scenario_dir, log, mut child) = start_secured("\"rabbitmq\"");

    // While it runs: the node listens with TLS only, the user logged in, and
    // no process brokerbench started carries the secret on its command line.
    let text = wait_for(
        &data,
        "@localhost.log",
        "user 'brokerbench' authenticated",
        &mut child,
    );
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
    nowhere_but(child.id(), &data, PLANTED, None);

    // The same broker through a targets file: a wrong password, and a CA
    // that is not the one that signed the broker's certificate (the
    // system's roots), each a clear error and exit 2.
    let ca = find(&data, "tls/ca.pem").unwrap();
    let url = format!("amqps://127.0.0.1:{port}/%2f");
    let auth = password_auth("rabbitmq", "PLAIN");
    let trusted = format!("[rabbitmq.tls]\nca = \"{}\"\n{auth}", ca.display());
    let said = refused_external(
        scenario_dir.path(),
        "rabbitmq",
        &url,
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
        "rabbitmq",
        &url,
        &format!("[rabbitmq.tls]\n{auth}"),
        ("BROKERBENCH_TEST_PW", PLANTED),
    );
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    assert!(!said.contains(PLANTED), "{said}");

    check_finished(child, &log, &[PLANTED], 1);
    nowhere_but(std::process::id(), dir.path(), PLANTED, None);
}

#[test]
fn jetstream_with_a_creds_file_and_kafka_with_scram_over_tls_and_no_secret_shows() {
    let (dir, data, scenario_dir, log, mut child) = start_secured("\"jetstream\", \"kafka\"");
    let external = scenario_dir.path();

    // NATS: TLS required, the run's user logged in with its credentials
    // file, whose seed is in that file alone.
    let text = wait_for(&data, "jetstream/broker.log", "Server is ready", &mut child);
    assert!(
        text.contains("TLS required for client connections"),
        "{text}"
    );
    assert!(text.contains("Trusted Operators"), "{text}");
    let port = text
        .split("Listening for client connections on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    let creds = find(&data, "tls/brokerbench.creds").unwrap();
    let creds_text = std::fs::read_to_string(&creds).unwrap();
    let seed = creds_text
        .lines()
        .skip_while(|l| !l.contains("BEGIN USER NKEY SEED"))
        .nth(1)
        .unwrap()
        .to_string();
    assert!(seed.starts_with("SU"), "{creds_text}");
    nowhere_but(child.id(), &data, &seed, Some(&creds));
    nowhere_but(child.id(), &data, PLANTED, None);
    let ca = find(&data, "tls/ca.pem").unwrap();
    let url = format!("tls://127.0.0.1:{port}");
    let trusted = format!("[jetstream.tls]\nca = \"{}\"\n", ca.display());
    let said = refused_external(
        external,
        "jetstream",
        &url,
        &format!("{trusted}[jetstream.auth]\nmechanism = \"token\"\npassword_env = \"BROKERBENCH_TEST_PW\"\n"),
        ("BROKERBENCH_TEST_PW", "not-the-token"),
    );
    assert!(said.to_lowercase().contains("authorization"), "{said}");
    assert!(!said.contains("not-the-token"), "{said}");
    let said = refused_external(
        external,
        "jetstream",
        &url,
        &format!(
            "[jetstream.tls]\n[jetstream.auth]\nmechanism = \"creds\"\ncreds_file = \"{}\"\n",
            creds.display()
        ),
        ("BROKERBENCH_TEST_UNUSED", ""),
    );
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    assert!(!said.contains(&seed), "{said}");

    // Kafka: clients reach a SASL_SSL listener only, the user's salted
    // password alone went into the storage, and a wrong password or an
    // untrusted CA are refused.
    wait_for(
        &data,
        "kafka/broker.log",
        "Kafka Server started",
        &mut child,
    );
    let properties = wait_for(&data, "kafka/server.properties", "listeners=", &mut child);
    let port = properties
        .split("\nlisteners=SASL_SSL://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no SASL_SSL client listener:\n{properties}"))
        .to_string();
    nowhere_but(child.id(), &data, PLANTED, None);
    let url = format!("127.0.0.1:{port}");
    let auth = password_auth("kafka", "SCRAM-SHA-512");
    let trusted = format!("[kafka.tls]\nca = \"{}\"\n{auth}", ca.display());
    let said = refused_external(
        external,
        "kafka",
        &url,
        &trusted,
        ("BROKERBENCH_TEST_PW", "not-the-password"),
    );
    assert!(said.to_lowercase().contains("authentication"), "{said}");
    assert!(!said.contains("not-the-password"), "{said}");
    let said = refused_external(
        external,
        "kafka",
        &url,
        &format!("[kafka.tls]\n{auth}"),
        ("BROKERBENCH_TEST_PW", PLANTED),
    );
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    assert!(!said.contains(PLANTED), "{said}");

    check_finished(child, &log, &[PLANTED, &seed], 2);
    nowhere_but(std::process::id(), dir.path(), PLANTED, None);
}
