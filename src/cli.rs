//! The command line, as clap definitions only: parsing here, work in
//! `crate::commands`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::advisor::answers::GivenAnswers;
use crate::kind::BrokerKind;

/// Measure RabbitMQ, NATS JetStream and Kafka on your own event traffic.
#[derive(Debug, Parser)]
#[command(name = "brokerbench", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario against the brokers and report what each one did.
    ///
    /// Prints a comparison table and writes results.json (schema
    /// brokerbench.results/v1) to `<OUT>/<scenario>-<UTC timestamp>/`
    /// (`-2`, `-3` ... after it for runs started in the same second).
    /// Exit 0: every check held; 1: a check failed (a message lost, ...) or
    /// the run was interrupted; 2: bad input or a broker could not be run.
    Run(RunArgs),
    /// Brokers as local processes: check the installation, start them, try them.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Recommend a broker from your answers, with reasons and measured evidence.
    ///
    /// On a terminal, asks the questions not answered by flags or --answers.
    /// Otherwise --dead-letter, --languages and --rate are required and the
    /// other questions take neutral defaults, which the output names.
    /// Exit 0: advice given; 2: answers missing or invalid.
    Advise(AdviseArgs),
    /// Make a report from results files, for CI or for people.
    ///
    /// Formats: markdown (a GitHub job summary), junit (a testcase per
    /// check), github-action-benchmark and bmf (benchmark trackers), hlog
    /// (HdrHistogram interval logs). One-file formats go to stdout unless
    /// --out names a file; several-file formats (github-action-benchmark,
    /// hlog) go to the directory --out names, by default the first results
    /// file's. Exit 0: written; 2: a results file could not be read.
    Report(ReportArgs),
    /// Compare a run with a baseline: each figure's change, and whether it
    /// is a regression.
    ///
    /// A regression is a change for the worse beyond --max-regression that a
    /// Mann-Whitney U test on the per-second values finds real (p <
    /// --alpha, 0.01); more lost messages always are. Results of different
    /// scenarios, settings, environments or implementations are refused.
    /// Exit 0: no regression; 1: a regression; 2: cannot compare.
    Compare(CompareArgs),
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline's results.json (or its directory), e.g. saved from main.
    pub baseline: PathBuf,
    /// The current run's results.json (or its directory).
    pub current: PathBuf,
    /// The largest change for the worse that is not a regression, e.g. 10%.
    #[arg(long, default_value = "10%", value_parser = parse_percent)]
    pub max_regression: f64,
    /// The smallest latency change that can be a regression: two runs of
    /// one scenario differ by about this much by themselves (docs/ci.md).
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub min_latency_change: Duration,
    /// Significance level of the test on per-second values (docs/ci.md
    /// says why 0.01: seconds of one run share that run's conditions).
    #[arg(long, default_value_t = 0.01, value_parser = parse_alpha)]
    pub alpha: f64,
    /// How to print the comparison.
    #[arg(long, value_enum, default_value = "table")]
    pub format: CompareFormat,
    /// Write it to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Output forms of `compare`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompareFormat {
    /// A table for the terminal.
    Table,
    /// A Markdown table, e.g. for a job summary.
    Markdown,
    /// JSON (schema brokerbench.compare/v1, schema/compare.v1.json).
    Json,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches('%');
    match number.parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p / 100.0),
        _ => Err(format!("'{text}' is not a percentage like 10% or 2.5")),
    }
}

fn parse_alpha(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(a) if a > 0.0 && a < 1.0 => Ok(a),
        _ => Err(format!(
            "'{text}' is not a significance level between 0 and 1, like 0.05"
        )),
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// results.json files from `brokerbench run`, or the directories holding them.
    #[arg(required = true, value_name = "RESULTS")]
    pub results: Vec<PathBuf>,
    /// The report's format.
    #[arg(long, value_enum)]
    pub(crate) format: crate::report::export::Format,
    /// The file (one-file formats) or directory (several-file formats) to write.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AdviseArgs {
    /// One flag per question, from the questions' own definitions.
    #[command(flatten)]
    pub(crate) given: GivenAnswers,
    /// Answers from a TOML file (keys as in `--json` output's `answers`); flags win.
    #[arg(long, value_name = "FILE")]
    pub answers: Option<PathBuf>,
    /// results.json files from `brokerbench run`, used as evidence.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub results: Vec<PathBuf>,
    /// Write a scenario for `brokerbench run` that matches the answers.
    #[arg(long, value_name = "FILE")]
    pub emit_scenario: Option<PathBuf>,
    /// Print the advice as JSON (schema brokerbench.advice/v1) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Never ask: fail on missing deciding answers even on a terminal.
    #[arg(long)]
    pub no_input: bool,
    /// Let a stand-in's figures (a Kafka-protocol broker run as Kafka) score the
    /// product it stands in for. Off by default: a stand-in is not the product.
    #[arg(long)]
    pub accept_stand_ins: bool,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Show which broker programs are installed and their versions.
    ///
    /// Exits with 2 and prints the install command when one is missing.
    Check,
    /// Start brokers on free loopback ports and keep them running until Ctrl-C.
    ///
    /// Prints each endpoint so other tools can be pointed at it. Ctrl-C (or
    /// SIGTERM) stops every broker gracefully; nothing is left running.
    Up(UpArgs),
    /// Start brokers, send one persistent message through each, stop them.
    ///
    /// A quick proof that brokerbench can drive every broker on this machine.
    Smoke(BrokersArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenario file (TOML), e.g. scenarios/orders.toml.
    pub scenario: PathBuf,
    /// Brokers to measure, comma-separated [default: the scenario's].
    #[arg(long, value_delimiter = ',')]
    pub brokers: Option<Vec<BrokerKind>>,
    /// Target rate in messages/s over all producers; 0 = as fast as possible.
    #[arg(long, allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// Measured load duration, e.g. 20s or 2m [default: the scenario's].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Publish only: leave the scenario's consumer groups out, as the
    /// brokers' own publish benchmarks do (a scenario with no [[consumers]]
    /// publishes only too).
    #[arg(long)]
    pub publish_only: bool,
    /// Search each broker's highest sustainable rate instead of running the
    /// load once: a closed-loop window, then open-loop windows of at most
    /// 5 s, halving from that rate and bisecting to within 3%. A rate holds
    /// when at least 99% of it is sent and confirmed, nothing is lost and every --slo
    /// holds; a rate below the ceiling that did not hold is measured once
    /// more. The scenario's faults are left out.
    #[arg(long)]
    pub find_max: bool,
    /// Send every client connection through brokerbench's fault proxy even
    /// without network faults (a scenario with them always does), to
    /// measure what the proxy itself costs. Local brokers only.
    #[arg(long)]
    pub through_proxy: bool,
    /// Leave the run's queues, streams and topics in the broker, with their
    /// messages. By default they are deleted once the run's account is
    /// taken, as RabbitMQ's PerfTest and the side-by-side reference clients
    /// delete theirs: a broker left holding them writes them to disk at the
    /// next run's cost.
    #[arg(long)]
    pub keep_data: bool,
    /// An objective a rate must meet for --find-max: [BROKER.]METRIC<VALUE,
    /// e.g. end_to_end_p99<50ms or publish_p99<20ms. Repeatable.
    #[arg(long, value_name = "[BROKER.]METRIC<VALUE", requires = "find_max")]
    pub slo: Vec<String>,
    /// Set or replace a threshold: METRIC=VALUE for every broker, or
    /// BROKER.METRIC=VALUE for one, e.g. end_to_end_p99=50ms,
    /// kafka.rate_ratio=0.95 (docs/ci.md lists the metrics). Repeatable.
    #[arg(long = "threshold", value_name = "[BROKER.]METRIC=VALUE")]
    pub thresholds: Vec<String>,
    /// Serve live metrics for Prometheus at http://ADDR/metrics during the
    /// run, e.g. 127.0.0.1:9464 (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Parent directory of the results directory.
    #[arg(long, value_name = "DIR", default_value = "results")]
    pub out: PathBuf,
    /// Also print results.json to stdout (the tables go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Where the brokers run.
    #[arg(long, value_enum, default_value = "local")]
    pub env: EnvKind,
    /// With --env external: the targets file (TOML) giving each broker's URL
    /// and the commands that apply faults to it (see docs/faults.md).
    #[arg(long, value_name = "FILE", required_if_eq("env", "external"))]
    pub targets: Option<PathBuf>,
    /// With --env compose: the compose file.
    #[arg(long, value_name = "FILE", default_value = "docker-compose.yml")]
    pub compose_file: PathBuf,
}

/// Environments `run` can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EnvKind {
    /// brokerbench starts each broker as a child process (no Docker needed).
    Local,
    /// `docker compose` services from --compose-file; faults as `docker compose` commands.
    Compose,
    /// Brokers you run, at the URLs in --targets; faults by your commands.
    External,
}

impl EnvKind {
    /// The name used on the command line and in results.
    pub fn as_str(self) -> &'static str {
        match self {
            EnvKind::Local => "local",
            EnvKind::Compose => "compose",
            EnvKind::External => "external",
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::scenario::parse_duration(text)
}

#[derive(Debug, Args)]
pub struct BrokersArgs {
    /// Brokers to use, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rabbitmq,jetstream,kafka"
    )]
    pub brokers: Vec<BrokerKind>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub brokers: BrokersArgs,
    /// Directory for the brokers' data and logs [default: a new temporary
    /// directory, removed on exit].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl clap::ValueEnum for BrokerKind {
    fn value_variants<'a>() -> &'a [Self] {
        &crate::kind::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn brokers_are_comma_separated() {
        let cli =
            Cli::try_parse_from(["brokerbench", "env", "smoke", "--brokers", "kafka,rabbitmq"])
                .unwrap();
        let Command::Env(EnvCommand::Smoke(args)) = cli.command else {
            panic!("parsed {cli:?}")
        };
        let names: Vec<&str> = args.brokers.iter().map(|b| b.as_str()).collect();
        assert_eq!(names, ["kafka", "rabbitmq"]);
        let err =
            Cli::try_parse_from(["brokerbench", "env", "up", "--brokers", "kafak"]).unwrap_err();
        assert!(err.to_string().contains("kafak"), "{err}");
    }
}
