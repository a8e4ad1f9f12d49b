//! Markdown for a GitHub job summary: the verdict, the comparison, the
//! groups and what failed. GitHub refuses a summary over 1 MiB, so the
//! longest parts are cut to fit, saying what was left out.

use std::fmt::Write;

use anyhow::Result;
use comfy_table::{presets, ContentArrangement, Table};

use super::{broker_label, stand_in_notices, Document, Exporter};
use crate::report::table;
use crate::results::{CheckKind, Results};

/// GitHub's limit on one step's summary.
pub(crate) const GITHUB_SUMMARY_LIMIT: usize = 1024 * 1024;

/// The Markdown exporter.
pub(crate) struct Markdown {
    /// Bytes the report may take; parts are cut to fit.
    pub budget: usize,
}

impl Default for Markdown {
    fn default() -> Self {
        // Room for other steps' summaries and for a summary of several runs.
        Markdown {
            budget: GITHUB_SUMMARY_LIMIT / 2,
        }
    }
}

impl Exporter for Markdown {
    fn export(&self, runs: &[Results]) -> Result<Vec<Document>> {
        Ok(vec![Document {
            file_name: "report.md".into(),
            content: self.render(runs).into_bytes(),
        }])
    }
}

impl Markdown {
    /// The report of `runs`, within the budget.
    pub(crate) fn render(&self, runs: &[Results]) -> String {
        // Most rows first; fewer until it fits (the tables' rows dominate).
        let mut rows = usize::MAX;
        loop {
            let text: String = runs.iter().map(|r| one_run(r, rows)).collect();
            if text.len() <= self.budget || rows == 0 {
                return text;
            }
            let total: usize = runs.iter().map(rows_of).max().unwrap_or(0);
            rows = rows.min(total) / 2;
        }
    }
}

fn rows_of(r: &Results) -> usize {
    r.brokers
        .iter()
        .map(|b| b.groups.len() + b.checks.len())
        .sum()
}

fn markdown_table(mut table: Table) -> String {
    table
        .load_style(presets::ASCII_MARKDOWN)
        .set_content_arrangement(ContentArrangement::Disabled);
    table.to_string()
}

/// One run: the verdict line, what ran, the tables and the failed checks,
/// with at most `rows` group rows and failed checks each.
fn one_run(r: &Results, rows: usize) -> String {
    let mut s = heading(r);
    if r.brokers.is_empty() {
        s.push_str("No broker was measured.\n\n");
        return s;
    }
    s.push_str(&markdown_table(table::summary(r, table::Layout::Wide)));
    s.push_str("\n\n");

    s.push_str(&groups_section(r, rows));
    if let Some(dead_letters) = table::dead_letters(r, table::Layout::Wide) {
        let _ = writeln!(s, "### Dead letters\n");
        s.push_str(&markdown_table(dead_letters));
        s.push_str("\n\n");
    }
    if let Some(nodes) = table::cluster_faults(r, table::Layout::Wide) {
        let _ = writeln!(s, "### Cluster nodes through the faults\n");
        s.push_str(&markdown_table(nodes));
        s.push_str("\n\n");
    }
    if let Some(network) = table::network_faults(r, table::Layout::Wide) {
        let _ = writeln!(s, "### Network faults (through the fault proxy)\n");
        s.push_str(&markdown_table(network));
        s.push_str("\n\n");
    }
    if let Some(search) = table::find_max(r, table::Layout::Wide) {
        let _ = writeln!(s, "### Highest sustainable rate (--find-max)\n");
        for found in table::find_max_found(r) {
            let _ = writeln!(s, "- {found}");
        }
        s.push('\n');
        s.push_str(&markdown_table(search));
        s.push_str("\n\n");
    }
    if let Some(harness) = table::harness(r, table::Layout::Wide) {
        let _ = writeln!(s, "### The harness itself\n");
        s.push_str(&markdown_table(harness));
        s.push_str("\n\n");
        for warning in table::harness_warnings(r) {
            let _ = writeln!(s, "> **{warning}**\n");
        }
    }
    if let Some(agents) = table::agents(r) {
        let _ = writeln!(s, "### Consumers in other languages\n");
        s.push_str(&markdown_table(agents));
        s.push_str("\n\n");
    }

    s.push_str(&failed_checks_section(r, rows));
    s.push_str(&thresholds_line(r));
    s
}

/// The heading: the verdict, what ran, and why incomplete or a stand-in.
fn heading(r: &Results) -> String {
    let mut s = String::new();
    let verdict = if r.passed() {
        "passed"
    } else if !r.complete {
        "INCOMPLETE"
    } else {
        "FAILED"
    };
    let plan = &r.scenario;
    let _ = writeln!(s, "## brokerbench: `{}` {verdict}\n", plan.name);
    let rate = if plan.load.open_loop() {
        format!("{} msg/s", plan.load.rate)
    } else {
        "as fast as possible".into()
    };
    let _ = writeln!(
        s,
        "{} for {}, {} producer(s), {} group(s); environment `{}`; started {}; brokerbench {}.\n",
        rate,
        humantime::format_duration(plan.load.duration),
        plan.load.producers,
        plan.consumers.len(),
        r.environment,
        r.started_at,
        r.tool_version
    );
    if let Some(reason) = &r.incomplete_reason {
        let _ = writeln!(s, "> **Incomplete:** {reason}\n");
    }
    for notice in stand_in_notices(r) {
        let _ = writeln!(s, "> {notice}\n");
    }
    s
}

/// The consumer groups, at most `rows` rows; empty without groups.
fn groups_section(r: &Results, rows: usize) -> String {
    let mut s = String::new();
    let total = r.brokers.iter().map(|b| b.groups.len()).sum::<usize>();
    if total > 0 {
        let groups = table::groups_limited(r, rows, table::Layout::Wide);
        let _ = writeln!(s, "### Consumer groups\n");
        s.push_str(&markdown_table(groups));
        s.push('\n');
        if total > rows {
            let _ = writeln!(
                s,
                "\n{} more group row(s) are in results.json.",
                total - rows
            );
        }
        s.push('\n');
    }
    s
}

/// The failed checks, at most `rows` of them; empty when none failed.
fn failed_checks_section(r: &Results, rows: usize) -> String {
    let mut s = String::new();
    let failed: Vec<String> = r
        .brokers
        .iter()
        .flat_map(|b| {
            b.checks.iter().filter(|c| !c.passed).map(move |c| {
                format!(
                    "- {}: `{}`: {}",
                    broker_label(b),
                    c.condition(&b.faults),
                    c.measured()
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "### Failed checks\n");
        for line in failed.iter().take(rows) {
            let _ = writeln!(s, "{line}");
        }
        if failed.len() > rows {
            let _ = writeln!(s, "- and {} more in results.json", failed.len() - rows);
        }
        s.push('\n');
    }
    s
}

/// How many thresholds held; empty when the run has none.
fn thresholds_line(r: &Results) -> String {
    let mut s = String::new();
    let thresholds: Vec<bool> = r
        .brokers
        .iter()
        .flat_map(|b| b.checks.iter())
        .filter(|c| c.check == CheckKind::Threshold)
        .map(|c| c.passed)
        .collect();
    if !thresholds.is_empty() {
        let passed = thresholds.iter().filter(|&&held| held).count();
        let _ = writeln!(s, "Thresholds: {passed} of {} held.\n", thresholds.len());
    }
    s
}
