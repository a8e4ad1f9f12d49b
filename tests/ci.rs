//! brokerbench in CI, as a pipeline uses it: thresholds that pass or fail a
//! run, on real brokers with the real binary.

mod util;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// A short run with thresholds a healthy broker on this machine keeps.
const WITH_THRESHOLDS: &str = r#"
name = "gate"
description = "a short run with thresholds"
brokers = ["jetstream"]

[load]
rate = 200
duration = "2s"
warmup = "500ms"
keys = 20

[[consumers]]
group = "billing"

[thresholds]
end_to_end_p99 = "5s"
publish_p99 = "5s"
rate_ratio = 0.9
lost = 0
duplicates = 0
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `brokerbench run SCENARIO ARGS --out DIR/results`.
fn run(scenario: &Path, args: &[&str], dir: &Path) -> Output {
    util::brokerbench()
        .arg("run")
        .arg(scenario)
        .args(args)
        .arg("--out")
        .arg(dir.join("results"))
        .output()
        .unwrap()
}

/// The results file whose path the run printed (`results: PATH`).
fn results_path(output: &Output) -> PathBuf {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&output.stdout).lines())
        .find_map(|l| l.strip_prefix("results: ").map(PathBuf::from))
        .expect("results path printed")
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn thresholds(results: &Value) -> Vec<&Value> {
    results["brokers"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "threshold")
        .collect()
}

#[test]
fn thresholds_pass_a_healthy_run_and_fail_it_when_set_below_the_measured_value() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(dir.path(), "gate.toml", WITH_THRESHOLDS);
    let healthy = run(&scenario, &[], dir.path());
    let said = String::from_utf8_lossy(&healthy.stdout);
    assert_eq!(healthy.status.code(), Some(0), "{said}");
    let results = read(&results_path(&healthy));
    util::validate_results(&results);
    let checks = thresholds(&results);
    assert_eq!(checks.len(), 5, "{checks:?}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{checks:?}");
    let p99 = checks
        .iter()
        .find(|c| c["metric"] == "end_to_end_p99")
        .unwrap()["value"]
        .as_u64()
        .unwrap();
    assert!(p99 > 0);

    // The same scenario with one limit below anything a real broker can do.
    let failing = run(
        &scenario,
        &["--threshold", "end_to_end_p99=1us"],
        dir.path(),
    );
    let said = String::from_utf8_lossy(&failing.stdout);
    assert_eq!(failing.status.code(), Some(1), "{said}");
    assert!(
        said.contains("NO: end_to_end_p99 <= 1µs (billing): "),
        "the table names the threshold: {said}"
    );
    let results = read(&results_path(&failing));
    let failed: Vec<&Value> = thresholds(&results)
        .into_iter()
        .filter(|c| c["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["metric"], "end_to_end_p99");
    assert_eq!(failed[0]["limit"], 1);
    assert!(failed[0]["value"].as_u64().unwrap() > 1);
}
