//! Reports for CI and people, from results files: one exporter per format
//! behind one trait, as hyperfine's `export` module does.
//!
//! Every exporter reads [`Results`] only, so a report made later from a
//! saved `results.json` is the same as one made at the end of the run.

mod benchmark;
mod hlog;
mod html;
mod junit;
pub(crate) mod markdown;

use anyhow::Result;

use crate::results::Results;

/// A report format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// GitHub-flavoured Markdown for a job summary (stays under its 1 MiB limit).
    Markdown,
    /// One self-contained HTML file with charts (no network needed to open it).
    Html,
    /// JUnit XML: one testcase per check, for CI test reporters.
    Junit,
    /// github-action-benchmark's customSmallerIsBetter and
    /// customBiggerIsBetter JSON: two files.
    GithubActionBenchmark,
    /// Bencher Metric Format (BMF) JSON.
    Bmf,
    /// HdrHistogram interval logs (.hlog 1.2), a histogram per second: per
    /// broker, publish latency and each group's end-to-end latency.
    Hlog,
}

/// One file of a report.
#[derive(Debug)]
pub(crate) struct Document {
    /// The file name it is written under in a directory.
    pub file_name: String,
    /// Its content.
    pub content: Vec<u8>,
}

/// Turns results into a report.
pub(crate) trait Exporter {
    /// The report of `runs` (one or more results files, in the order given).
    fn export(&self, runs: &[Results]) -> Result<Vec<Document>>;
}

/// The exporter of `format`.
pub(crate) fn exporter(format: Format) -> Box<dyn Exporter> {
    match format {
        Format::Markdown => Box::new(markdown::Markdown::default()),
        Format::Html => Box::new(html::Html),
        Format::Junit => Box::new(junit::Junit),
        Format::GithubActionBenchmark => Box::new(benchmark::GithubActionBenchmark),
        Format::Bmf => Box::new(benchmark::Bmf),
        Format::Hlog => Box::new(hlog::Hlog),
    }
}

/// Markdown for one run, as `run` appends it to `$GITHUB_STEP_SUMMARY`.
pub(crate) fn markdown(results: &Results) -> String {
    markdown::Markdown::default().render(std::slice::from_ref(results))
}

/// How benchmark trackers and file names name what ran: `kafka`, or for a
/// stand-in `kafka-on-redpanda` (its program, not its version, so that its
/// series stays one across upgrades), so that a stand-in's figures never
/// line up with the product's. Safe in file names and globs.
fn tracked_name(b: &crate::results::BrokerResult) -> String {
    match &b.stand_in_for {
        Some(_) => {
            let program: String = b
                .implementation
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            format!("{}-on-{program}", b.broker)
        }
        None => b.broker.to_string(),
    }
}

/// For each stand-in measured, one sentence that says so (for the top of a
/// report): `kafka ran on Redpanda 24.2.7, a stand-in: its
/// figures describe it, not Apache Kafka.`
fn stand_in_notices(r: &Results) -> Vec<String> {
    r.brokers
        .iter()
        .filter_map(|b| {
            let product = b.stand_in_for.as_ref()?;
            Some(format!(
                "{} ran on {}, a stand-in: its figures describe it, not {product}.",
                b.broker, b.implementation
            ))
        })
        .collect()
}

/// `broker`, or `broker (stand-in for Product)`: how reports name what ran.
fn broker_label(b: &crate::results::BrokerResult) -> String {
    match &b.stand_in_for {
        Some(product) => format!("{} (stand-in for {product})", b.broker),
        None => b.broker.to_string(),
    }
}

#[cfg(test)]
mod tests;
