//! Comparing a run with a baseline: per broker, group and metric, the
//! change, and whether it is a regression.
//!
//! Our machines and CI runners are noisy, so a regression needs two things:
//! a change beyond the allowed one (`--max-regression`), and a Mann-Whitney U
//! test on the steady phase's per-second values saying the two runs differ
//! (two-sided, p < `alpha`). Mann-Whitney rather than Welch's t-test: the
//! per-second p99s of a broker are skewed and have outlier seconds (a GC, an
//! fsync), and a rank test needs no normality and is not carried by one
//! outlier. Per-second values are also autocorrelated, which makes any such
//! test too eager; the effect-size threshold guards against that.
//! Counts (lost, duplicates) and recovery times have no per-second series:
//! a lost message is never noise, so any more lost is a regression; more
//! duplicates and a slower recovery need the change beyond the threshold (and
//! for recovery, more than a second, the granularity of client backoff).

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

use crate::kind::BrokerKind;
use crate::metrics::decode_histogram;
use crate::results::{BrokerResult, GroupResult, IntervalSeries, Results};

/// The schema identifier of `compare --format json`.
pub(crate) const SCHEMA: &str = "brokerbench.compare/v1";

/// What a comparison allows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Allowance {
    /// The largest change for the worse that is not a regression, as a
    /// fraction (0.10: 10 %).
    pub max_regression: f64,
    /// Significance level of the test.
    pub alpha: f64,
    /// The smallest latency change, µs, that can be a regression: below
    /// it, two runs of one scenario on loopback differ by themselves.
    pub min_latency_change_us: f64,
}

/// Results that cannot be compared, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot compare: {0}")]
pub(crate) struct Incomparable(pub String);

/// One metric's comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Row {
    /// The broker.
    pub broker: BrokerKind,
    /// What ran in the current run, e.g. `Apache Kafka 4.4.0`.
    pub implementation: String,
    /// The product that implementation stands in for, if it is a stand-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stand_in_for: Option<String>,
    /// The consumer group, for per-group metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `rate`, `publish_p99`, `end_to_end_p99`, `lost`, `recovery` ...
    pub metric: String,
    /// `msg/s`, `us`, `count` or `s`.
    pub unit: String,
    /// Higher is better (rates) or lower is better (everything else).
    pub higher_is_better: bool,
    /// The baseline's figure; null when it was not measured (no latency
    /// recorded) or, for a recovery, when it never recovered.
    pub baseline: Option<f64>,
    /// The current run's figure, likewise.
    pub current: Option<f64>,
    /// (current − baseline) / baseline; null when either is null or the
    /// baseline is 0.
    pub change: Option<f64>,
    /// The test's two-sided p-value on the per-second values, Holm-adjusted
    /// over every test of the comparison; null when the metric has no
    /// per-second values or fewer than 5 steady seconds on a side.
    pub p_value: Option<f64>,
    /// What the change is.
    pub verdict: Verdict,
    /// Beyond the allowance (computed before rounding).
    #[serde(skip)]
    beyond: bool,
    /// The per-second values moved the same way as the whole-run figure.
    #[serde(skip)]
    agrees: bool,
}

/// What a row shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Verdict {
    /// Worse beyond the allowance, and shown to be real.
    Regression,
    /// Better beyond the allowance, and shown to be real.
    Improvement,
    /// Within the allowance, or the test cannot tell the runs apart.
    NoSignificantChange,
    /// Changed beyond the allowance, but nothing could test it: fewer than 5
    /// steady seconds on a side, or no per-second values in a results file.
    Untested,
}

/// A whole comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Comparison {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// The scenario compared.
    pub scenario: String,
    /// The allowance, as a fraction.
    pub max_regression: f64,
    /// The smallest latency change that can be a regression, µs.
    pub min_latency_change_us: f64,
    /// The significance level.
    pub alpha: f64,
    /// The test used on per-second values.
    pub test: String,
    /// Every metric compared.
    pub rows: Vec<Row>,
    /// Brokers in only one of the two runs, not compared.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_compared: Vec<String>,
}

impl Comparison {
    /// Rows that regressed.
    pub(crate) fn regressions(&self) -> impl Iterator<Item = &Row> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Regression)
    }
}

/// Compares `current` with `baseline`; refuses results of different
/// scenarios, settings, environments or implementations.
pub(crate) fn compare(
    baseline: &Results,
    current: &Results,
    allowance: Allowance,
) -> Result<Comparison, Incomparable> {
    // Each broker of the baseline with its result in the current run.
    let pairs: Vec<(&BrokerResult, Option<&BrokerResult>)> = baseline
        .brokers
        .iter()
        .map(|b| (b, current.brokers.iter().find(|c| c.broker == b.broker)))
        .collect();
    comparable(baseline, current, &pairs)?;
    let mut rows = Vec::new();
    let mut not_compared = Vec::new();
    for &(b, c) in &pairs {
        match c {
            Some(c) => rows.extend(broker_rows(b, c, allowance)),
            None => not_compared.push(format!("{}: only in the baseline", b.broker)),
        }
    }
    for c in &current.brokers {
        if !baseline.brokers.iter().any(|b| b.broker == c.broker) {
            not_compared.push(format!("{}: only in the current run", c.broker));
        }
    }
    if rows.is_empty() {
        return Err(Incomparable("the two runs have no broker in common".into()));
    }
    holm(&mut rows, allowance);
    Ok(Comparison {
        schema: SCHEMA.into(),
        scenario: current.scenario.name.clone(),
        max_regression: allowance.max_regression,
        min_latency_change_us: allowance.min_latency_change_us,
        alpha: allowance.alpha,
        test: "Mann-Whitney U, two-sided, normal approximation with tie correction, on the steady phase's per-second values".into(),
        rows,
        not_compared,
    })
}

/// The same scenario, settings, environment and implementations, or why not.
fn comparable(
    baseline: &Results,
    current: &Results,
    pairs: &[(&BrokerResult, Option<&BrokerResult>)],
) -> Result<(), Incomparable> {
    let what = |r: &Results| {
        let mut s = serde_json::to_value(&r.scenario).unwrap_or_default();
        if let Some(o) = s.as_object_mut() {
            // What does not change what one second measures.
            for key in ["source", "description", "brokers", "thresholds"] {
                o.remove(key);
            }
            if let Some(load) = o.get_mut("load").and_then(|l| l.as_object_mut()) {
                for key in ["duration", "warmup", "drain_timeout", "final_read"] {
                    load.remove(key);
                }
            }
            // The groups' own work is the application's, which is what a
            // gate watches: only their names must match.
            if let Some(groups) = o.get_mut("consumers").and_then(|c| c.as_array_mut()) {
                for g in groups.iter_mut().filter_map(|g| g.as_object_mut()) {
                    g.retain(|k, _| k == "group");
                }
            }
        }
        s
    };
    let (a, b) = (what(baseline), what(current));
    if a != b {
        let differs = a
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| b.get(k.as_str()) != Some(v))
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Incomparable(format!(
            "the scenarios differ ({differs}): baseline '{}', current '{}'",
            baseline.scenario.name, current.scenario.name
        )));
    }
    if baseline.environment != current.environment {
        return Err(Incomparable(format!(
            "the environments differ: baseline {}, current {}",
            baseline.environment, current.environment
        )));
    }
    for &(b, c) in pairs {
        if let Some(c) = c {
            if b.implementation != c.implementation {
                return Err(Incomparable(format!(
                    "{}: the implementations differ: baseline {}, current {}",
                    b.broker, b.implementation, c.implementation
                )));
            }
            if b.settings != c.settings {
                return Err(Incomparable(format!(
                    "{}: the broker settings differ: baseline {}, current {}",
                    b.broker,
                    serde_json::to_string(&b.settings).unwrap_or_default(),
                    serde_json::to_string(&c.settings).unwrap_or_default()
                )));
            }
        }
    }
    Ok(())
}

/// A figure and what can show that its change is real.
struct Measured {
    /// None: not measured, or (a recovery) none seen.
    value: Option<f64>,
    evidence: Evidence,
    /// A recovery that the run judged never to have happened (the broker
    /// was back in time to show it); not just one unseen.
    never: bool,
}

/// What decides whether a change is real.
#[derive(Clone)]
enum Evidence {
    /// The steady phase's per-second values, for the test; empty when the
    /// results file has none.
    Seconds(Vec<f64>),
    /// Any change at all (lost messages are never noise).
    AnyChange,
    /// A change larger than this much (one value per run, no test).
    MoreThan(f64),
}

fn broker_rows(b: &BrokerResult, c: &BrokerResult, allowance: Allowance) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add =
        |group: Option<&str>, metric: &str, unit: &str, higher: bool, pair: [Measured; 2]| {
            let [old, new] = pair;
            let what = What {
                broker: c,
                group,
                metric,
                unit,
                higher_is_better: higher,
            };
            rows.push(judge(what, old, new, allowance));
        };
    publish_rows(b, c, &mut add);
    for g in &b.groups {
        let Some(cg) = c.groups.iter().find(|x| x.group == g.group) else {
            continue;
        };
        group_rows(b, c, g, cg, &mut add);
    }
    recovery_rows(b, c, &mut add);
    rows
}

/// The publishing rows, through `add`: the confirmed rate and latency quantiles.
fn publish_rows(
    b: &BrokerResult,
    c: &BrokerResult,
    add: &mut impl FnMut(Option<&str>, &str, &str, bool, [Measured; 2]),
) {
    let rate = |r: &BrokerResult| Measured {
        value: Some(r.publish.confirmed_per_s),
        evidence: Evidence::Seconds(as_f64(r.steady(&r.series.confirmed))),
        never: false,
    };
    add(None, "rate", "msg/s", true, [rate(b), rate(c)]);
    for (metric, q) in [
        ("publish_p50", 0.5),
        ("publish_p99", 0.99),
        ("publish_p999", 0.999),
    ] {
        let m = |r: &BrokerResult| Measured {
            value: pick(&r.latency_us.publish, q),
            evidence: Evidence::Seconds(quantiles(r, Some(&r.series.publish_latency_us), q)),
            never: false,
        };
        add(None, metric, "us", false, [m(b), m(c)]);
    }
}

/// Group `g`'s rows against `cg`, through `add`: delivery, latency, lost, duplicates.
fn group_rows(
    b: &BrokerResult,
    c: &BrokerResult,
    g: &GroupResult,
    cg: &GroupResult,
    add: &mut impl FnMut(Option<&str>, &str, &str, bool, [Measured; 2]),
) {
    let group = Some(g.group.as_str());
    let rate = |r: &BrokerResult, rate_per_s: f64| Measured {
        value: Some(rate_per_s),
        evidence: Evidence::Seconds(
            r.series
                .delivered
                .get(&g.group)
                .map(|s| as_f64(r.steady(s)))
                .unwrap_or_default(),
        ),
        never: false,
    };
    add(
        group,
        "delivery_rate",
        "msg/s",
        true,
        [rate(b, g.rate_per_s), rate(c, cg.rate_per_s)],
    );
    for (metric, q) in [
        ("end_to_end_p50", 0.5),
        ("end_to_end_p99", 0.99),
        ("end_to_end_p999", 0.999),
    ] {
        let m = |r: &BrokerResult| Measured {
            value: r
                .latency_us
                .end_to_end
                .get(&g.group)
                .and_then(|s| pick(s, q)),
            evidence: Evidence::Seconds(quantiles(
                r,
                r.series.end_to_end_latency_us.get(&g.group),
                q,
            )),
            never: false,
        };
        add(group, metric, "us", false, [m(b), m(c)]);
    }
    for (metric, old, new, evidence) in [
        ("lost", g.lost(), cg.lost(), Evidence::AnyChange),
        (
            "duplicates",
            g.account.duplicates,
            cg.account.duplicates,
            Evidence::MoreThan(0.0),
        ),
    ] {
        let m = |v: u64| Measured {
            value: Some(v as f64),
            evidence: evidence.clone(),
            never: false,
        };
        add(group, metric, "count", false, [m(old), m(new)]);
    }
}

/// The recovery rows, through `add`: one per fault, the runs' faults paired in order.
fn recovery_rows(
    b: &BrokerResult,
    c: &BrokerResult,
    add: &mut impl FnMut(Option<&str>, &str, &str, bool, [Measured; 2]),
) {
    for (i, (fb, fc)) in b.faults.iter().zip(&c.faults).enumerate() {
        // One value per run; client backoff moves it by about a second.
        let m = |f: &crate::results::FaultResult| Measured {
            value: f.publish_recovered_after_s,
            evidence: Evidence::MoreThan(1.0),
            never: f.recovered == Some(false),
        };
        let metric = format!(
            "recovery (fault {}: {} at {}s)",
            i + 1,
            fb.action.as_str(),
            fb.at_s
        );
        add(None, &metric, "s", false, [m(fb), m(fc)]);
    }
}

/// Which figure a row is about.
struct What<'a> {
    broker: &'a BrokerResult,
    group: Option<&'a str>,
    metric: &'a str,
    unit: &'a str,
    higher_is_better: bool,
}

fn judge(what: What<'_>, old: Measured, new: Measured, allowance: Allowance) -> Row {
    let recovery = what.metric.starts_with("recovery");
    let (mut beyond, mut agrees, mut p_value) = (false, false, None);
    let mut verdict = Verdict::NoSignificantChange;
    let change = match (old.value, new.value) {
        (Some(o), Some(n)) if o != 0.0 => Some((n - o) / o),
        _ => None,
    };
    match (old.value, new.value) {
        (Some(o), Some(n)) => {
            let worse = if what.higher_is_better { n < o } else { n > o };
            beyond = n != o
                && change.is_none_or(|c| c.abs() > allowance.max_regression)
                && (what.unit != "us" || (n - o).abs() >= allowance.min_latency_change_us);
            let real = match (&old.evidence, &new.evidence) {
                (Evidence::Seconds(a), Evidence::Seconds(b)) => match mann_whitney(a, b) {
                    Some(test) => {
                        p_value = Some(test.p);
                        // The seconds moved the way the whole-run figure did.
                        agrees = (test.current_higher > 0.0) == (n > o);
                        None // decided after Holm's correction
                    }
                    None => Some(None),
                },
                (Evidence::AnyChange, _) => Some(Some(n != o)),
                (Evidence::MoreThan(d), _) => Some(Some((n - o).abs() > *d)),
                _ => Some(None),
            };
            let changed = beyond || (matches!(old.evidence, Evidence::AnyChange) && n != o);
            verdict = match (changed, real) {
                (false, _) => Verdict::NoSignificantChange,
                (true, Some(None)) => Verdict::Untested,
                (true, Some(Some(true))) if worse => Verdict::Regression,
                (true, Some(Some(true))) => Verdict::Improvement,
                (true, Some(Some(false))) => Verdict::NoSignificantChange,
                (true, None) => Verdict::NoSignificantChange, // set by `holm`
            };
        }
        // A fault recovered from in one run and, as that run judged it,
        // never in the other.
        (Some(_), None) if recovery && new.never => verdict = Verdict::Regression,
        (None, Some(_)) if recovery && old.never => verdict = Verdict::Improvement,
        (None, None) => {}
        // A figure in one run only (a latency nothing recorded, a recovery
        // too late in the load to see): nothing to compare it with.
        _ => verdict = Verdict::Untested,
    }
    Row {
        broker: what.broker.broker,
        implementation: what.broker.implementation.clone(),
        stand_in_for: what.broker.stand_in_for.clone(),
        group: what.group.map(str::to_string),
        metric: what.metric.to_string(),
        unit: what.unit.to_string(),
        higher_is_better: what.higher_is_better,
        baseline: old.value,
        current: new.value,
        change: change.map(|c| (c * 1e4).round() / 1e4),
        p_value,
        verdict,
        beyond,
        agrees,
    }
}

/// Holm's step-down correction of the tested rows' p-values, then their
/// verdicts: with a dozen figures per broker, one of them would pass a plain
/// p < 0.05 by chance in many comparisons of identical runs.
fn holm(rows: &mut [Row], allowance: Allowance) {
    let mut tested: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].p_value.is_some())
        .collect();
    tested.sort_by(|&a, &b| {
        rows[a]
            .p_value
            .unwrap_or(1.0)
            .total_cmp(&rows[b].p_value.unwrap_or(1.0))
    });
    let m = tested.len();
    let mut running = 0.0f64;
    for (k, &i) in tested.iter().enumerate() {
        let r = &mut rows[i];
        let adjusted = (r.p_value.unwrap_or(1.0) * (m - k) as f64).min(1.0);
        // Adjusted p-values never decrease down the order.
        running = running.max(adjusted);
        r.p_value = Some((running * 1e6).round() / 1e6);
        let real = running < allowance.alpha && r.agrees;
        let (o, n) = (r.baseline.unwrap_or(0.0), r.current.unwrap_or(0.0));
        let worse = if r.higher_is_better { n < o } else { n > o };
        r.verdict = match (r.beyond && real, worse) {
            (true, true) => Verdict::Regression,
            (true, false) => Verdict::Improvement,
            (false, _) => Verdict::NoSignificantChange,
        };
    }
}

fn as_f64(values: &[u64]) -> Vec<f64> {
    values.iter().map(|&v| v as f64).collect()
}

/// Quantile `q` of a summary; none if nothing was recorded.
fn pick(s: &crate::metrics::LatencySummary, q: f64) -> Option<f64> {
    let us = match q {
        q if q >= 0.999 => s.p999,
        q if q >= 0.99 => s.p99,
        _ => s.p50,
    };
    (s.count > 0).then_some(us as f64)
}

/// Quantile `q` of each steady second that holds values, from its
/// histogram; empty when the results have no per-second latency.
fn quantiles(r: &BrokerResult, series: Option<&IntervalSeries>, q: f64) -> Vec<f64> {
    let Some(series) = series else {
        return Vec::new();
    };
    r.steady(&series.hdr)
        .iter()
        .filter_map(|encoded| decode_histogram(encoded))
        .map(|h| h.value_at_quantile(q) as f64)
        .collect()
}

/// Fewest values per side the normal approximation is used with.
const MIN_SECONDS: usize = 5;

/// A Mann-Whitney U test's outcome.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Test {
    /// Two-sided p-value.
    pub p: f64,
    /// Positive when the second sample's values tend to be higher, negative
    /// when lower (n1·n2/2 − U of the first sample).
    pub current_higher: f64,
}

/// The Mann-Whitney U test of `a` against `b` (normal approximation,
/// tie-corrected, with continuity correction); none with fewer than
/// [`MIN_SECONDS`] values on a side.
pub(crate) fn mann_whitney(a: &[f64], b: &[f64]) -> Option<Test> {
    let (n1, n2) = (a.len(), b.len());
    if n1 < MIN_SECONDS || n2 < MIN_SECONDS {
        return None;
    }
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|&v| (v, true))
        .chain(b.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Ranks, ties sharing their mean rank; and the tie correction term.
    let n = all.len();
    let mut rank_sum_a = 0.0;
    let mut ties = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_sum_a += rank * all[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let (n1, n2, n) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if variance <= 0.0 {
        // Every value equal: nothing tells the runs apart.
        return Some(Test {
            p: 1.0,
            current_higher: 0.0,
        });
    }
    let z = ((u - mean).abs() - 0.5).max(0.0) / variance.sqrt();
    let normal = Normal::new(0.0, 1.0).expect("the standard normal");
    Some(Test {
        p: (2.0 * (1.0 - normal.cdf(z))).min(1.0),
        current_higher: mean - u,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mann_whitney_matches_a_known_example() {
        // scipy.stats.mannwhitneyu(a, b, alternative="two-sided",
        // method="asymptotic", use_continuity=True) gives p = 0.012424.
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let b = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0];
        let test = mann_whitney(&a, &b).unwrap();
        assert!((test.p - 0.012424).abs() < 1e-5, "{test:?}");
        assert!(test.current_higher > 0.0, "b is higher");
        assert!(mann_whitney(&b, &a).unwrap().current_higher < 0.0);
        // The same values: no difference.
        assert!(mann_whitney(&a, &a).unwrap().p > 0.9);
        assert_eq!(mann_whitney(&[1.0; 6], &[1.0; 6]).unwrap().p, 1.0);
        assert!(mann_whitney(&a[..4], &b).is_none(), "too few seconds");
    }

    /// Results with ten steady seconds of group `a`'s end-to-end latency
    /// recorded around `us` (each second: 100 values, spread by `spread`).
    fn recorded(us: u64, spread: u64, seed: u64) -> Results {
        let text = "name = \"recorded\"\n[load]\nrate = 100\nduration = \"10s\"\n[[consumers]]\ngroup = \"a\"\n";
        let plan = crate::scenario::Plan::parse(
            std::path::Path::new("recorded.toml"),
            text,
            &crate::scenario::Overrides::default(),
        )
        .unwrap();
        let mut results: Results = serde_json::from_value(serde_json::json!({
            "schema": "brokerbench.results/v1",
            "tool_version": "0",
            "started_at": "2026-11-22T00:00:00Z",
            "environment": "local",
            "scenario": serde_json::to_value(&plan).unwrap(),
            "brokers": [],
            "complete": true
        }))
        .unwrap();
        let mut whole = crate::metrics::Latency::default();
        let mut series = IntervalSeries::default();
        let mut state = seed;
        for _ in 0..10 {
            let mut second = crate::metrics::Latency::default();
            for _ in 0..100 {
                // A small deterministic generator: the same seed, the same run.
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = us + (state >> 33) % spread.max(1);
                second.record(std::time::Duration::from_micros(v));
                whole.record(std::time::Duration::from_micros(v));
            }
            series.push(&second);
        }
        let broker = serde_json::json!({
            "broker": "jetstream",
            "implementation": "nats-server 2.9.10",
            "endpoint": "nats://127.0.0.1:4222",
            "settings": {"storage": "file"},
            "load": {"open_loop": true, "target_rate_per_s": 100.0, "message_bytes": 512, "steady_seconds": 10.0},
            "publish": {"attempted": 1000, "confirmed": 1000, "failed": 0, "unknown": 0, "resent": 0, "unsent": 0, "rate_per_s": 100.0, "confirmed_per_s": 100.0},
            "groups": [{"group": "a", "delivered": 1000, "unique": 1000, "duplicates": 0, "redelivered": 0, "lost": 0, "recovered": 0, "unexpected": 0, "out_of_order": 0, "late": 0, "backlog": 0, "unverified": 0, "rate_per_s": 100.0}],
            "latency_us": {
                "publish": whole.summary(), "publish_service": whole.summary(),
                "end_to_end": {"a": whole.summary()}, "end_to_end_service": {"a": whole.summary()}
            },
            "faults": [],
            "series": {
                "interval_s": 1, "steady_start_s": 0.0,
                "confirmed": vec![100; 10], "errors": vec![0; 10], "delivered": {"a": vec![100; 10]},
                "publish_latency_us": series, "end_to_end_latency_us": {"a": series}
            },
            "errors": {},
            "drain": {"seconds": 0.1, "timed_out": false, "final_read_seconds": 0.0},
            "checks": [],
            "complete": true
        });
        results
            .brokers
            .push(serde_json::from_value(broker).unwrap());
        results
    }

    fn valid(c: &Comparison) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema/compare.v1.json");
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let json = serde_json::to_value(c).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
    }

    const ALLOW: Allowance = Allowance {
        max_regression: 0.10,
        alpha: 0.05,
        min_latency_change_us: 1000.0,
    };

    fn row<'a>(c: &'a Comparison, metric: &str) -> &'a Row {
        c.rows.iter().find(|r| r.metric == metric).unwrap()
    }

    #[test]
    fn noise_within_the_same_distribution_is_no_regression() {
        for seed in 1..=5 {
            let c = compare(
                &recorded(2_000, 1_000, seed),
                &recorded(2_000, 1_000, seed + 100),
                ALLOW,
            )
            .unwrap();
            assert_eq!(c.regressions().count(), 0, "seed {seed}: {:#?}", c.rows);
        }
    }

    #[test]
    fn a_slower_consumer_is_a_regression_and_a_faster_one_an_improvement() {
        let base = recorded(2_000, 1_000, 1);
        let slower = recorded(4_000, 1_000, 2);
        let c = compare(&base, &slower, ALLOW).unwrap();
        valid(&c);
        let e2e = row(&c, "end_to_end_p99");
        assert_eq!(e2e.verdict, Verdict::Regression, "{e2e:?}");
        assert!(
            e2e.p_value.unwrap() < 0.05 && e2e.change.unwrap() > 0.5,
            "{e2e:?}"
        );
        let c = compare(&slower, &base, ALLOW).unwrap();
        assert_eq!(row(&c, "end_to_end_p99").verdict, Verdict::Improvement);
        // 5 % slower is within a 10 % allowance, however sure the test is.
        let c = compare(&recorded(20_000, 100, 1), &recorded(21_000, 100, 2), ALLOW).unwrap();
        let e2e = row(&c, "end_to_end_p50");
        assert!(e2e.p_value.unwrap() < 0.01, "{e2e:?}");
        assert_eq!(e2e.verdict, Verdict::NoSignificantChange, "{e2e:?}");
    }

    #[test]
    fn one_more_lost_message_is_always_a_regression() {
        let base = recorded(2_000, 1_000, 1);
        let mut lossy = base.clone();
        lossy.brokers[0].groups[0].account.lost = 1;
        let c = compare(&base, &lossy, ALLOW).unwrap();
        assert_eq!(row(&c, "lost").verdict, Verdict::Regression);
    }

    #[test]
    fn different_scenarios_settings_or_implementations_are_refused() {
        let base = recorded(2_000, 1_000, 1);
        let mut other = base.clone();
        other.scenario.load.rate = 200.0;
        let err = compare(&base, &other, ALLOW).unwrap_err().to_string();
        assert!(err.contains("the scenarios differ (load)"), "{err}");
        let mut other = base.clone();
        other.brokers[0].implementation = "nats-server 2.10.0".into();
        let err = compare(&base, &other, ALLOW).unwrap_err().to_string();
        assert!(err.contains("implementations differ"), "{err}");
        let mut other = base.clone();
        other.brokers[0].settings = serde_json::from_str(r#"{"storage": "memory"}"#).unwrap();
        let err = compare(&base, &other, ALLOW).unwrap_err().to_string();
        assert!(err.contains("settings differ"), "{err}");
        let mut other = base.clone();
        other.environment = "external".into();
        assert!(compare(&base, &other, ALLOW).is_err());
        // The consumers' own work may change: that is what a gate watches.
        let mut slower = base.clone();
        slower.scenario.consumers[0].processing_time = std::time::Duration::from_millis(5);
        assert!(compare(&base, &slower, ALLOW).is_ok());
    }

    #[test]
    fn a_change_with_nothing_to_test_it_is_untested_not_a_regression() {
        // Results written before per-second latency was kept.
        let strip = |mut r: Results| {
            let series = &mut r.brokers[0].series;
            series.end_to_end_latency_us.clear();
            series.publish_latency_us = IntervalSeries::default();
            r
        };
        let base = strip(recorded(2_000, 1_000, 1));
        let slower = strip(recorded(4_000, 1_000, 2));
        let c = compare(&base, &slower, ALLOW).unwrap();
        for metric in ["end_to_end_p99", "publish_p99"] {
            let r = row(&c, metric);
            assert_eq!(r.verdict, Verdict::Untested, "{r:?}");
            assert_eq!(r.p_value, None);
        }
        assert_eq!(c.regressions().count(), 0);
    }

    #[test]
    fn seconds_that_move_against_the_figure_are_no_regression() {
        // The seconds say "lower" (p tiny), the whole-run p99 says higher:
        // a test of one thing cannot confirm a change of the other.
        let base = recorded(4_000, 1_000, 1);
        let mut odd = recorded(2_000, 1_000, 2);
        odd.brokers[0]
            .latency_us
            .end_to_end
            .get_mut("a")
            .unwrap()
            .p99 = 9_000;
        let c = compare(&base, &odd, ALLOW).unwrap();
        let e2e = row(&c, "end_to_end_p99");
        assert!(e2e.p_value.unwrap() < 0.05, "{e2e:?}");
        assert_eq!(e2e.verdict, Verdict::NoSignificantChange, "{e2e:?}");
    }

    #[test]
    fn counts_need_no_test_and_lost_needs_no_allowance() {
        let mut base = recorded(2_000, 1_000, 1);
        base.brokers[0].groups[0].account.lost = 100;
        let mut one_more = base.clone();
        one_more.brokers[0].groups[0].account.lost = 101;
        one_more.brokers[0].groups[0].account.duplicates = 1;
        let c = compare(&base, &one_more, ALLOW).unwrap();
        assert_eq!(
            row(&c, "lost").verdict,
            Verdict::Regression,
            "1 % more lost"
        );
        assert_eq!(row(&c, "duplicates").verdict, Verdict::Regression, "0 to 1");
        let c = compare(&one_more, &base, ALLOW).unwrap();
        assert_eq!(row(&c, "lost").verdict, Verdict::Improvement);
    }

    #[test]
    fn a_recovery_is_judged_by_what_each_run_saw() {
        let fault = |after: Option<f64>, recovered: Option<bool>| {
            serde_json::from_value::<crate::results::FaultResult>(serde_json::json!({
                "action": "kill", "at_s": 2.0, "duration_s": 1.0, "started_s": 2.0,
                "broker_ready_after_s": 1.5, "publish_recovered_after_s": after,
                "delivery_recovered_after_s": {"a": after}, "recovered": recovered,
                "messages": {"attempted": 0, "confirmed": 0, "failed": 0, "unknown": 0, "groups": {}}
            }))
            .unwrap()
        };
        let with = |after, recovered| {
            let mut r = recorded(2_000, 1_000, 1);
            r.brokers[0].faults.push(fault(after, recovered));
            r
        };
        let verdict = |a: &Results, b: &Results| {
            let c = compare(a, b, ALLOW).unwrap();
            c.rows
                .iter()
                .find(|r| r.metric.starts_with("recovery"))
                .unwrap()
                .verdict
        };
        let quick = with(Some(2.0), Some(true));
        assert_eq!(
            verdict(&quick, &with(Some(2.5), Some(true))),
            Verdict::NoSignificantChange
        );
        assert_eq!(
            verdict(&quick, &with(Some(6.0), Some(true))),
            Verdict::Regression
        );
        assert_eq!(
            verdict(&quick, &with(None, Some(false))),
            Verdict::Regression
        );
        assert_eq!(
            verdict(&with(None, Some(false)), &quick),
            Verdict::Improvement
        );
        // Back too late in the load to see a recovery: nothing to compare.
        assert_eq!(verdict(&quick, &with(None, None)), Verdict::Untested);
    }
}
