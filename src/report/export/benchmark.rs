//! Figures for benchmark trackers: github-action-benchmark's custom JSON
//! (two files, by which way is better) and Bencher's BMF.
//!
//! Each figure is named `scenario/broker[/group]/metric`, so runs of the same
//! scenario line up across commits.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::{Document, Exporter};
use crate::results::{BrokerResult, Results};

/// One figure of one broker.
struct Figure {
    /// `broker` or `broker/group`.
    subject: String,
    /// `end_to_end_p99`, `rate`, ...
    measure: &'static str,
    unit: &'static str,
    value: f64,
    /// Lowest and highest per-second value in the steady phase, when known.
    range: Option<(f64, f64)>,
    bigger_is_better: bool,
}

fn figures(r: &Results) -> Vec<Figure> {
    let mut out = Vec::new();
    for b in &r.brokers {
        let subject = format!("{}/{}", r.scenario.name, super::tracked_name(b));
        let steady = steady_range(b, &b.series.confirmed);
        out.push(Figure {
            subject: subject.clone(),
            measure: "publish_rate",
            unit: "msg/s",
            value: b.publish.rate_per_s,
            range: None,
            bigger_is_better: true,
        });
        out.push(Figure {
            subject: subject.clone(),
            measure: "confirmed_rate",
            unit: "msg/s",
            value: b.publish.confirmed_per_s,
            range: steady,
            bigger_is_better: true,
        });
        let p = &b.latency_us.publish;
        // Nothing recorded is no figure (0 would read as the best ever).
        if p.count > 0 {
            for (measure, value) in [
                ("publish_p50", p.p50),
                ("publish_p99", p.p99),
                ("publish_p999", p.p999),
            ] {
                out.push(latency(&subject, measure, value));
            }
        }
        // A fault never recovered from has no time to track: the run's
        // checks fail it instead.
        if let Some(worst) = b.worst_recovery_s().filter(|s| s.is_finite()) {
            out.push(Figure {
                subject: subject.clone(),
                measure: "recovery",
                unit: "s",
                value: worst,
                range: None,
                bigger_is_better: false,
            });
        }
        for g in &b.groups {
            let subject = format!("{subject}/{}", g.group);
            let delivered = b.series.delivered.get(&g.group);
            out.push(Figure {
                subject: subject.clone(),
                measure: "delivery_rate",
                unit: "msg/s",
                value: g.rate_per_s,
                range: delivered.and_then(|d| steady_range(b, d)),
                bigger_is_better: true,
            });
            if let Some(e) = b
                .latency_us
                .end_to_end
                .get(&g.group)
                .filter(|e| e.count > 0)
            {
                for (measure, value) in [
                    ("end_to_end_p50", e.p50),
                    ("end_to_end_p99", e.p99),
                    ("end_to_end_p999", e.p999),
                ] {
                    out.push(latency(&subject, measure, value));
                }
            }
            let mut counts = vec![("lost", g.lost()), ("duplicates", g.account.duplicates)];
            if let Some(f) = &g.account.failures {
                counts.extend([
                    ("poison_lost", f.poison_lost),
                    ("dead_lettered_wrongly", f.dead_lettered_wrongly),
                ]);
            }
            for (measure, value) in counts {
                out.push(Figure {
                    subject: subject.clone(),
                    measure,
                    unit: "messages",
                    value: value as f64,
                    range: None,
                    bigger_is_better: false,
                });
            }
            if let Some(t) = b
                .latency_us
                .time_to_dead_letter
                .get(&g.group)
                .filter(|t| t.count > 0)
            {
                out.push(latency(&subject, "time_to_dead_letter_p50", t.p50));
                out.push(latency(&subject, "time_to_dead_letter_p99", t.p99));
            }
        }
    }
    out
}

fn latency(subject: &str, measure: &'static str, us: u64) -> Figure {
    Figure {
        subject: subject.to_string(),
        measure,
        unit: "us",
        value: us as f64,
        range: None,
        bigger_is_better: false,
    }
}

/// The lowest and highest whole second of `series` in the steady phase.
fn steady_range(b: &BrokerResult, series: &[u64]) -> Option<(f64, f64)> {
    let steady = b.steady(series);
    let lo = steady.iter().copied().min()?;
    let hi = steady.iter().copied().max()?;
    Some((lo as f64, hi as f64))
}

/// github-action-benchmark's `customSmallerIsBetter` / `customBiggerIsBetter` entry.
#[derive(Serialize)]
struct Entry {
    name: String,
    unit: &'static str,
    value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    range: Option<String>,
}

/// github-action-benchmark's two custom tools' files.
pub(crate) struct GithubActionBenchmark;

impl Exporter for GithubActionBenchmark {
    fn export(&self, runs: &[Results]) -> Result<Vec<Document>> {
        let (mut smaller, mut bigger) = (Vec::new(), Vec::new());
        for f in runs.iter().flat_map(figures) {
            let entry = Entry {
                name: format!("{}/{}", f.subject, f.measure),
                unit: f.unit,
                value: f.value,
                range: f.range.map(|(lo, hi)| format!("{lo}..{hi}")),
            };
            if f.bigger_is_better {
                bigger.push(entry);
            } else {
                smaller.push(entry);
            }
        }
        Ok(vec![
            Document {
                file_name: "benchmark-smaller-is-better.json".into(),
                content: serde_json::to_vec_pretty(&smaller)?,
            },
            Document {
                file_name: "benchmark-bigger-is-better.json".into(),
                content: serde_json::to_vec_pretty(&bigger)?,
            },
        ])
    }
}

/// A BMF measure.
#[derive(Serialize)]
struct Metric {
    value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lower_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upper_value: Option<f64>,
}

/// Bencher Metric Format: `{benchmark: {measure: {value, lower_value, upper_value}}}`.
pub(crate) struct Bmf;

impl Exporter for Bmf {
    fn export(&self, runs: &[Results]) -> Result<Vec<Document>> {
        let mut bmf: BTreeMap<String, BTreeMap<String, Metric>> = BTreeMap::new();
        for f in runs.iter().flat_map(figures) {
            // Bencher's measure slugs: lowercase, units in the name.
            let measure = format!("{}_{}", f.measure, f.unit.replace("msg/s", "per_s"));
            bmf.entry(f.subject).or_default().insert(
                measure,
                Metric {
                    value: f.value,
                    lower_value: f.range.map(|r| r.0),
                    upper_value: f.range.map(|r| r.1),
                },
            );
        }
        Ok(vec![Document {
            file_name: "bmf.json".into(),
            content: serde_json::to_vec_pretty(&bmf)?,
        }])
    }
}
