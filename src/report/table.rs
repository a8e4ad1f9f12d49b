//! The terminal view: a comparison table of the brokers, then per group.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

use crate::kind::BrokerKind;
use crate::metrics::harness::HarnessUse;
use crate::metrics::LatencySummary;
use crate::results::account::FailureAccount;
use crate::results::find_max::{FindMaxResult, Phase, Step, MAX_STEPS};
use crate::results::{AgentResult, BrokerResult, GroupResult, Results};

/// A latency in the unit that reads best: `850 µs`, `12.3 ms`, `2.01 s`.
pub(crate) fn latency(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=99_999 => format!("{:.1} ms", us as f64 / 1e3),
        100_000..=999_999 => format!("{:.0} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn rate(per_s: f64) -> String {
    if per_s >= 10_000.0 {
        format!("{:.1}k/s", per_s / 1e3)
    } else {
        format!("{per_s:.0}/s")
    }
}

fn percentiles(s: &LatencySummary) -> String {
    if s.count == 0 {
        return "-".into();
    }
    format!(
        "{} / {} / {} / {}",
        latency(s.p50),
        latency(s.p99),
        latency(s.p999),
        latency(s.max)
    )
}

fn new_table(header: Vec<&str>) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    table
}

/// How much a table may spread: the terminal's width decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Under 100 columns: the deciding figures only.
    Narrow,
    /// Under 150 columns: p50 and p99, implementations in the table.
    Medium,
    /// A wide terminal, a log or a report: everything.
    Wide,
}

impl Layout {
    /// The layout for a terminal `width` columns wide; `None` (not a
    /// terminal) is [`Layout::Wide`].
    pub(crate) fn for_width(width: Option<u16>) -> Self {
        match width {
            Some(w) if w < 100 => Layout::Narrow,
            Some(w) if w < 150 => Layout::Medium,
            _ => Layout::Wide,
        }
    }

    /// The layout for this process's standard output.
    pub(crate) fn of_terminal() -> Self {
        Layout::for_width(Table::new().width())
    }
}

/// Percentiles as the layout allows: p50 / p99 (/ p99.9 / max when wide).
fn percentiles_for(s: &LatencySummary, layout: Layout) -> String {
    if s.count == 0 {
        return "-".into();
    }
    match layout {
        Layout::Wide => percentiles(s),
        Layout::Medium => format!("{} / {}", latency(s.p50), latency(s.p99)),
        Layout::Narrow => latency(s.p99),
    }
}

/// The comparison of every broker measured. Below a wide layout, the
/// implementations and the reasons for a failed verdict are left to
/// [`notes`]; narrow, so are the target rate and the columns that say
/// nothing (no duplicates, no faults), so that every column stays readable
/// on 80 and 120 columns.
pub(crate) fn summary(results: &Results, layout: Layout) -> Table {
    let narrow = layout == Layout::Narrow;
    let any_duplicates = results
        .brokers
        .iter()
        .any(|b| b.groups.iter().any(|g| g.account.duplicates > 0));
    let any_faults = results.brokers.iter().any(|b| !b.faults.is_empty());
    let (publish, end_to_end) = match layout {
        Layout::Wide => (
            "publish p50 / p99 / p99.9 / max",
            "end to end p50 / p99 / p99.9 / max",
        ),
        Layout::Medium => ("publish p50 / p99", "end to end p50 / p99"),
        Layout::Narrow => ("publish p99", "e2e p99"),
    };
    let show_dup = !narrow || any_duplicates;
    let show_recovery = !narrow || any_faults;
    let wide = layout == Layout::Wide;
    let mut header = vec!["broker"];
    if wide {
        header.push("implementation");
    }
    header.extend([
        if narrow { "rate" } else { "rate (target)" },
        "confirmed",
        publish,
        end_to_end,
        "lost",
    ]);
    if show_dup {
        header.push("dup");
    }
    if show_recovery {
        header.push("recovery");
    }
    header.push("ok");
    let mut table = new_table(header);
    for b in &results.brokers {
        let target = if b.load.open_loop {
            rate(b.load.target_rate_per_s)
        } else {
            "max".into()
        };
        let (lost, duplicates) = (b.lost(), b.duplicates());
        let mut row = vec![b.broker.to_string()];
        if wide {
            row.push(match &b.stand_in_for {
                Some(product) => format!("{}, stand-in for {product}", b.implementation),
                None => b.implementation.clone(),
            });
        }
        row.extend([
            if narrow {
                rate(b.publish.rate_per_s)
            } else {
                format!("{} ({target})", rate(b.publish.rate_per_s))
            },
            format!("{}/{}", b.publish.confirmed, b.publish.attempted),
            percentiles_for(&b.latency_us.publish, layout),
            percentiles_for(&b.worst_end_to_end(), layout),
            // Publish only, lost is known when the broker said what it holds.
            match b.groups.is_empty() && b.publish.stored.is_none() {
                true => "-".into(),
                false => lost.to_string(),
            },
        ]);
        if show_dup {
            row.push(duplicates.to_string());
        }
        if show_recovery {
            row.push(match b.worst_recovery_s() {
                None => "-".into(),
                Some(s) if s.is_finite() => format!("{s:.1} s"),
                Some(_) => "never".into(),
            });
        }
        row.push(match (layout, b.passed()) {
            (Layout::Wide, _) | (_, true) => verdict(b),
            _ => "NO".into(),
        });
        table.add_row(row);
    }
    let first_figure = if wide { 2 } else { 1 };
    let last = table.column_count().saturating_sub(1);
    for column in (first_figure..last).filter(|&c| c != first_figure + 2 && c != first_figure + 3) {
        if let Some(c) = table.column_mut(column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// What a table of `layout` left out, as lines to print under it: each
/// broker's implementation (and, narrow, the target rate), and why a
/// broker failed.
pub(crate) fn notes(results: &Results, layout: Layout) -> Vec<String> {
    if layout == Layout::Wide {
        return Vec::new();
    }
    let mut notes = Vec::new();
    for b in &results.brokers {
        let target = match (layout, b.load.open_loop) {
            (Layout::Narrow, true) => format!("; target {}", rate(b.load.target_rate_per_s)),
            (Layout::Narrow, false) => "; as fast as possible".into(),
            _ => String::new(),
        };
        let stand_in = b
            .stand_in_for
            .as_ref()
            .map(|p| format!(", a stand-in for {p}"))
            .unwrap_or_default();
        notes.push(format!(
            "{}: {}{stand_in}{target}",
            b.broker, b.implementation
        ));
        if !b.passed() {
            notes.push(format!("{}: {}", b.broker, verdict(b)));
        }
    }
    notes
}

/// `yes`, or `NO` and what failed, in words.
fn verdict(b: &BrokerResult) -> String {
    use crate::results::CheckKind;
    let mut why: Vec<String> = Vec::new();
    let total = |kind: CheckKind| -> u64 {
        b.checks
            .iter()
            .filter(|c| c.check == kind && !c.passed)
            .filter_map(|c| c.value)
            .sum::<f64>() as u64
    };
    let failed = |kind: CheckKind| b.checks.iter().any(|c| c.check == kind && !c.passed);
    if failed(CheckKind::NoneLost) {
        why.push(format!("lost {}", total(CheckKind::NoneLost)));
    }
    if failed(CheckKind::NoneUnexpected) {
        why.push(format!("unexpected {}", total(CheckKind::NoneUnexpected)));
    }
    if failed(CheckKind::Drained) {
        let held: u64 = b.groups.iter().filter_map(|g| g.backlog).sum();
        let unverified: u64 = b.groups.iter().map(|g| g.unverified).sum();
        if held > 0 {
            why.push(format!("consumers behind: {held} left in the broker"));
        }
        if unverified > 0 {
            why.push(format!(
                "{unverified} undelivered, and the broker could not be asked whether it holds them"
            ));
        }
    }
    for fault in b.faults.iter().filter(|f| f.recovered == Some(false)) {
        let what = if fault.broker_ready_after_s.is_none() {
            "the broker never came back".to_string()
        } else {
            let mut parts: Vec<String> = Vec::new();
            if fault.publish_recovered_after_s.is_none() {
                parts.push("publishing".into());
            }
            parts.extend(
                fault
                    .delivery_recovered_after_s
                    .iter()
                    .filter(|(_, after)| after.is_none())
                    .map(|(group, _)| format!("group {group}")),
            );
            format!("{} never recovered", parts.join(", "))
        };
        // The broker's own refusal says most; else whatever failed first.
        let said = b
            .first_errors
            .get(&crate::driver::ErrorKind::Refused)
            .or_else(|| b.first_errors.values().next())
            .map(|why| format!("; first error: {why}"))
            .unwrap_or_default();
        let window = &fault.messages.publish;
        why.push(format!(
            "{what} after the {} at {}s (failed {}, unknown {} since it{said})",
            fault.action.as_str(),
            fault.at_s,
            window.failed,
            window.unknown
        ));
    }
    for c in b
        .checks
        .iter()
        .filter(|c| c.check == CheckKind::Threshold && !c.passed)
    {
        why.push(format!("{}: {}", c.condition(&b.faults), c.measured()));
    }
    if failed(CheckKind::Complete) && why.is_empty() {
        why.push("incomplete".into());
    }
    if why.is_empty() {
        "yes".into()
    } else {
        format!("NO: {}", why.join(", "))
    }
}

/// Per consumer group: delivery rate, end-to-end latency and the account.
pub(crate) fn groups(results: &Results, layout: Layout) -> Table {
    groups_limited(results, usize::MAX, layout)
}

/// [`groups`], the first `rows` rows only. Below a wide layout, the
/// account's columns that are 0 for every group are left out (the reports
/// and results.json have them).
pub(crate) fn groups_limited(results: &Results, rows: usize, layout: Layout) -> Table {
    let all: Vec<(&BrokerResult, &GroupResult)> = results
        .brokers
        .iter()
        .flat_map(|b| b.groups.iter().map(move |g| (b, g)))
        .take(rows)
        .collect();
    type Column = (&'static str, fn(&GroupResult) -> String);
    let account: [Column; 9] = [
        ("lost", |g| g.lost().to_string()),
        ("decode failed", |g| g.decode_failed.to_string()),
        ("late", |g| g.late.to_string()),
        ("backlog", |g| {
            g.backlog.map_or("?".into(), |n| n.to_string())
        }),
        ("dup", |g| g.account.duplicates.to_string()),
        ("redelivered", |g| g.account.redelivered.to_string()),
        ("recovered", |g| g.account.recovered.to_string()),
        ("unexpected", |g| g.account.unexpected.to_string()),
        ("out of order", |g| g.account.out_of_order.to_string()),
    ];
    // `lost` always shows: it is the verdict.
    let shown: Vec<&Column> = account
        .iter()
        .filter(|(name, value)| {
            layout == Layout::Wide || *name == "lost" || all.iter().any(|(_, g)| value(g) != "0")
        })
        .collect();
    let latency_header = match layout {
        Layout::Wide => "end to end p50 / p99 / p99.9 / max",
        Layout::Medium => "end to end p50 / p99",
        Layout::Narrow => "end to end p99",
    };
    let mut header = vec!["broker", "group", "delivered", latency_header];
    header.extend(shown.iter().map(|(name, _)| *name));
    let mut table = new_table(header);
    for (b, g) in all {
        let e2e = b
            .latency_us
            .end_to_end
            .get(&g.group)
            .map(|s| percentiles_for(s, layout))
            .unwrap_or_default();
        let mut row = vec![
            b.broker.to_string(),
            group_label(g),
            format!("{} ({})", g.account.unique, rate(g.rate_per_s)),
            e2e,
        ];
        row.extend(shown.iter().map(|(_, value)| value(g)));
        table.add_row(row);
    }
    table
}

/// Per group with failures: what became of its poison and transient
/// messages, and how long dead-lettering took; `None` when no group of the
/// run fails messages.
pub(crate) fn dead_letters(results: &Results, layout: Layout) -> Option<Table> {
    let rows: Vec<(&BrokerResult, &GroupResult, &FailureAccount)> = results
        .brokers
        .iter()
        .flat_map(|b| {
            b.groups
                .iter()
                .filter_map(move |g| Some((b, g, g.account.failures.as_ref()?)))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let wide = layout != Layout::Narrow;
    let mut header = vec!["broker", "group", "poison", "dead-lettered", "poison lost"];
    if wide {
        header.extend(["wrongly", "processed", "failed attempts"]);
    }
    header.push(match layout {
        Layout::Narrow => "to dead letter p99",
        _ => "to dead letter p50 / p99 / max",
    });
    let mut table = new_table(header);
    for (b, g, f) in rows {
        let mut row = vec![
            b.broker.to_string(),
            g.group.clone(),
            f.poison.to_string(),
            f.dead_lettered.to_string(),
            f.poison_lost.to_string(),
        ];
        if wide {
            row.extend([
                f.dead_lettered_wrongly.to_string(),
                format!("{} of {}", f.processed, f.processed + f.poison),
                f.failed_attempts.to_string(),
            ]);
        }
        let timing = b.latency_us.time_to_dead_letter.get(&g.group);
        row.push(match (timing, layout) {
            (Some(t), _) if t.count == 0 => "-".into(),
            (Some(t), Layout::Narrow) => latency(t.p99),
            (Some(t), _) => format!(
                "{} / {} / {}",
                latency(t.p50),
                latency(t.p99),
                latency(t.max)
            ),
            (None, _) => "-".into(),
        });
        table.add_row(row);
    }
    Some(table)
}

/// On clusters: each node a fault hit, whether it led, when another node was
/// reported leading, when it was back and caught up (seconds from its hit);
/// on the fault's first row, when publishing came back (from the fault's
/// start) and what the fault's window lost. `None` without cluster faults.
pub(crate) fn cluster_faults(results: &Results, layout: Layout) -> Option<Table> {
    let seconds = |s: Option<f64>| s.map_or("never".into(), |s| format!("{s:.1} s"));
    let mut rows = Vec::new();
    for b in &results.brokers {
        // Node N by number where the results name the nodes.
        let number = |name: &str| match b.nodes.iter().position(|n| n == name) {
            Some(i) => format!("node {}", i + 1),
            None => name.to_string(),
        };
        for f in &b.faults {
            let lost: u64 = f.messages.groups.values().map(|g| g.lost).sum();
            for (row, n) in f.nodes.iter().enumerate() {
                let controller = f
                    .leadership_before
                    .as_ref()
                    .and_then(|l| l.controller.as_deref())
                    == Some(n.name.as_str());
                let node = match (n.was_leader, controller) {
                    (true, true) => format!("{} (leader, controller)", n.node),
                    (true, false) => format!("{} (leader)", n.node),
                    (false, true) => format!("{} (controller)", n.node),
                    (false, false) => n.node.to_string(),
                };
                let new_leader = match (&n.new_leader, n.new_leader_after_s) {
                    (Some(leader), _) if !n.was_leader => format!("{} (no change)", number(leader)),
                    (Some(leader), Some(after)) if layout != Layout::Narrow => {
                        format!("{} after {after:.1} s", number(leader))
                    }
                    (Some(_), after) => seconds(after),
                    (None, _) => "none reported".into(),
                };
                rows.push(vec![
                    b.broker.to_string(),
                    format!("{} at {:.0} s", f.action.as_str(), f.at_s),
                    node,
                    new_leader,
                    seconds(n.ready_after_s),
                    seconds(n.rejoined_after_s),
                    // The fault's own figures, once: counted from its start.
                    match row {
                        0 => seconds(f.publish_recovered_after_s),
                        _ => String::new(),
                    },
                    match row {
                        0 => lost.to_string(),
                        _ => String::new(),
                    },
                ]);
            }
        }
    }
    if rows.is_empty() {
        return None;
    }
    let mut table = new_table(vec![
        "broker",
        "fault",
        "node",
        "another led",
        "node back",
        "rejoined",
        "publishing back",
        "lost",
    ]);
    for row in rows {
        table.add_row(row);
    }
    Some(table)
}

/// Network faults, each as injected and as it showed: the link given
/// (latency ± jitter, a cut, a black hole, for how long), publish p50 before
/// and during, the connections cut and new, when as many were open again,
/// publishes timed out, and when publishing came back. `None` without
/// network faults.
pub(crate) fn network_faults(results: &Results, layout: Layout) -> Option<Table> {
    let seconds = |s: Option<f64>| s.map_or("never".into(), |s| format!("{s:.1} s"));
    let mut rows = Vec::new();
    for b in &results.brokers {
        for f in &b.faults {
            let Some(n) = &f.network else { continue };
            let injected = match (n.latency_ms, n.jitter_ms) {
                (Some(l), Some(j)) if j > 0.0 => format!("+{l} ms ± {j} ms each way"),
                (Some(l), _) => format!("+{l} ms each way"),
                _ => f.action.as_str().to_string(),
            };
            let injected = match f.duration_s {
                d if d > 0.0 => format!("{injected}, {d} s"),
                _ => injected,
            };
            let p50 = n.publish_p50_ms.map_or("-".into(), |p| {
                let ms = |v: f64| latency((v * 1e3).round() as u64);
                match layout {
                    Layout::Narrow => format!("+{:.1} ms", p.during - p.before),
                    _ => format!("{} → {}", ms(p.before), ms(p.during)),
                }
            });
            rows.push(vec![
                b.broker.to_string(),
                format!("{} at {:.0} s", f.action.as_str(), f.at_s),
                injected,
                p50,
                format!("{} / {}", n.connections_cut, n.connections_new),
                seconds(n.reconnected_after_s),
                n.publish_timeouts.to_string(),
                seconds(f.publish_recovered_after_s),
            ]);
        }
    }
    if rows.is_empty() {
        return None;
    }
    let mut table = new_table(vec![
        "broker",
        "fault",
        "injected",
        "publish p50 before → during",
        "connections cut / new",
        "reconnected",
        "timeouts",
        "publishing back",
    ]);
    for row in rows {
        table.add_row(row);
    }
    Some(table)
}

/// A group's name, with its language and client when it is not
/// brokerbench's own consumer: `risk (python, aio-pika)`.
fn group_label(g: &GroupResult) -> String {
    match (&g.language, &g.agent) {
        (Some(language), Some(agent)) => format!("{} ({language}, {})", g.group, agent.client),
        (Some(language), None) => format!("{} ({language})", g.group),
        _ => g.group.clone(),
    }
}

/// Per group in another language: what its agent cost per message, beside
/// the harness's own figures, and how it ended; `None` when no group of the
/// run is one.
pub(crate) fn agents(results: &Results) -> Option<Table> {
    let rows: Vec<(&BrokerResult, &GroupResult, &AgentResult)> = results
        .brokers
        .iter()
        .flat_map(|b| {
            b.groups
                .iter()
                .filter_map(move |g| Some((b, g, g.agent.as_ref()?)))
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let header = vec![
        "broker",
        "group",
        "language",
        "client",
        "agent CPU",
        "CPU per message",
        "ended",
    ];
    let mut table = new_table(header);
    for (b, g, a) in rows {
        table.add_row(vec![
            b.broker.to_string(),
            g.group.clone(),
            g.language.clone().unwrap_or_default(),
            a.client.clone(),
            a.cpu_s.map_or("-".into(), |s| format!("{s:.2} s")),
            a.cpu_per_message_us
                .map_or("-".into(), |us| format!("{us:.1} µs")),
            match &a.failure {
                Some(_) => "FAILED (below)".into(),
                None => "when told".into(),
            },
        ]);
    }
    Some(table)
}

/// Why each agent that failed did, with the end of its stderr.
pub(crate) fn agent_failures(results: &Results) -> Vec<String> {
    results
        .brokers
        .iter()
        .flat_map(|b| {
            b.groups.iter().filter_map(move |g| {
                let failure = g.agent.as_ref()?.failure.as_ref()?;
                Some(format!("{}: {failure}", b.broker))
            })
        })
        .collect()
}

/// Per broker, brokerbench's own use of the machine over the steady window:
/// the proof that the harness was not the limit, or the warning that it may
/// have been; `None` when no broker carries the figures.
pub(crate) fn harness(results: &Results, layout: Layout) -> Option<Table> {
    let rows: Vec<(&BrokerResult, &HarnessUse)> = results
        .brokers
        .iter()
        .filter_map(|b| Some((b, b.harness.as_ref()?)))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let wide = layout != Layout::Narrow;
    let mut header = vec!["broker", "brokerbench cores", "CPU per message"];
    if wide {
        header.extend(["busiest worker", "machine busy", "peak memory"]);
    }
    header.push("harness the limit?");
    let mut table = new_table(header);
    for (b, h) in rows {
        let mut row = vec![
            b.broker.to_string(),
            format!("{:.2} of {}", h.cores_used, h.cores),
            h.cpu_per_message_us
                .map_or("-".into(), |us| format!("{us:.1} µs")),
        ];
        if wide {
            row.extend([
                if h.worker_busy.is_empty() {
                    "-".into()
                } else {
                    format!("{:.0}%", h.busiest_worker() * 100.0)
                },
                h.machine_busy
                    .map_or("-".into(), |m| format!("{:.0}%", m * 100.0)),
                format!("{:.0} MiB", h.max_rss_mib),
            ]);
        }
        row.push(if h.limited { "MAYBE" } else { "no" }.into());
        table.add_row(row);
    }
    Some(table)
}

/// `--find-max`: every step of every broker's search, in the order run.
pub(crate) fn find_max(results: &Results, layout: Layout) -> Option<Table> {
    let searches: Vec<(&BrokerResult, &FindMaxResult)> = results
        .brokers
        .iter()
        .filter_map(|b| Some((b, b.find_max.as_ref()?)))
        .collect();
    if searches.is_empty() {
        return None;
    }
    let wide = layout != Layout::Narrow;
    let mut header = vec!["broker", "step", "target", "confirmed"];
    if wide {
        header.extend(["publish p99", "end to end p99"]);
    }
    header.push("held?");
    let mut table = new_table(header);
    for (b, search) in searches {
        for (n, step) in search.steps.iter().enumerate() {
            let mut row = vec![
                b.broker.to_string(),
                format!("{} {}", n + 1, phase(step.phase)),
                match step.target_per_s {
                    0.0 => "max".to_string(),
                    target => rate(target),
                },
                rate(step.confirmed_per_s),
            ];
            if wide {
                row.extend([
                    step.publish_p99_us.map_or("-".into(), latency),
                    step.end_to_end_p99_us.map_or("-".into(), latency),
                ]);
            }
            row.push(match (step.phase, step.held) {
                (Phase::ClosedLoop, _) => "ceiling".into(),
                (_, true) => "yes".into(),
                (_, false) => format!("no: {}", step.why_not.join(", ")),
            });
            table.add_row(row);
        }
    }
    Some(table)
}

/// What `--find-max` found, a line per broker.
pub(crate) fn find_max_found(results: &Results) -> Vec<String> {
    results
        .brokers
        .iter()
        .filter_map(|b| Some(found(b.broker, b.find_max.as_ref()?)))
        .collect()
}

/// What `--find-max` found for `broker`, in a line.
pub(crate) fn found(broker: BrokerKind, search: &FindMaxResult) -> String {
    let mut rule = "99% of the target sent and confirmed, nothing lost".to_string();
    for slo in &search.slo {
        rule.push_str(&format!(", {slo}"));
    }
    if search.step_limit_reached {
        rule.push_str(&format!(
            "; the {MAX_STEPS}-step limit ended the search before 3%, so this is a lower bound"
        ));
    }
    match search.found_per_s {
        Some(found) => format!(
            "{broker}: highest sustainable rate {} (closed loop {}; {rule})",
            rate(found),
            rate(search.closed_loop_per_s)
        ),
        None => format!("{broker}: no rate held ({rule})"),
    }
}

/// A broker's headline, printed once its result is in: what was confirmed
/// of what was sent, the rate, and whether its checks passed.
pub(crate) fn headline(result: &BrokerResult) -> String {
    let p = &result.publish;
    let mut not = String::new();
    for (n, what) in [
        (p.failed, "failed"),
        (p.unknown, "unknown"),
        (p.unsent, "unsent"),
    ] {
        if n > 0 {
            not.push_str(&format!(", {n} {what}"));
        }
    }
    let limited = match &result.harness {
        Some(h) if h.limited => " (the harness may have been the limit)",
        _ => "",
    };
    format!(
        "{}: {} confirmed of {} sent{not}, {:.0} msg/s{limited}, checks {}",
        result.broker,
        p.confirmed,
        p.attempted,
        p.rate_per_s,
        if result.passed() { "passed" } else { "FAILED" }
    )
}

/// One line per step of `--find-max`, printed as it is measured.
pub(crate) fn step_line(broker: BrokerKind, n: usize, step: &Step) -> String {
    let target = match step.target_per_s {
        0.0 => "as fast as confirmed".to_string(),
        rate => format!("{rate:.0} msg/s"),
    };
    let verdict = match (step.phase, step.held) {
        (Phase::ClosedLoop, _) => "the ceiling".to_string(),
        (_, true) => "held".to_string(),
        (_, false) => format!("did not hold: {}", step.why_not.join(", ")),
    };
    let verdict = match step.harness_limited {
        true => format!("{verdict} (the harness may have been the limit)"),
        false => verdict,
    };
    format!(
        "{broker}: find-max step {n} ({}) at {target}: {:.0} msg/s confirmed, publish p99 {}, end to end p99 {}; {verdict}",
        phase(step.phase),
        step.confirmed_per_s,
        step.publish_p99_us.map_or("-".into(), latency),
        step.end_to_end_p99_us.map_or("-".into(), latency),
    )
}

/// A step's phase in words.
pub(crate) fn phase(phase: Phase) -> &'static str {
    match phase {
        Phase::ClosedLoop => "closed loop",
        Phase::Coarse => "coarse",
        Phase::Bisect => "bisect",
        Phase::Repeat => "repeat",
    }
}

/// Per broker whose harness figures call for one, a warning line: the
/// harness may have been the limit, or the machine was saturated.
pub(crate) fn harness_warnings(results: &Results) -> Vec<String> {
    results
        .brokers
        .iter()
        .filter_map(|b| {
            let warning = b.harness.as_ref()?.warning.as_ref()?;
            Some(format!("warning: {}: {warning}", b.broker))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_read_in_their_best_unit() {
        assert_eq!(latency(850), "850 µs");
        assert_eq!(latency(12_345), "12.3 ms");
        assert_eq!(latency(250_000), "250 ms");
        assert_eq!(latency(2_010_000), "2.01 s");
    }
}
