//! `brokerbench compare BASELINE CURRENT`: the CI regression gate.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

use super::report::results_file;
use crate::cli::{CompareArgs, CompareFormat};
use crate::exit;
use crate::report::compare::{compare, Allowance, Comparison, Row, Verdict};
use crate::results::Results;

pub(crate) fn run(args: CompareArgs) -> Result<ExitCode> {
    let baseline = Results::read(&results_file(&args.baseline))?;
    let current = Results::read(&results_file(&args.current))?;
    let allowance = Allowance {
        max_regression: args.max_regression,
        alpha: args.alpha,
        min_latency_change_us: args.min_latency_change.as_nanos() as f64 / 1e3,
    };
    let comparison = compare(&baseline, &current, allowance)?;
    let text = match args.format {
        CompareFormat::Json => serde_json::to_string_pretty(&comparison)? + "\n",
        CompareFormat::Table => render(&comparison, false),
        CompareFormat::Markdown => render(&comparison, true),
    };
    match &args.out {
        Some(file) => std::fs::write(file, &text)
            .with_context(|| format!("could not write '{}'", file.display()))?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::from(
        if comparison.regressions().next().is_some() {
            exit::CHECK_FAILED
        } else {
            exit::OK
        },
    ))
}

/// The comparison as a table, then a one-line verdict.
fn render(c: &Comparison, markdown: bool) -> String {
    let mut table = Table::new();
    if markdown {
        table
            .load_style(presets::ASCII_MARKDOWN)
            .set_content_arrangement(ContentArrangement::Disabled);
    } else {
        table
            .load_style(presets::UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic);
    }
    table.set_header(vec![
        "broker", "group", "metric", "baseline", "current", "change", "p", "verdict",
    ]);
    for r in &c.rows {
        table.add_row(vec![
            match &r.stand_in_for {
                Some(_) => format!("{} ({}, stand-in)", r.broker, r.implementation),
                None => r.broker.to_string(),
            },
            r.group.clone().unwrap_or_default(),
            r.metric.clone(),
            figure(r, r.baseline),
            figure(r, r.current),
            r.change
                .map_or("-".into(), |x| format!("{:+.1}%", x * 100.0)),
            r.p_value.map_or("-".into(), |p| format!("{p:.3}")),
            match r.verdict {
                Verdict::Regression => "REGRESSION".into(),
                Verdict::Improvement => "improvement".into(),
                Verdict::NoSignificantChange => "no significant change".into(),
                Verdict::Untested => "untested".into(),
            },
        ]);
    }
    for column in 3..=6 {
        if let Some(col) = table.column_mut(column) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    let name = |r: &Row| match &r.group {
        Some(g) => format!("{} {g} {}", r.broker, r.metric),
        None => format!("{} {}", r.broker, r.metric),
    };
    let regressions: Vec<&Row> = c.regressions().collect();
    let verdict = if regressions.is_empty() {
        format!(
            "No regression: no figure got worse by more than {:.0}% (and {} for a latency) with the test finding it real (p < {}).",
            c.max_regression * 100.0,
            crate::report::table::latency(c.min_latency_change_us as u64),
            c.alpha
        )
    } else {
        let list: Vec<String> = regressions.iter().map(|r| name(r)).collect();
        format!("{} regression(s): {}.", regressions.len(), list.join(", "))
    };
    let mut out = String::new();
    if markdown {
        out.push_str(&format!("## brokerbench compare: `{}`\n\n", c.scenario));
    }
    out.push_str(&table.to_string());
    out.push_str("\n\n");
    out.push_str(&verdict);
    out.push('\n');
    let untested: Vec<String> = c
        .rows
        .iter()
        .filter(|r| r.verdict == Verdict::Untested)
        .map(name)
        .collect();
    if !untested.is_empty() {
        out.push_str(&format!(
            "Untested: {} changed beyond the allowance with nothing to test them (fewer than 5 \
             whole steady seconds, per-second values missing, or a figure in one run only): {}.\n",
            untested.len(),
            untested.join(", ")
        ));
    }
    for note in &c.not_compared {
        out.push_str(&format!("Not compared: {note}\n"));
    }
    if markdown {
        out.push_str(&format!("\nTest: {}.\n", c.test));
    }
    out
}

fn figure(r: &Row, value: Option<f64>) -> String {
    let Some(value) = value else {
        return if r.unit == "s" { "never" } else { "-" }.into();
    };
    match r.unit.as_str() {
        "us" => crate::report::table::latency(value as u64),
        "msg/s" => format!("{value:.1}/s"),
        "s" => format!("{value:.2} s"),
        _ => format!("{value}"),
    }
}
