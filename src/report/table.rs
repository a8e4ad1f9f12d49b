//! The terminal view: a comparison table of the brokers, then per group.

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};

use super::{BrokerResult, Results};
use crate::metrics::LatencySummary;

/// A latency in the unit that reads best: `850 µs`, `12.3 ms`, `2.01 s`.
pub fn latency(us: u64) -> String {
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

/// The worst group's end-to-end figures, percentile by percentile.
fn worst_end_to_end(b: &BrokerResult) -> LatencySummary {
    let mut worst = LatencySummary::default();
    for s in b.latency_us.end_to_end.values() {
        worst.count += s.count;
        worst.p50 = worst.p50.max(s.p50);
        worst.p99 = worst.p99.max(s.p99);
        worst.p999 = worst.p999.max(s.p999);
        worst.max = worst.max.max(s.max);
    }
    worst
}

fn new_table(header: Vec<&str>) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    table
}

/// The comparison of every broker measured.
pub fn summary(results: &Results) -> Table {
    let mut table = new_table(vec![
        "broker",
        "implementation",
        "rate (target)",
        "confirmed",
        "publish p50 / p99 / p99.9 / max",
        "end to end p50 / p99 / p99.9 / max",
        "lost",
        "dup",
        "recovery",
        "ok",
    ]);
    for b in &results.brokers {
        let target = if b.load.open_loop {
            rate(b.load.target_rate_per_s)
        } else {
            "max".into()
        };
        let lost: u64 = b.groups.iter().map(|g| g.account.lost).sum();
        let duplicates: u64 = b.groups.iter().map(|g| g.account.duplicates).sum();
        table.add_row(vec![
            b.broker.to_string(),
            match &b.stand_in_for {
                Some(product) => format!("{}, stand-in for {product}", b.implementation),
                None => b.implementation.clone(),
            },
            format!("{} ({target})", rate(b.publish.rate_per_s)),
            format!("{}/{}", b.publish.confirmed, b.publish.attempted),
            percentiles(&b.latency_us.publish),
            percentiles(&worst_end_to_end(b)),
            lost.to_string(),
            duplicates.to_string(),
            match b.worst_recovery_s() {
                None => "-".into(),
                Some(s) if s.is_finite() => format!("{s:.1} s"),
                Some(_) => "never".into(),
            },
            verdict(b),
        ]);
    }
    for column in [3, 6, 7, 8] {
        if let Some(c) = table.column_mut(column) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// `yes`, or `NO` and what failed, in words.
fn verdict(b: &BrokerResult) -> String {
    use super::CheckKind;
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
pub fn groups(results: &Results) -> Table {
    groups_limited(results, usize::MAX)
}

/// [`groups`], the first `rows` rows only.
pub fn groups_limited(results: &Results, rows: usize) -> Table {
    let mut table = new_table(vec![
        "broker",
        "group",
        "delivered",
        "end to end p50 / p99 / p99.9 / max",
        "lost",
        "late",
        "backlog",
        "dup",
        "redelivered",
        "recovered",
        "unexpected",
        "out of order",
    ]);
    let all = results
        .brokers
        .iter()
        .flat_map(|b| b.groups.iter().map(move |g| (b, g)));
    for (b, g) in all.take(rows) {
        let a = &g.account;
        let e2e = b
            .latency_us
            .end_to_end
            .get(&g.group)
            .map(percentiles)
            .unwrap_or_default();
        table.add_row(vec![
            b.broker.to_string(),
            g.group.clone(),
            format!("{} ({})", a.unique, rate(g.rate_per_s)),
            e2e,
            a.lost.to_string(),
            g.late.to_string(),
            g.backlog.map_or("?".into(), |n| n.to_string()),
            a.duplicates.to_string(),
            a.redelivered.to_string(),
            a.recovered.to_string(),
            a.unexpected.to_string(),
            a.out_of_order.to_string(),
        ]);
    }
    table
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
