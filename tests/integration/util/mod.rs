//! Helpers shared by the integration tests: the brokerbench binary, and
//! process inspection through /proc so tests can prove nothing was left running.

use std::path::PathBuf;
use std::process::Command;

/// The brokerbench binary cargo built for these tests.
pub fn brokerbench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_brokerbench"))
}

/// `brokerbench run ARGS --out DIR/results`.
pub fn run_command(args: &[&str], dir: &std::path::Path) -> Command {
    let mut command = brokerbench();
    command
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(dir.join("results"));
    command
}

/// A new temporary directory holding `scenario` as `scenario.toml`, and that
/// file's path.
pub fn scenario_file(scenario: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenario.toml");
    std::fs::write(&path, scenario).unwrap();
    (dir, path)
}

/// What `brokerbench run SCENARIO ARGS --json` did.
pub struct Ran {
    pub code: i32,
    /// Its results, checked against the schema.
    pub results: serde_json::Value,
    pub stderr: String,
    /// The directory the scenario and results are in, and the results file.
    pub saved: (tempfile::TempDir, PathBuf),
}

/// Runs `scenario` with `args` and `--json` to the end.
pub fn run_scenario(scenario: &str, args: &[&str]) -> Ran {
    let (dir, path) = scenario_file(scenario);
    let out = run_command(&[path.to_str().unwrap()], dir.path())
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let results: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    validate_results(&results);
    let saved = results_path(&stderr);
    Ran {
        code: out.status.code().unwrap_or(-1),
        results,
        stderr,
        saved: (dir, saved),
    }
}

/// The results file whose path a run printed (`results: PATH`) in `said`.
pub fn results_path(said: &str) -> PathBuf {
    said.lines()
        .find_map(|l| l.strip_prefix("results: ").map(PathBuf::from))
        .expect("results path printed")
}

/// The first element of JSON array `list` for which `is` holds; the
/// panic names `what` when there is none.
pub fn element<'a>(
    list: &'a serde_json::Value,
    what: &str,
    is: impl Fn(&serde_json::Value) -> bool,
) -> &'a serde_json::Value {
    list.as_array()
        .expect("an array")
        .iter()
        .find(|v| is(v))
        .unwrap_or_else(|| panic!("no {what}"))
}

/// The JSON a command printed on stdout (`--json`); the panic shows its
/// stderr when there is none.
pub fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// `GET path` from `addr` (`host:port`) over a plain TCP connection, as
/// HTTP/1.0 (so the body is never chunked): the whole response, status line
/// and headers included.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A JSON file, parsed.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A process, identified by pid and start time so a reused pid is not mistaken for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub start_time: u64,
    pub command: String,
}

/// Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ... starttime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    Some(after_name.split_whitespace().map(str::to_string).collect())
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn proc_of(pid: u32) -> Option<Proc> {
    let fields = stat_fields(pid)?;
    let command = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(Proc {
        pid,
        start_time: fields.get(19)?.parse().ok()?,
        command: String::from_utf8_lossy(&command)
            .replace('\0', " ")
            .trim()
            .to_string(),
    })
}

/// Every live descendant of `root` (children, grandchildren, ...).
pub fn descendants(root: u32) -> Vec<Proc> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat_fields(pid)?.get(1)?.parse().ok()?)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found[1..].iter().filter_map(|&pid| proc_of(pid)).collect()
}

/// Processes whose initial environment contains `text` (an agent's
/// configuration is there, never on its command line).
pub fn with_environment(text: &str) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(text.len()).any(|w| w == text.as_bytes()))
        })
        .collect()
}

/// Members of process group `pgid` that still exist (zombies included).
pub fn group_members(pgid: u32) -> Vec<Proc> {
    all_pids()
        .into_iter()
        .filter(|&pid| stat_fields(pid).and_then(|f| f.get(2)?.parse::<u32>().ok()) == Some(pgid))
        .filter_map(proc_of)
        .collect()
}

/// Whether `p` (the same process, not a reuse of its pid) still exists and is not a zombie.
pub fn is_alive(p: &Proc) -> bool {
    match stat_fields(p.pid) {
        Some(fields) => {
            fields[0] != "Z" && fields.get(19).and_then(|s| s.parse().ok()) == Some(p.start_time)
        }
        None => false,
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A PATH holding only links to the named programs (as found on the real PATH).
pub fn path_with_only(programs: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    for program in programs {
        let real =
            which::which(program).unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
        std::os::unix::fs::symlink(real, dir.path().join(program)).unwrap();
    }
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// Asserts that `results` matches schema/results.v1.json.
pub fn validate_results(results: &serde_json::Value) {
    validate("results.v1.json", results);
}

/// Asserts that `value` matches `schema/<schema>`.
pub fn validate(schema: &str, value: &serde_json::Value) {
    let path = format!("{}/schema/{schema}", env!("CARGO_MANIFEST_DIR"));
    let schema_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema_json).expect("the schema itself is valid");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "output does not match schema/{schema}:\n{}",
        errors.join("\n")
    );
}
