//! The external environment: a broker brokerbench did not start, reached at
//! the URL of a targets file, with faults applied by the file's commands.
//! Here the "user's" broker is a real nats-server that the test runs as a
//! daemon of its own, and the commands are the shell lines an operator would
//! write (kill -9 by pid file, start again on the same port and store).

use crate::util;

use std::path::{Path, PathBuf};
use std::process::Output;

use brokerbench::env::binaries;
use brokerbench::env::local::free_ports;
use brokerbench::kind::BrokerKind;
use serde_json::Value;

/// A nats-server run by shell commands, killed when the test ends.
struct UsersBroker {
    dir: tempfile::TempDir,
    port: u16,
    start: String,
}

impl UsersBroker {
    async fn new() -> Self {
        let nats = binaries::locate(BrokerKind::Jetstream)
            .await
            .expect("nats-server must be installed (make test installs it)");
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1).unwrap()[0];
        let d = dir.path().display();
        let start = format!(
            "{nats} -js -a 127.0.0.1 -p {port} -sd {d}/store -P {d}/pid >>{d}/log 2>&1 &",
            nats = nats.path.display()
        );
        UsersBroker { dir, port, start }
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("pid")
    }

    fn targets(&self, faults: &str) -> PathBuf {
        let path = self.dir.path().join("targets.toml");
        let text = format!(
            "[jetstream]\nurl = \"nats://127.0.0.1:{port}\"\nimplementation = \"nats-server, run by the user\"\n\
             [jetstream.faults]\n{faults}",
            port = self.port
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for UsersBroker {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status();
        }
    }
}

fn sh(command: &str) {
    let status = std::process::Command::new("sh")
        .args(["-c", command])
        .status()
        .unwrap();
    assert!(status.success(), "{command}");
}

fn run(scenario: &Path, targets: &Path, out: &Path, extra: &[&str]) -> Output {
    util::brokerbench()
        .arg("run")
        .arg(scenario)
        .args(["--env", "external", "--targets"])
        .arg(targets)
        .args(["--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_users_broker_is_killed_and_started_by_the_users_commands() {
    let broker = UsersBroker::new().await;
    sh(&broker.start);
    let started = std::time::Instant::now();
    while !(util::port_open(broker.port) && broker.pid_file().exists()) {
        assert!(
            started.elapsed().as_secs() < 20,
            "nats-server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid_file = broker.pid_file().display().to_string();
    let targets = broker.targets(&format!(
        "kill = \"kill -9 $(cat {pid_file})\"\nstart = '{}'\n",
        broker.start
    ));
    let scenario = broker.dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        "name = \"external\"\nbrokers = [\"jetstream\"]\n\
         [load]\nrate = 200\nduration = \"8s\"\nwarmup = \"0s\"\n\
         [[consumers]]\ngroup = \"billing\"\n\
         [[faults]]\nat = \"2s\"\naction = \"kill\"\nduration = \"2s\"\n",
    )
    .unwrap();
    let first_pid = std::fs::read_to_string(broker.pid_file()).unwrap();

    let out = run(
        &scenario,
        &targets,
        &broker.dir.path().join("results"),
        &["--json"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    util::validate_results(&results);
    assert_eq!(results["environment"], "external");
    let b = &results["brokers"][0];
    assert_eq!(b["implementation"], "nats-server, run by the user");
    assert_eq!(
        b["endpoint"],
        format!("nats://127.0.0.1:{}", broker.port).as_str()
    );
    let fault = &b["faults"][0];
    assert_eq!(fault["action"], "kill");
    let ready = fault["broker_ready_after_s"].as_f64().expect("came back");
    assert!(ready >= 2.0, "ready after {ready} s, but down for 2 s");
    assert!(fault["publish_recovered_after_s"].as_f64().unwrap() >= ready);
    assert_eq!(b["groups"][0]["lost"], 0, "{stderr}");
    // The user's commands really ran: a new process serves the port.
    let second_pid = std::fs::read_to_string(broker.pid_file()).unwrap();
    assert_ne!(first_pid, second_pid);
    assert!(
        util::port_open(broker.port),
        "the user's broker is left running"
    );
}

/// Runs with a targets file that must be refused: exit 2 and its stderr.
fn refused(scenario: &Path, targets: &Path, out: &Path) -> String {
    let out = run(scenario, targets, out, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[tokio::test]
async fn targets_file_mistakes_name_the_file_line_and_field() {
    let broker = UsersBroker::new().await; // not started: nothing may run
    let dir = broker.dir.path();
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/orders.toml");
    let out_dir = dir.join("results");

    // orders.toml runs all three brokers; the file has only jetstream.
    let targets = broker.targets("");
    let stderr = refused(&scenario, &targets, &out_dir);
    assert!(
        stderr.contains(&format!(
            "{}:1:1: rabbitmq: no [rabbitmq] table",
            targets.display()
        )),
        "{stderr}"
    );

    // A kill fault needs `kill` and `start` commands.
    let with_kill = dir.join("kill.toml");
    std::fs::write(
        &with_kill,
        "name = \"k\"\nbrokers = [\"jetstream\"]\n[load]\nrate = 10\nduration = \"5s\"\n\
         [[consumers]]\ngroup = \"g\"\n[[faults]]\nat = \"1s\"\naction = \"kill\"\nduration = \"1s\"\n",
    )
    .unwrap();
    let targets = broker.targets("kill = \"true\"\n");
    let stderr = refused(&with_kill, &targets, &out_dir);
    assert!(
        stderr.contains("jetstream.faults.start") && stderr.contains("needs a `start` command"),
        "{stderr}"
    );

    // An unknown action and a URL of the wrong form, at their lines.
    let targets = broker.targets("reboot = \"true\"\n");
    let stderr = refused(&with_kill, &targets, &out_dir);
    assert!(
        stderr.contains(":5:1: jetstream.faults.reboot: unknown action"),
        "{stderr}"
    );
    std::fs::write(&targets, "[jetstream]\nurl = \"127.0.0.1:4222\"\n").unwrap();
    let stderr = refused(&with_kill, &targets, &out_dir);
    assert!(
        stderr.contains(":2:7: jetstream.url: '127.0.0.1:4222' is not a NATS URL"),
        "{stderr}"
    );

    // A secret comes from the environment or a file: a variable that is not
    // set is named at its line; a token read from a file is printed nowhere
    // when a later mistake refuses the file.
    let auth = |secret: &str| {
        format!(
            "[jetstream]\nurl = \"nats://127.0.0.1:4222\"\n[jetstream.auth]\n\
             mechanism = \"token\"\n{secret}\n"
        )
    };
    std::fs::write(
        &targets,
        auth("password_env = \"BROKERBENCH_TEST_UNSET_TOKEN_3d\""),
    )
    .unwrap();
    let stderr = refused(&with_kill, &targets, &out_dir);
    assert!(
        stderr.contains(
            ":5:16: jetstream.auth.password_env: the environment variable \
             BROKERBENCH_TEST_UNSET_TOKEN_3d is not set"
        ),
        "{stderr}"
    );
    let planted = "planted-token-5c81e";
    std::fs::write(dir.join("token"), format!("{planted}\n")).unwrap();
    std::fs::write(&targets, auth("password_file = \"token\"")).unwrap();
    let out = run(&with_kill, &targets, &out_dir, &[]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("jetstream.faults.kill"), "{said}");
    assert!(!said.contains(planted), "{said}");

    // --env external without --targets.
    let out = util::brokerbench()
        .args(["run", "scenarios/orders.toml", "--env", "external"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--targets"));
}

#[test]
fn compose_without_a_docker_engine_fails_clearly_and_keeps_the_results_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_bin, path) = util::path_with_only(&[]); // no docker at all
    let out = util::brokerbench()
        .args([
            "run",
            "scenarios/orders.toml",
            "--env",
            "compose",
            "--duration",
            "1s",
        ])
        .arg("--out")
        .arg(dir.path())
        .env("PATH", path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("docker compose -f docker-compose.yml up --detach --wait rabbitmq"),
        "{stderr}"
    );
    let results: Vec<_> = walk(dir.path());
    assert_eq!(results.len(), 1, "{results:?}");
    let written: Value = serde_json::from_slice(&std::fs::read(&results[0]).unwrap()).unwrap();
    assert_eq!(written["environment"], "compose");
    assert_eq!(written["complete"], false);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else if path.file_name().is_some_and(|n| n == "results.json") {
            found.push(path);
        }
    }
    found
}

/// Three nats-servers in one cluster, each run by its own shell line.
struct UsersCluster {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    starts: Vec<String>,
}

impl UsersCluster {
    async fn new() -> Self {
        let nats = binaries::locate(BrokerKind::Jetstream)
            .await
            .expect("nats-server must be installed (make test installs it)");
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(6).unwrap();
        let (clients, routes) = ports.split_at(3);
        let d = dir.path().display();
        let route_list: Vec<String> = routes
            .iter()
            .map(|r| format!("nats-route://127.0.0.1:{r}"))
            .collect();
        let mut starts = Vec::new();
        for n in 0..3 {
            let config = dir.path().join(format!("n{n}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: users-n{n}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{d}/store{n}\" }}\n\
                     cluster {{ name: users\nlisten: 127.0.0.1:{}\nroutes: [{}] }}\n",
                    clients[n],
                    routes[n],
                    route_list.join(", ")
                ),
            )
            .unwrap();
            starts.push(format!(
                "{nats} -c {config} -P {d}/pid{n} >>{d}/log{n} 2>&1 &",
                nats = nats.path.display(),
                config = config.display()
            ));
        }
        UsersCluster {
            dir,
            ports: clients.to_vec(),
            starts,
        }
    }

    fn pid_file(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("pid{n}"))
    }

    /// A targets file listing each node, with its kill and start commands.
    fn targets(&self) -> PathBuf {
        let mut text = String::from(
            "[jetstream]\nimplementation = \"nats-server, 3 nodes run by the user\"\n",
        );
        for n in 0..3 {
            text.push_str(&format!(
                "[[jetstream.nodes]]\nurl = \"nats://127.0.0.1:{}\"\nname = \"users-n{n}\"\n\
                 [jetstream.nodes.faults]\nkill = \"kill -9 $(cat {})\"\nstart = '{}'\n",
                self.ports[n],
                self.pid_file(n).display(),
                self.starts[n]
            ));
        }
        let path = self.dir.path().join("targets.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for UsersCluster {
    fn drop(&mut self) {
        for n in 0..3 {
            if let Ok(pid) = std::fs::read_to_string(self.pid_file(n)) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", pid.trim()])
                    .status();
            }
        }
    }
}

#[tokio::test]
async fn a_users_cluster_loses_its_leader_to_the_users_kill_command() {
    let cluster = UsersCluster::new().await;
    for start in &cluster.starts {
        sh(start);
    }
    let started = std::time::Instant::now();
    while !(0..3).all(|n| util::port_open(cluster.ports[n]) && cluster.pid_file(n).exists()) {
        assert!(
            started.elapsed().as_secs() < 20,
            "the nats-servers did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let targets = cluster.targets();
    let scenario = cluster.dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        "name = \"external-cluster\"\nbrokers = [\"jetstream\"]\n[cluster]\nnodes = 3\n\
         [load]\nrate = 200\nduration = \"20s\"\n\
         [[consumers]]\ngroup = \"billing\"\n\
         [[faults]]\nat = \"2s\"\naction = \"kill\"\nnode = \"leader\"\nduration = \"4s\"\n",
    )
    .unwrap();
    let out = run(
        &scenario,
        &targets,
        &cluster.dir.path().join("results"),
        &["--json"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    util::validate_results(&results);
    let b = &results["brokers"][0];
    assert_eq!(
        b["nodes"],
        serde_json::json!(["users-n0", "users-n1", "users-n2"])
    );
    assert_eq!(b["settings"]["replicas"], 3);
    let fault = &b["faults"][0];
    let hit = &fault["nodes"][0];
    assert_eq!(
        hit["name"], fault["leadership_before"]["leader"],
        "{fault:#}"
    );
    assert_eq!(hit["was_leader"], true);
    assert!(
        hit["new_leader"].is_string() && hit["new_leader"] != hit["name"],
        "{fault:#}"
    );
    assert!(hit["ready_after_s"].as_f64().unwrap() >= 4.0, "{fault:#}");
    assert_eq!(b["groups"][0]["lost"], 0, "{stderr}");
    // The user's node is running again, started by the user's command.
    let n = hit["node"].as_u64().unwrap() as usize - 1;
    assert!(
        util::port_open(cluster.ports[n]),
        "node {} is left down",
        n + 1
    );
}

#[tokio::test]
async fn a_cluster_targets_file_must_list_the_scenarios_nodes() {
    let cluster = UsersCluster::new().await; // not started: nothing may run
    let dir = cluster.dir.path();
    let targets = cluster.targets();
    let out_dir = dir.join("results");
    // A single-node scenario against three listed nodes.
    let single = dir.join("single.toml");
    std::fs::write(
        &single,
        "name = \"s\"\nbrokers = [\"jetstream\"]\n[load]\nrate = 10\nduration = \"5s\"\n",
    )
    .unwrap();
    let stderr = refused(&single, &targets, &out_dir);
    assert!(
        stderr.contains("jetstream: lists 3 node(s), but the scenario's [cluster] has 1"),
        "{stderr}"
    );
    // A node's fault the scenario needs and the file does not give.
    let pause = dir.join("pause.toml");
    std::fs::write(
        &pause,
        "name = \"p\"\nbrokers = [\"jetstream\"]\n[cluster]\nnodes = 3\n[load]\nrate = 10\nduration = \"5s\"\n\
         [[faults]]\nat = \"1s\"\naction = \"pause\"\nnode = 2\nduration = \"1s\"\n",
    )
    .unwrap();
    let stderr = refused(&pause, &targets, &out_dir);
    assert!(
        stderr.contains("jetstream.nodes[0].faults.pause")
            && stderr.contains("needs a `pause` command"),
        "{stderr}"
    );
    // Two nodes with one name, at the line of the second.
    let text = std::fs::read_to_string(&targets)
        .unwrap()
        .replace("users-n1", "users-n0");
    std::fs::write(&targets, text).unwrap();
    let stderr = refused(&pause, &targets, &out_dir);
    assert!(
        stderr.contains(":11:8: jetstream.nodes[1].name"),
        "{stderr}"
    );
}
