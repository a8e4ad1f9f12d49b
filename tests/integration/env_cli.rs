//! `brokerbench env ...` as a user runs it: the real binary, real brokers,
//! real signals.

use crate::util;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn env_check_prints_three_versions() {
    let out = util::brokerbench().args(["env", "check"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in ["RabbitMQ 3.", "nats-server 2.", "Apache Kafka 4."] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[test]
fn env_check_names_a_missing_broker_and_its_install_command() {
    // nats-server hidden from PATH; the other two still found.
    let (_dir, path) = util::path_with_only(&["rabbitmq-server", "kafka-server-start", "java"]);
    let out = util::brokerbench()
        .args(["env", "check"])
        .env("PATH", path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("jetstream is missing"), "{stdout}");
    assert!(
        stdout.contains("go install github.com/nats-io/nats-server/v2@v2."),
        "{stdout}"
    );
    assert!(
        stdout.contains("RabbitMQ 3.") && stdout.contains("Apache Kafka 4."),
        "{stdout}"
    );
}

#[test]
fn run_commands_name_a_missing_broker_or_java_and_exit_2() {
    for (on_path, said) in [
        // No Kafka at all: the command that installs it.
        (
            &["rabbitmq-server", "nats-server"][..],
            &["kafka is not installed", "scripts/install-brokers"][..],
        ),
        // The launcher is there, java is not: the cause, named.
        (&["kafka-server-start"][..], &["kafka", "no Java"][..]),
    ] {
        let (_dir, path) = util::path_with_only(on_path);
        let out = util::brokerbench()
            .args(["env", "smoke", "--brokers", "kafka"])
            .env("PATH", path)
            .env_remove("JAVA_HOME")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{on_path:?}: {stderr}");
        for phrase in said {
            assert!(
                stderr.contains(phrase),
                "{on_path:?}: {phrase:?} in {stderr}"
            );
        }
    }
}

#[test]
fn sigint_to_env_up_leaves_no_broker_running() {
    let data = tempfile::tempdir().unwrap();
    let mut child = util::brokerbench()
        .args(["env", "up", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();

    // Read its output on a thread, so the wait for "running" has a deadline.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut output = Vec::new();
    while !output.iter().any(|l: &String| l.contains("press Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => output.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "env up did not report running brokers in time:\n{}",
                    output.join("\n")
                );
            }
        }
    }
    let text = output.join("\n");
    for broker in ["rabbitmq", "jetstream", "kafka"] {
        assert!(text.contains(broker), "{broker} not listed:\n{text}");
    }
    let ports: Vec<u16> = text
        .split(|c: char| c.is_whitespace() || c == '/')
        .filter_map(|t| {
            t.strip_prefix("127.0.0.1:")
                .or_else(|| t.rsplit_once("@127.0.0.1:").map(|(_, p)| p))
        })
        .filter_map(|p| p.parse().ok())
        .collect();
    assert_eq!(ports.len(), 3, "endpoints not found in:\n{text}");
    assert!(ports.iter().all(|&p| util::port_open(p)));

    let started = util::descendants(pid);
    let commands: Vec<&str> = started.iter().map(|p| p.command.as_str()).collect();
    for program in ["beam", "epmd", "nats-server", "kafka.Kafka"] {
        assert!(
            commands.iter().any(|c| c.contains(program)),
            "no {program} among {commands:#?}"
        );
    }

    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("env up did not exit within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        status.success(),
        "exit {status:?}; output:\n{text}\n{}",
        rest.join("\n")
    );
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");

    let left: Vec<_> = started.iter().filter(|p| util::is_alive(p)).collect();
    assert!(left.is_empty(), "still running after SIGINT: {left:#?}");
    for port in ports {
        assert!(!util::port_open(port), "port {port} still answers");
    }
}
