//! The scenario's thresholds, measured: one check per limit and per place
//! it applies to (the broker, each group, each fault).

use std::collections::BTreeMap;

use super::{BrokerResult, Check, CheckKind};
use crate::metrics::LatencySummary;
use crate::scenario::thresholds::{Limit, Metric, Scope};

/// A check for each of `limits` on `b`. A figure that was not measured (no
/// latency recorded, a fault never recovered from) fails its threshold: a
/// limit is a promise, and nothing was shown to keep it.
pub(crate) fn checks(limits: &BTreeMap<Metric, Limit>, b: &BrokerResult) -> Vec<Check> {
    let mut checks = Vec::new();
    for (&metric, &limit) in limits {
        let mut check = |value: Option<f64>, group: Option<&str>, fault: Option<usize>| {
            let unit = metric.unit();
            let limit = limit.value_in(unit);
            let passed = value.is_some_and(|v| {
                if metric.is_minimum() {
                    v >= limit
                } else {
                    v <= limit
                }
            });
            checks.push(Check {
                check: CheckKind::Threshold,
                metric: Some(metric),
                group: group.map(str::to_string),
                fault,
                passed,
                value,
                limit: Some(limit),
                unit: Some(unit),
            });
        };
        match metric.scope() {
            Scope::Broker => check(broker_value(metric, b), None, None),
            Scope::Group => {
                for g in &b.groups {
                    check(group_value(metric, b, &g.group), Some(&g.group), None);
                }
            }
            Scope::Fault => {
                for (i, fault) in b.faults.iter().enumerate() {
                    check(fault.publish_recovered_after_s, None, Some(i));
                }
            }
        }
    }
    checks
}

fn broker_value(metric: Metric, b: &BrokerResult) -> Option<f64> {
    match metric {
        Metric::RateRatio => (b.load.target_rate_per_s > 0.0)
            .then(|| (b.publish.rate_per_s / b.load.target_rate_per_s * 1e4).round() / 1e4),
        Metric::Failed => Some(b.publish.failed as f64),
        Metric::Unsent => Some(b.publish.unsent as f64),
        latency => percentile(latency, &b.latency_us.publish),
    }
}

fn group_value(metric: Metric, b: &BrokerResult, group: &str) -> Option<f64> {
    let g = b.groups.iter().find(|g| g.group == group)?;
    let count = match metric {
        Metric::Lost => g.lost(),
        Metric::Duplicates => g.account.duplicates,
        Metric::Redelivered => g.account.redelivered,
        Metric::OutOfOrder => g.account.out_of_order,
        latency => return percentile(latency, b.latency_us.end_to_end.get(group)?),
    };
    Some(count as f64)
}

/// The latency figure a metric names, µs; none if nothing was recorded.
fn percentile(metric: Metric, s: &LatencySummary) -> Option<f64> {
    if s.count == 0 {
        return None;
    }
    let us = match metric {
        Metric::PublishP50 | Metric::EndToEndP50 => s.p50,
        Metric::PublishP90 | Metric::EndToEndP90 => s.p90,
        Metric::PublishP99 | Metric::EndToEndP99 => s.p99,
        Metric::PublishP999 | Metric::EndToEndP999 => s.p999,
        Metric::PublishMax | Metric::EndToEndMax => s.max,
        other => unreachable!("{other} is not a latency"),
    };
    Some(us as f64)
}
