//! `brokerbench advise`: the canonical cases, flags versus answers files
//! versus the interactive questionnaire (through a pseudo-terminal), measured
//! evidence from a real run changing the ranking, and a written scenario that
//! `brokerbench run` runs.

use crate::util;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

fn advise(args: &[&str]) -> (i32, Value, String) {
    let out = util::brokerbench()
        .arg("advise")
        .args(args)
        .args(["--json", "--no-input"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let code = out.status.code().unwrap();
    let json = if code == 0 {
        let v: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
        util::validate("advice.v1.json", &v);
        v
    } else {
        Value::Null
    };
    (code, json, stderr)
}

/// (a) An order is created; inventory, risk and points are notified; nothing
/// may be lost; failures need a dead-letter queue; about 200/s; Go services
/// and a future Python consumer.
const ORDERS: &[&str] = &[
    "--dead-letter",
    "required",
    "--languages",
    "go,python",
    "--rate",
    "200",
    "--groups",
    "3",
    "--delivery",
    "at-least-once",
];

#[test]
fn orders_with_dead_letters_and_python_go_to_rabbitmq() {
    let (code, advice, stderr) = advise(ORDERS);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(advice["recommendation"], "rabbitmq", "{advice:#}");
    let reasons = advice["ranking"][0]["reasons"].to_string();
    assert!(reasons.contains("dead-letter exchanges"), "{reasons}");
    // The nearest flip names a real change of answer.
    let flip = &advice["nearest_flip"];
    assert_eq!(flip["question"], "dead_letter", "{flip}");
    assert_ne!(flip["first"], "rabbitmq");
}

#[test]
fn go_broadcasts_at_2000_per_second_go_to_jetstream() {
    // (b) Login broadcasts and config-change notifications between Go
    // services, about 2,000/s, many receiving services, no dead-letter queue.
    let (code, advice, stderr) = advise(&[
        "--dead-letter",
        "no",
        "--languages",
        "go",
        "--rate",
        "2000",
        "--groups",
        "10",
        "--delivery",
        "best-effort",
        "--latency-ms",
        "10",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(advice["recommendation"], "jetstream", "{advice:#}");
}

#[test]
fn a_clickstream_with_replay_and_per_key_order_goes_to_kafka() {
    // (c) 200,000/s clickstream with replay and per-key order.
    let (code, advice, stderr) = advise(&[
        "--dead-letter",
        "no",
        "--languages",
        "java,python",
        "--rate",
        "200000",
        "--replay",
        "days",
        "--ordering",
        "per-key",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(advice["recommendation"], "kafka", "{advice:#}");
    let kafka = &advice["ranking"][0];
    assert!(kafka["reasons"][0]
        .as_str()
        .unwrap()
        .starts_with("event rate"));
}

#[test]
fn without_a_deciding_answer_it_says_what_is_missing() {
    let (code, _, stderr) = advise(&["--rate", "300"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--dead-letter") && stderr.contains("--languages"),
        "{stderr}"
    );
    assert!(!stderr.contains("--rate EVENTS"), "{stderr}");
    // The neutral defaults are stated, in JSON and in text.
    let (_, advice, _) = advise(ORDERS);
    let defaulted: Vec<&str> = advice["defaulted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(
        defaulted,
        ["ordering", "replay", "latency_ms", "hosting", "experience"]
    );
    let text = util::brokerbench()
        .arg("advise")
        .args(ORDERS)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("neutral defaults used: ordering = none, replay = no"),
        "{text}"
    );
    // Bad values name their flag.
    let (code, _, stderr) = advise(&["--dead-letter", "maybe"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("maybe"), "{stderr}");
}

#[test]
fn an_answers_file_gives_the_same_advice_as_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("answers.toml");
    std::fs::write(
        &file,
        "dead_letter = \"required\"\nlanguages = [\"python\", \"go\"]\nrate = 200\ngroups = 3\n\
         delivery = \"at-least-once\"\n",
    )
    .unwrap();
    let (code, from_file, stderr) = advise(&["--answers", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (_, from_flags, _) = advise(ORDERS);
    assert_eq!(from_file, from_flags);
    // Flags win over the file.
    let (_, overridden, _) = advise(&["--answers", file.to_str().unwrap(), "--dead-letter", "no"]);
    assert_eq!(overridden["answers"]["dead_letter"], "no");
    // A mistake in the file names file, line and field.
    std::fs::write(&file, "dead_letter = \"required\"\nrat = 200\n").unwrap();
    let (code, _, stderr) = advise(&["--answers", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("{}:2:1: rat: unknown field", file.display())),
        "{stderr}"
    );
}

#[test]
fn the_questionnaire_on_a_terminal_gives_the_same_advice_as_flags() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_brokerbench"));
    command
        .arg("advise")
        .env("TERM", "xterm")
        .env("NO_COLOR", "1");
    let mut pty = rexpect::session::spawn_command(command, Some(20_000)).unwrap();
    const DOWN: &str = "\x1b[B";
    let answer = |pty: &mut rexpect::session::PtySession, question: &str, keys: &[&str]| {
        pty.exp_string(question)
            .unwrap_or_else(|e| panic!("waiting for '{question}': {e}"));
        for key in keys {
            pty.send(key).unwrap();
            pty.flush().unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    answer(&mut pty, "dead-letter queue?", &["required", "\r"]);
    // go, then down to python; space toggles, enter confirms.
    answer(&mut pty, "Which languages", &[" ", DOWN, " ", "\r"]);
    answer(&mut pty, "Peak events per second?", &["200", "\r"]);
    answer(&mut pty, "What must stay in order?", &["\r"]); // none, the first
    answer(&mut pty, "read old events again?", &["\r"]); // no, the first
    answer(&mut pty, "delivery guarantee", &["at-least-once", "\r"]);
    answer(&mut pty, "latency target", &["\r"]); // default 0
    answer(&mut pty, "consumer groups", &["3", "\r"]);
    answer(&mut pty, "Who runs the brokers?", &["\r"]); // self-hosted
    answer(&mut pty, "already run in production?", &["\r"]); // none
    pty.exp_string("Recommendation: RabbitMQ").unwrap();
    let (_, flags) = pty
        .exp_regex(r"Same answers as flags: brokerbench advise ([^\r\n]+)")
        .unwrap();
    let flags = flags
        .trim()
        .trim_start_matches("Same answers as flags: brokerbench advise ")
        .to_string();
    pty.exp_eof().unwrap();

    let args: Vec<&str> = flags.split_whitespace().collect();
    let (code, interactive, stderr) = advise(&args);
    assert_eq!(code, 0, "{flags}: {stderr}");
    let (_, from_flags, _) = advise(
        &[
            ORDERS,
            &[
                "--ordering",
                "none",
                "--replay",
                "no",
                "--latency-ms",
                "0",
                "--hosting",
                "self-hosted",
                "--experience",
                "none",
            ],
        ]
        .concat(),
    );
    assert_eq!(interactive, from_flags, "interactive answers: {flags}");
}

#[test]
fn measured_evidence_from_local_kafka_scores_kafka() {
    // Answers alone put Kafka first: per-key order and replay at 30,000/s.
    let answers = [
        "--dead-letter",
        "no",
        "--languages",
        "java",
        "--rate",
        "30000",
        "--replay",
        "days",
        "--ordering",
        "per-key",
    ];
    let dir = tempfile::tempdir().unwrap();
    let (code, before, stderr) = advise(&answers);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(before["recommendation"], "kafka", "{before:#}");
    assert!(before["evidence"].is_null());

    // Measure each broker at 40,000 msg/s offered, for real, locally: Apache
    // Kafka is the product itself, so its figures are evidence. (Offered,
    // not as fast as possible: a closed-loop JetStream run leaves a backlog
    // the group takes minutes to read.)
    let out = util::brokerbench()
        .args([
            "run",
            "scenarios/throughput.toml",
            "--rate",
            "40000",
            "--duration",
            "3s",
            "--json",
        ])
        .arg("--out")
        .arg(dir.path().join("results"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let mut results = util::stdout_json(&out);
    let results_file = dir.path().join("max-rate.json");
    std::fs::write(&results_file, results.to_string()).unwrap();
    let kafka = util::element(&results["brokers"], "kafka", |b| b["broker"] == "kafka");
    let implementation = kafka["implementation"].as_str().unwrap().to_string();
    assert!(implementation.starts_with("Apache Kafka 4."), "{kafka}");
    assert!(kafka["stand_in_for"].is_null(), "{kafka}");
    let kafka_rate = kafka["publish"]["confirmed_per_s"].as_f64().unwrap();

    let results_arg = ["--results", results_file.to_str().unwrap()];
    let (code, after, stderr) = advise(&[&answers[..], &results_arg].concat());
    assert_eq!(code, 0, "{stderr}");
    let kafka_effect = |advice: &Value| {
        util::element(&advice["evidence"]["effects"], "kafka effect", |e| {
            e["broker"] == "kafka"
        })
        .clone()
    };
    let measured = util::element(&after["evidence"]["measurements"], "kafka", |m| {
        m["broker"] == "kafka"
    });
    assert_eq!(measured["used"], true, "{measured}");
    assert_eq!(measured["implementation"], implementation.as_str());
    let effect = kafka_effect(&after);
    let reason = effect["reason"].as_str().unwrap();
    assert!(!reason.contains("stand-in"), "{effect}");
    if kafka_rate >= 0.98 * 30_000.0 {
        // Kafka sustained the rate: the evidence confirms, not changes.
        assert_eq!(after["recommendation"], "kafka", "{after:#}");
        assert_eq!(after["evidence"]["changed_ranking"], false);
    } else {
        assert!(reason.contains("did not sustain your rate"), "{effect}");
        assert_ne!(effect["score"], 5.0, "{effect}");
    }

    // The same figures from a stand-in (a Kafka-protocol broker a targets
    // file marks `stand_in`) do not score Apache Kafka unless accepted.
    let stand_in = results["brokers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|b| b["broker"] == "kafka")
        .unwrap();
    stand_in["implementation"] = "redpanda 24.2.7".into();
    stand_in["stand_in_for"] = "Apache Kafka".into();
    let stand_in_file = dir.path().join("stand-in.json");
    std::fs::write(&stand_in_file, results.to_string()).unwrap();
    let stand_in_arg = ["--results", stand_in_file.to_str().unwrap()];
    let (code, ignored, stderr) = advise(&[&answers[..], &stand_in_arg].concat());
    assert_eq!(code, 0, "{stderr}");
    let effect = kafka_effect(&ignored);
    let reason = effect["reason"].as_str().unwrap();
    assert!(
        reason.contains("stand-in for Apache Kafka") && reason.contains("not used"),
        "{effect}"
    );
    assert_eq!(effect["score"], 5.0, "{effect}");
    let text = util::brokerbench()
        .arg("advise")
        .args(answers)
        .args(stand_in_arg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Not used: kafka's figures from redpanda")
            && text.contains("--accept-stand-ins"),
        "{text}"
    );
    let (code, accepted, stderr) =
        advise(&[&answers[..], &stand_in_arg, &["--accept-stand-ins"]].concat());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        kafka_effect(&accepted)["score"],
        kafka_effect(&after)["score"]
    );
}

#[test]
fn the_scenario_written_for_the_orders_case_runs_as_written() {
    // Its rate, its three groups, a restart of each broker.
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("advised.toml");
    let (code, _, stderr) =
        advise(&[ORDERS, &["--emit-scenario", scenario.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&scenario).unwrap();
    assert!(text.contains("rate = 200"), "{text}");
    let out = util::brokerbench()
        .arg("run")
        .arg(&scenario)
        .args(["--json", "--out"])
        .arg(dir.path().join("advised-results"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let results = util::stdout_json(&out);
    util::validate_results(&results);
    assert_eq!(results["brokers"].as_array().unwrap().len(), 3, "{stderr}");
    for broker in results["brokers"].as_array().unwrap() {
        let name = broker["broker"].as_str().unwrap();
        assert_eq!(broker["groups"].as_array().unwrap().len(), 3);
        assert_eq!(broker["faults"][0]["action"], "restart", "{stderr}");
        assert!(broker["faults"][0]["broker_ready_after_s"].is_number());
        assert_eq!(broker["complete"], true, "{name}: {stderr}");
        for group in broker["groups"].as_array().unwrap() {
            assert_eq!(group["lost"], 0, "{name}: {stderr}");
        }
    }
    assert!(Path::new(&scenario).exists());
}
