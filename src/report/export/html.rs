//! One self-contained HTML file: no script, no stylesheet or font from the
//! network, charts as inline SVG drawn with plotters. It holds:
//! - the comparison and the per-group account, as in the terminal;
//! - a percentile spectrum of publish and each group's end-to-end latency per
//!   broker, log scale to 99.999 % as HdrHistogram's plotter draws it;
//! - per second, throughput and p99, each fault's window shaded;
//! - the checks, and the settings.
//!
//! Figures carry their raw values in `data-` attributes, so a test (or a
//! script) can hold the page to `results.json`.

use std::fmt::Write;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::{broker_label, stand_in_notices, Document, Exporter};
use crate::metrics::decode_histogram;
use crate::report::table;
use crate::results::{BrokerResult, Results};

/// The HTML exporter.
pub(crate) struct Html;

impl Exporter for Html {
    fn export(&self, runs: &[Results]) -> Result<Vec<Document>> {
        let mut page = String::new();
        let title = runs
            .iter()
            .map(|r| r.scenario.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            page,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>brokerbench: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
            escape(&title)
        );
        for (i, r) in runs.iter().enumerate() {
            run(&mut page, r, i)?;
        }
        page.push_str("</body>\n</html>\n");
        Ok(vec![Document {
            file_name: "report.html".into(),
            content: page.into_bytes(),
        }])
    }
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}\
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.fail{color:#b00;font-weight:bold}.pass{color:#070}\
figure{margin:1rem 0}figcaption{font-size:.85rem;color:#555}\
pre{background:#f6f6f6;padding:.5rem;overflow:auto;font-size:.8rem}\
.note{background:#fff6d6;padding:.5rem;border-left:4px solid #e0b000}";

/// Colours of the lines, in order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Text safe in HTML content and attribute values.
fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(text)
}

fn run(page: &mut String, r: &Results, index: usize) -> Result<()> {
    let verdict = if r.passed() {
        "<span class=\"pass\">passed</span>"
    } else {
        "<span class=\"fail\">FAILED</span>"
    };
    let _ = writeln!(
        page,
        "<section class=\"run\" data-run=\"{index}\">\n<h1>brokerbench: {} {verdict}</h1>",
        escape(&r.scenario.name)
    );
    let _ = writeln!(
        page,
        "<p>{}</p>\n<p>Environment <b>{}</b>, started {}, brokerbench {}.{}</p>",
        escape(&r.scenario.description),
        escape(&r.environment),
        escape(&r.started_at),
        escape(&r.tool_version),
        r.incomplete_reason
            .as_ref()
            .map(|why| format!(" <span class=\"fail\">Incomplete: {}</span>", escape(why)))
            .unwrap_or_default()
    );
    for notice in stand_in_notices(r) {
        let _ = writeln!(page, "<p class=\"note\">{}</p>", escape(&notice));
    }
    summary(page, r);
    let _ = writeln!(page, "<h2>Latency by percentile</h2>");
    spectrum(
        page,
        r,
        "publish",
        "Publish latency (from the intended send time)",
        |b| Some(b.latency_us.publish.hdr.clone()),
    )?;
    for group in r.scenario.consumers.iter().map(|c| c.group.as_str()) {
        spectrum(
            page,
            r,
            &format!("end_to_end-{group}"),
            &format!("End-to-end latency of group {group}"),
            |b| b.latency_us.end_to_end.get(group).map(|s| s.hdr.clone()),
        )?;
    }
    let _ = writeln!(page, "<h2>Over time</h2>");
    for b in &r.brokers {
        over_time(page, b)?;
    }
    if !r.scenario.publish_only() {
        let _ = writeln!(page, "<h2>Consumer groups</h2>");
        html_table(page, &table::groups(r, table::Layout::Wide));
    }
    tables(page, r);
    checks(page, r);
    let _ = writeln!(
        page,
        "<h2>Settings</h2>\n<h3>Scenario, as resolved</h3>\n<pre>{}</pre>",
        escape(&serde_json::to_string_pretty(&r.scenario)?)
    );
    for b in &r.brokers {
        let _ = writeln!(
            page,
            "<h3>{}: {} at {}</h3>\n<pre data-settings=\"{}\">{}</pre>",
            broker_label(b),
            escape(&b.implementation),
            escape(&b.endpoint),
            b.broker,
            escape(&serde_json::to_string_pretty(&b.settings)?)
        );
    }
    page.push_str("</section>\n");
    Ok(())
}

/// The tables a run has when it has what they show: dead letters, the
/// cluster's nodes and the network through faults, a find-max search, the
/// harness, consumers in other languages.
fn tables(page: &mut String, r: &Results) {
    if let Some(dead_letters) = table::dead_letters(r, table::Layout::Wide) {
        let _ = writeln!(page, "<h2>Dead letters</h2>");
        html_table(page, &dead_letters);
    }
    if let Some(nodes) = table::cluster_faults(r, table::Layout::Wide) {
        let _ = writeln!(page, "<h2>Cluster nodes through the faults</h2>");
        html_table(page, &nodes);
    }
    if let Some(network) = table::network_faults(r, table::Layout::Wide) {
        let _ = writeln!(page, "<h2>Network faults (through the fault proxy)</h2>");
        html_table(page, &network);
    }
    if let Some(search) = table::find_max(r, table::Layout::Wide) {
        let _ = writeln!(page, "<h2>Highest sustainable rate (--find-max)</h2>");
        for found in table::find_max_found(r) {
            let _ = writeln!(page, "<p>{}</p>", escape(&found));
        }
        html_table(page, &search);
    }
    if let Some(harness) = table::harness(r, table::Layout::Wide) {
        let _ = writeln!(page, "<h2>The harness itself</h2>");
        html_table(page, &harness);
        for warning in table::harness_warnings(r) {
            let _ = writeln!(page, "<p class=\"warning\">{}</p>", escape(&warning));
        }
    }
    if let Some(agents) = table::agents(r) {
        let _ = writeln!(page, "<h2>Consumers in other languages</h2>");
        html_table(page, &agents);
    }
}

/// The comparison, with each figure's raw value in `data-value`.
fn summary(page: &mut String, r: &Results) {
    page.push_str("<h2>Summary</h2>\n<table id=\"summary\">\n<tr><th>broker</th><th>implementation</th><th>rate, msg/s</th><th>confirmed</th><th>publish p50</th><th>publish p99</th><th>publish p99.9</th><th>lost</th><th>duplicates</th><th>checks</th></tr>\n");
    for b in &r.brokers {
        let (lost, dup) = (b.lost(), b.duplicates());
        let p = &b.latency_us.publish;
        let cell = |field: &str, value: String, shown: String| {
            format!("<td class=\"n\" data-field=\"{field}\" data-value=\"{value}\">{shown}</td>")
        };
        let latency = |field: &str, us: u64| cell(field, us.to_string(), table::latency(us));
        let _ = writeln!(
            page,
            "<tr data-broker=\"{}\"><td>{}</td><td>{}</td>{}{}{}{}{}{}{}<td class=\"{}\">{}</td></tr>",
            b.broker,
            escape(&broker_label(b)),
            escape(&b.implementation),
            cell("publish.rate_per_s", b.publish.rate_per_s.to_string(), format!("{:.1}", b.publish.rate_per_s)),
            cell("publish.confirmed", b.publish.confirmed.to_string(), format!("{} of {}", b.publish.confirmed, b.publish.attempted)),
            latency("latency_us.publish.p50", p.p50),
            latency("latency_us.publish.p99", p.p99),
            latency("latency_us.publish.p999", p.p999),
            cell("lost", lost.to_string(), lost.to_string()),
            cell("duplicates", dup.to_string(), dup.to_string()),
            if b.passed() { "pass" } else { "fail" },
            if b.passed() { "all held" } else { "FAILED" },
        );
    }
    page.push_str("</table>\n");
}

fn checks(page: &mut String, r: &Results) {
    page.push_str("<h2>Checks</h2>\n<table id=\"checks\">\n<tr><th>broker</th><th>check</th><th>measured</th><th>result</th></tr>\n");
    for b in &r.brokers {
        for c in &b.checks {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"{}\">{}</td></tr>",
                b.broker,
                escape(&c.condition(&b.faults)),
                escape(&c.measured()),
                if c.passed { "pass" } else { "fail" },
                if c.passed { "held" } else { "FAILED" }
            );
        }
    }
    page.push_str("</table>\n");
}

/// A comfy table as an HTML table (its header and rows, not its drawing).
fn html_table(page: &mut String, t: &comfy_table::Table) {
    page.push_str("<table>\n<tr>");
    if let Some(header) = t.header() {
        for cell in header.cell_iter() {
            let _ = write!(page, "<th>{}</th>", escape(&cell.content()));
        }
    }
    page.push_str("</tr>\n");
    for row in t.row_iter() {
        page.push_str("<tr>");
        for cell in row.cell_iter() {
            let _ = write!(page, "<td>{}</td>", escape(&cell.content()));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
}

/// Percentile axis: x is the number of nines, −log10(1 − p), to 99.999 %.
const NINES: f64 = 5.0;

fn percentile_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    match x.round() as i32 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        3 => "99.9%".into(),
        4 => "99.99%".into(),
        5 => "99.999%".into(),
        _ => format!("{p:.3}%"),
    }
}

/// One chart: latency against percentile, a line per broker.
fn spectrum(
    page: &mut String,
    r: &Results,
    id: &str,
    caption: &str,
    hdr: impl Fn(&BrokerResult) -> Option<String>,
) -> Result<()> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = r
        .brokers
        .iter()
        .filter_map(|b| {
            let h = decode_histogram(&hdr(b)?).filter(|h| !h.is_empty())?;
            let points = (0..=(NINES * 20.0) as usize)
                .map(|i| {
                    let x = i as f64 / 20.0;
                    let q = (1.0 - 10f64.powf(-x)).min(1.0);
                    (x, h.value_at_quantile(q) as f64 / 1000.0)
                })
                .collect();
            Some((broker_label(b), points))
        })
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    let top = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.05;
    let svg = Chart {
        size: (900, 380),
        caption,
        x: 0.0..NINES,
        top,
        x_desc: "percentile",
        y_desc: "ms",
        x_labels: Some((6, &percentile_label)),
        shades: Vec::new(),
        lines: lines
            .iter()
            .map(|(name, points)| (name.clone(), vec![points.clone()]))
            .collect(),
        legend: SeriesLabelPosition::UpperLeft,
    }
    .draw()?;
    let points: usize = lines.iter().map(|(_, p)| p.len()).sum();
    let _ = writeln!(
        page,
        "<figure class=\"chart\" data-chart=\"spectrum-{id}\" data-lines=\"{}\" data-points=\"{points}\">{svg}<figcaption>{}: the steady phase's histogram, by percentile (HdrHistogram's percentile spectrum).</figcaption></figure>",
        lines.len(),
        escape(caption)
    );
    Ok(())
}

/// One chart: lines (each drawn as runs of points, a gap between runs)
/// over shaded spans, with a legend.
struct Chart<'a> {
    size: (u32, u32),
    caption: &'a str,
    x: std::ops::Range<f64>,
    top: f64,
    x_desc: &'a str,
    y_desc: &'a str,
    /// How many x labels, and how to write them; plotters' own by default.
    x_labels: Option<(usize, &'a LabelFormat)>,
    /// From, to, colour.
    shades: Vec<(f64, f64, RGBAColor)>,
    lines: Vec<(String, Vec<Run>)>,
    legend: SeriesLabelPosition,
}

/// How an axis label is written.
type LabelFormat = dyn Fn(&f64) -> String;

/// Points drawn as one unbroken line.
type Run = Vec<(f64, f64)>;

impl Chart<'_> {
    /// The chart as an SVG document.
    fn draw(self) -> Result<String> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size).into_drawing_area();
            root.fill(&WHITE).map_err(plot)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(self.caption, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(self.x.clone(), 0f64..self.top)
                .map_err(plot)?;
            let mut mesh = chart.configure_mesh();
            mesh.x_desc(self.x_desc).y_desc(self.y_desc);
            if let Some((count, format)) = self.x_labels {
                mesh.x_labels(count).x_label_formatter(format);
            }
            mesh.draw().map_err(plot)?;
            let top = self.top;
            for (from, to, colour) in self.shades {
                let span = [(from, 0.0), (to.max(from + 0.05), top)];
                chart
                    .draw_series([Rectangle::new(span, colour.filled())])
                    .map_err(plot)?;
            }
            for (i, (name, runs)) in self.lines.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                for (j, run) in runs.iter().enumerate() {
                    let drawn = chart
                        .draw_series(LineSeries::new(run.iter().copied(), colour.stroke_width(2)))
                        .map_err(plot)?;
                    if j == 0 {
                        drawn.label(name.as_str()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], colour)
                        });
                    }
                }
            }
            chart
                .configure_series_labels()
                .position(self.legend)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(plot)?;
            root.present().map_err(plot)?;
        }
        Ok(svg)
    }
}

fn plot<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e:?}")
}

/// One series over time: a value per second, none where nothing was measured.
struct Line {
    name: String,
    values: Vec<Option<f64>>,
}

/// A fault as the timeline's caption gives it; a network fault, what was
/// injected and what it cut or timed out; on a cluster, each node hit:
/// when it went down, whether it led, when another led and it was back.
fn fault_caption(f: &crate::results::FaultResult) -> String {
    let mut caption = format!("{} at {:.1}s", f.action.as_str(), f.started_s);
    if let Some(n) = &f.network {
        if let Some(latency) = n.latency_ms {
            caption.push_str(&format!(" (+{latency} ms each way)"));
        }
        if f.duration_s > 0.0 {
            caption.push_str(&format!(" for {}s", f.duration_s));
        }
        if n.connections_cut > 0 {
            caption.push_str(&format!(", {} connections cut", n.connections_cut));
        }
        if n.publish_timeouts > 0 {
            caption.push_str(&format!(", {} publishes timed out", n.publish_timeouts));
        }
    }
    for n in &f.nodes {
        let led = if n.was_leader { ", the leader" } else { "" };
        caption.push_str(&format!("; node {}{led} down at {:.1}s", n.node, n.hit_s));
        if let (Some(leader), Some(after)) = (&n.new_leader, n.new_leader_after_s) {
            caption.push_str(&format!(", {leader} leading at {:.1}s", n.hit_s + after));
        }
        match n.ready_after_s {
            Some(after) => caption.push_str(&format!(", back at {:.1}s", n.hit_s + after)),
            None => caption.push_str(", never back"),
        }
    }
    caption
}

/// Per second for one broker: throughput, and p99 latency; faults shaded.
fn over_time(page: &mut String, b: &BrokerResult) -> Result<()> {
    let counts = |values: &[u64]| values.iter().map(|&v| Some(v as f64)).collect();
    // A second without a value (the warmup, a stall) has no p99, not 0.
    let p99_ms = |s: &crate::results::IntervalSeries| {
        s.p99
            .iter()
            .zip(&s.count)
            .map(|(&p, &n)| (n > 0).then_some(p as f64 / 1000.0))
            .collect()
    };
    let line = |name: String, values| Line { name, values };
    let rates: Vec<Line> = std::iter::once(line("confirmed".into(), counts(&b.series.confirmed)))
        .chain(
            b.series
                .delivered
                .iter()
                .map(|(group, d)| line(format!("delivered to {group}"), counts(d))),
        )
        .collect();
    let p99: Vec<Line> =
        std::iter::once(line("publish".into(), p99_ms(&b.series.publish_latency_us)))
            .chain(
                b.series
                    .end_to_end_latency_us
                    .iter()
                    .map(|(group, s)| line(format!("end to end, {group}"), p99_ms(s))),
            )
            .collect();
    let label = broker_label(b);
    time_chart(
        page,
        b,
        &format!("rate-{}", b.broker),
        &format!("{label}: messages per second"),
        "msg/s",
        &rates,
    )?;
    time_chart(
        page,
        b,
        &format!("p99-{}", b.broker),
        &format!("{label}: p99 latency per second"),
        "ms",
        &p99,
    )?;
    // Groups with failures: their retries and dead letters, on a scale of their own.
    let failures: Vec<Line> = b
        .series
        .failed
        .iter()
        .map(|(group, f)| line(format!("failed attempts, {group}"), counts(f)))
        .chain(
            b.series
                .dead_lettered
                .iter()
                .map(|(group, d)| line(format!("dead-lettered, {group}"), counts(d))),
        )
        .collect();
    if !failures.is_empty() {
        time_chart(
            page,
            b,
            &format!("dead-letters-{}", b.broker),
            &format!("{label}: failed attempts and dead letters per second"),
            "msg/s",
            &failures,
        )?;
    }
    Ok(())
}

fn time_chart(
    page: &mut String,
    b: &BrokerResult,
    id: &str,
    caption: &str,
    unit: &str,
    lines: &[Line],
) -> Result<()> {
    let seconds = lines
        .iter()
        .map(|l| l.values.len())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let top = lines
        .iter()
        .flat_map(|l| l.values.iter().flatten().copied())
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    // The warmup, then each fault's window (down or frozen; a restart
    // until the broker was ready again).
    let mut shades = vec![(
        0.0,
        b.series.steady_start_s,
        RGBColor(200, 200, 200).mix(0.3),
    )];
    // On a cluster, each node hit is shaded while it was down.
    for f in &b.faults {
        if f.nodes.is_empty() {
            let length = f
                .broker_ready_after_s
                .unwrap_or(seconds - f.started_s)
                .max(f.duration_s);
            shades.push((
                f.started_s,
                f.started_s + length,
                RGBColor(214, 39, 40).mix(0.15),
            ));
        }
        for n in &f.nodes {
            let length = n.ready_after_s.unwrap_or(seconds - n.hit_s);
            shades.push((n.hit_s, n.hit_s + length, RGBColor(214, 39, 40).mix(0.15)));
        }
    }
    // Each second's value at its middle; a gap where there is none.
    let runs = |line: &Line| {
        let mut runs: Vec<Run> = vec![Vec::new()];
        for (s, v) in line.values.iter().enumerate() {
            match v {
                Some(v) => runs.last_mut().expect("one run").push((s as f64 + 0.5, *v)),
                None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
                None => {}
            }
        }
        runs.retain(|r| !r.is_empty());
        runs
    };
    let svg = Chart {
        size: (900, 300),
        caption,
        x: 0.0..seconds,
        top,
        x_desc: "seconds from the start of the load",
        y_desc: unit,
        x_labels: None,
        shades,
        lines: lines.iter().map(|l| (l.name.clone(), runs(l))).collect(),
        legend: SeriesLabelPosition::LowerRight,
    }
    .draw()?;
    let faults: Vec<String> = b.faults.iter().map(fault_caption).collect();
    let _ = writeln!(
        page,
        "<figure class=\"chart\" data-chart=\"{id}\" data-lines=\"{}\" data-seconds=\"{}\" data-faults=\"{}\">{svg}<figcaption>{}. Grey: warmup; red: {}.</figcaption></figure>",
        lines.len(),
        seconds,
        b.faults.len(),
        escape(caption),
        if faults.is_empty() { "no fault".to_string() } else { faults.join(", ") }
    );
    Ok(())
}
