//! Measured evidence: results.json files from `brokerbench run`, judged
//! against the user's answers (their rate, their latency target).

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::answers::Answers;
use super::facts::{Criterion, Judged, PerBroker};
use crate::kind::BrokerKind;
use crate::results::account::FailureAccount;
use crate::results::{BrokerResult, Results};

/// The weight of measured evidence: more than any single known fact, since
/// it is the user's own traffic on their own machines.
pub(crate) const WEIGHT: f64 = 3.0;
/// The score of a broker that was not measured while others were.
pub(crate) const UNMEASURED: f64 = 5.0;

/// What one results file says about one broker.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Measurement {
    pub broker: BrokerKind,
    pub implementation: String,
    pub file: PathBuf,
    /// Target rate of the run; 0 for as fast as possible.
    pub target_rate_per_s: f64,
    /// Confirmed messages per second in the steady phase.
    pub confirmed_per_s: f64,
    /// From `run --find-max`: the highest rate that held (99% achieved,
    /// nothing lost, its SLO met); it stands for the broker's rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sustainable_per_s: Option<f64>,
    /// The worst p99 end-to-end latency over the groups, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Confirmed messages never delivered, over all groups.
    pub lost: u64,
    pub faults: usize,
    /// The slowest publish recovery after a fault that recovered.
    pub worst_recovery_s: Option<f64>,
    /// Faults after which publishing never recovered.
    pub unrecovered_faults: usize,
    pub complete: bool,
    /// The product the implementation stands in for (a Kafka-protocol broker: Apache
    /// Kafka), if it is a stand-in.
    pub stand_in_for: Option<String>,
    /// Whether its rate, latency and recovery figures enter the score: not a
    /// stand-in's, unless the user accepts stand-ins.
    pub used: bool,
    /// From a run whose groups fail messages on purpose: what became of
    /// the poison ones, over those groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<DeadLetters>,
    /// Its groups in other languages (docs/cross-language.md).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<LanguageRun>,
}

/// One group in another language, as measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LanguageRun {
    /// `python`, as scenarios write it.
    pub language: String,
    pub client: String,
    /// First deliveries per second in the steady phase.
    pub delivered_per_s: f64,
    /// The run was a `--find-max` search whose window held at this rate:
    /// the highest the group sustained, not just a rate it was offered.
    pub sustained: bool,
    pub p99_ms: Option<f64>,
    /// Events of the run's negative control its typed decoder refused.
    pub decode_failed: u64,
    pub lost: u64,
    /// Its agent stopped before it was told to.
    pub failed: bool,
    pub cpu_per_message_us: Option<f64>,
}

/// A failure run's dead letters, over its groups with failures.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct DeadLetters {
    /// Poison messages the broker took.
    pub poison: u64,
    /// Poison messages found in the dead-letter destination.
    pub dead_lettered: u64,
    /// Poison messages silently gone.
    pub poison_lost: u64,
    /// Messages that could be processed, found in the dead-letter destination.
    pub dead_lettered_wrongly: u64,
    /// The slowest group's median time from send to dead letter, ms.
    pub p50_ms: Option<f64>,
}

/// Reads results files written by `brokerbench run`; a stand-in's figures
/// are used only if `accept_stand_ins`.
pub(crate) fn load(files: &[PathBuf], accept_stand_ins: bool) -> Result<Vec<Measurement>> {
    let mut measured = Vec::new();
    for file in files {
        measured.extend(read(file, accept_stand_ins)?);
    }
    Ok(measured)
}

fn read(file: &Path, accept_stand_ins: bool) -> Result<Vec<Measurement>> {
    let results = Results::read(file)?;
    Ok(results
        .brokers
        .into_iter()
        .map(|b| measurement(file, b, accept_stand_ins))
        .collect())
}

/// What one broker's result says, as evidence.
fn measurement(file: &Path, b: BrokerResult, accept_stand_ins: bool) -> Measurement {
    let p99_us = b
        .latency_us
        .end_to_end
        .values()
        .filter(|s| s.count > 0)
        .map(|s| s.p99)
        .max();
    // A fault without the run's own verdict (null, or absent from files
    // written before it existed) did not recover if publishing did not.
    let unrecovered_faults = b
        .faults
        .iter()
        .filter(|f| {
            f.recovered
                .map_or(f.publish_recovered_after_s.is_none(), |r| !r)
        })
        .count();
    let worst_recovery_s = b
        .faults
        .iter()
        .filter_map(|f| f.publish_recovered_after_s)
        .reduce(f64::max);
    let failing: Vec<&FailureAccount> = b
        .groups
        .iter()
        .filter_map(|g| g.account.failures.as_ref())
        .collect();
    let dead_letters = (!failing.is_empty()).then(|| DeadLetters {
        poison: failing.iter().map(|f| f.poison).sum(),
        dead_lettered: failing
            .iter()
            .map(|f| f.dead_lettered - f.dead_lettered_wrongly.min(f.dead_lettered))
            .sum(),
        poison_lost: failing.iter().map(|f| f.poison_lost).sum(),
        dead_lettered_wrongly: failing.iter().map(|f| f.dead_lettered_wrongly).sum(),
        p50_ms: b
            .latency_us
            .time_to_dead_letter
            .values()
            .filter(|s| s.count > 0)
            .map(|s| s.p50 as f64 / 1000.0)
            .reduce(f64::max),
    });
    let languages = b
        .groups
        .iter()
        .filter_map(|g| {
            let agent = g.agent.as_ref()?;
            Some(LanguageRun {
                language: g.language.clone()?,
                client: agent.client.clone(),
                delivered_per_s: g.rate_per_s,
                sustained: b.find_max.as_ref().is_some_and(|f| f.found_per_s.is_some()),
                decode_failed: g.decode_failed,
                p99_ms: b
                    .latency_us
                    .end_to_end
                    .get(&g.group)
                    .filter(|s| s.count > 0)
                    .map(|s| s.p99 as f64 / 1000.0),
                lost: g.account.lost,
                failed: agent.failure.is_some(),
                cpu_per_message_us: agent.cpu_per_message_us,
            })
        })
        .collect();
    Measurement {
        languages,
        broker: b.broker,
        file: file.to_path_buf(),
        target_rate_per_s: b.load.target_rate_per_s,
        confirmed_per_s: b.publish.confirmed_per_s,
        sustainable_per_s: b.find_max.as_ref().and_then(|f| f.found_per_s),
        p99_ms: p99_us.map(|us| us as f64 / 1000.0),
        lost: b.groups.iter().map(|g| g.account.lost).sum(),
        faults: b.faults.len(),
        worst_recovery_s,
        unrecovered_faults,
        complete: b.complete,
        used: b.stand_in_for.is_none() || accept_stand_ins,
        implementation: b.implementation,
        stand_in_for: b.stand_in_for,
        dead_letters,
    }
}

/// The evidence criterion: per broker, a score from its measurements.
pub(crate) fn criterion(answers: &Answers, measured: &[Measurement]) -> Option<Criterion> {
    if measured.is_empty() {
        return None;
    }
    let judged = PerBroker::from_fn(|kind| {
        let all: Vec<&Measurement> = measured.iter().filter(|m| m.broker == kind).collect();
        let mine: Vec<&Measurement> = all.iter().copied().filter(|m| m.used).collect();
        match (all.first(), mine.is_empty()) {
            (None, _) => (
                UNMEASURED,
                "not measured: no results for it were given".to_string(),
            ),
            (Some(stand_in), true) => (UNMEASURED, stand_in_only(stand_in, &all)),
            (Some(_), false) => judge(answers, &mine),
        }
    });
    Some(Criterion {
        name: "measured",
        weight: WEIGHT,
        judged,
    })
}

/// How each broker's dead-letter path works, for the measured reason.
fn dead_letter_path(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::Rabbitmq => "natively (delivery limit and dead-letter exchange)",
        BrokerKind::Jetstream => {
            "through the advisory bridge (max_deliver advisories captured in a stream)"
        }
        BrokerKind::Kafka => "by application code in the consumer (a dead-letter topic)",
    }
}

/// The dead-letter criterion with failure runs as evidence: per broker
/// measured in such a run, its dead-lettering figures join the reason, and
/// a poison message silently lost lowers the score (in proportion to the
/// poison messages whose fate is known, and by 3 more; by 1 when a message
/// that could be processed was dead-lettered). Poison messages still held
/// or unverified at the end move nothing. The reason says what moved.
pub(crate) fn dead_letter_criterion(criterion: &mut Criterion, measured: &[Measurement]) {
    for kind in crate::kind::ALL {
        let runs: Vec<&DeadLetters> = measured
            .iter()
            .filter(|m| m.broker == kind && m.used)
            .filter_map(|m| m.dead_letters.as_ref())
            .collect();
        if runs.is_empty() {
            continue;
        }
        let sum = |f: fn(&DeadLetters) -> u64| runs.iter().map(|d| f(d)).sum::<u64>();
        let (poison, dead, lost, wrongly) = (
            sum(|d| d.poison),
            sum(|d| d.dead_lettered),
            sum(|d| d.poison_lost),
            sum(|d| d.dead_lettered_wrongly),
        );
        // Poison messages still held by the broker, or that it could not be
        // asked about, were neither dead-lettered nor lost: they count for
        // nothing either way.
        let unknown = poison.saturating_sub(dead + lost);
        let (score, reason) = criterion.judged.get_mut(kind);
        let before = *score;
        if dead + lost > 0 {
            *score *= dead as f64 / (dead + lost) as f64;
        }
        if lost > 0 {
            *score -= 3.0;
        }
        if wrongly > 0 {
            *score -= 1.0;
        }
        *score = (score.clamp(0.0, 10.0) * 10.0).round() / 10.0;
        let share = if poison > 0 {
            format!(" ({:.0}%)", 100.0 * dead as f64 / poison as f64)
        } else {
            String::new()
        };
        let mut measured = format!(
            "measured: dead-lettered {dead} of {poison} poison messages{share} {}",
            dead_letter_path(kind)
        );
        if unknown > 0 {
            measured.push_str(&format!(
                ", {unknown} still held by the broker or unverified at the end"
            ));
        }
        if let Some(p50) = runs.iter().filter_map(|d| d.p50_ms).reduce(f64::max) {
            measured.push_str(&format!(", p50 time to dead letter {p50:.0} ms"));
        }
        if lost > 0 {
            measured.push_str(&format!(", {lost} silently lost"));
        }
        if wrongly > 0 {
            measured.push_str(&format!(", {wrongly} dead-lettered wrongly"));
        }
        if *score != before {
            measured.push_str(&format!(" (moved the score from {before} to {score})"));
        }
        reason.push_str("; ");
        reason.push_str(&measured);
    }
}

/// The client-languages criterion with runs of groups in those languages as
/// evidence: per broker, each measured group in a language the user named
/// joins the reason ("python on jetstream (nats-py): 500 msg/s delivered,
/// p99 6 ms, 810 µs CPU per message"); a group that lost messages, or
/// whose consumer died, lowers that broker's score by 3. The reason says
/// what moved.
pub(crate) fn language_criterion(
    criterion: &mut Criterion,
    measured: &[Measurement],
    named: &[String],
    rate: f64,
) {
    for kind in crate::kind::ALL {
        let runs: Vec<&LanguageRun> = measured
            .iter()
            .filter(|m| m.broker == kind && m.used)
            .flat_map(|m| &m.languages)
            .filter(|r| named.contains(&r.language))
            .collect();
        if runs.is_empty() {
            continue;
        }
        let (score, reason) = criterion.judged.get_mut(kind);
        let before = *score;
        let bad = runs.iter().any(|r| r.lost > 0 || r.failed);
        // A search that found the group's most below the user's rate: that
        // consumer cannot keep up on this broker.
        let slow = runs.iter().any(|r| r.sustained && r.delivered_per_s < rate);
        let cost = 3.0 * f64::from(u8::from(bad)) + 2.0 * f64::from(u8::from(slow));
        *score = ((*score - cost).clamp(0.0, 10.0) * 10.0).round() / 10.0;
        let said: Vec<String> = runs
            .iter()
            .map(|r| {
                let mut s = match r.sustained {
                    true => format!(
                        "{} on {kind} ({}): {:.0} msg/s at most (find-max)",
                        r.language, r.client, r.delivered_per_s
                    ),
                    false => format!(
                        "{} on {kind} ({}): {:.0} msg/s delivered",
                        r.language, r.client, r.delivered_per_s
                    ),
                };
                if r.sustained && r.delivered_per_s < rate {
                    s.push_str(&format!(", below your {rate:.0} msg/s"));
                }
                if let Some(p99) = r.p99_ms {
                    s.push_str(&format!(", p99 {p99:.0} ms"));
                }
                if let Some(cpu) = r.cpu_per_message_us {
                    s.push_str(&format!(", {cpu:.0} µs CPU per message"));
                }
                if r.lost > 0 {
                    s.push_str(&format!(", {} lost", r.lost));
                }
                if r.failed {
                    s.push_str(", its consumer died");
                }
                if r.decode_failed > 0 {
                    s.push_str(&format!(", refused {} undecodable events", r.decode_failed));
                }
                s
            })
            .collect();
        reason.push_str("; measured: ");
        reason.push_str(&said.join("; "));
        if *score != before {
            reason.push_str(&format!(" (moved the score from {before} to {score})"));
        }
    }
}

/// Why a broker measured only through a stand-in keeps the neutral score;
/// its loss verdict is cited, labelled with what ran.
fn stand_in_only(first: &Measurement, all: &[&Measurement]) -> String {
    let product = first.stand_in_for.as_deref().unwrap_or("the product");
    let lost: u64 = all.iter().map(|m| m.lost).sum();
    let loss = match lost {
        0 => "lost no confirmed message".to_string(),
        n => format!("lost {n} confirmed messages"),
    };
    format!(
        "measured only on {}, a stand-in for {product}: its rate, latency and recovery \
         figures are not {product}'s and are not used (--accept-stand-ins uses them); \
         {} {loss}",
        first.implementation, first.implementation
    )
}

fn judge(answers: &Answers, mine: &[&Measurement]) -> Judged {
    let rate = answers.rate;
    let mut score = 10.0;
    let mut reasons = Vec::new();
    // Throughput: only runs offered at least the user's rate say anything,
    // and a search's highest sustainable rate stands for its broker's.
    let relevant: Vec<&&Measurement> = mine
        .iter()
        .filter(|m| {
            m.sustainable_per_s.is_some()
                || m.target_rate_per_s == 0.0
                || m.target_rate_per_s >= rate
        })
        .collect();
    let best = relevant
        .iter()
        .map(|m| m.sustainable_per_s.unwrap_or(m.confirmed_per_s))
        .fold(0.0, f64::max);
    let searched = relevant.iter().any(|m| m.sustainable_per_s == Some(best));
    let confirmed = if searched {
        "sustainable (--find-max)"
    } else {
        "confirmed"
    };
    if relevant.is_empty() {
        let most = mine.iter().map(|m| m.target_rate_per_s).fold(0.0, f64::max);
        reasons.push(format!(
            "measured only up to {most:.0} msg/s, below your {rate:.0}/s"
        ));
    } else if best >= 0.98 * rate {
        reasons.push(format!(
            "sustained your rate: {best:.0} msg/s {confirmed} (you need {rate:.0})"
        ));
    } else {
        score = 10.0 * (best / rate).min(1.0);
        reasons.push(format!(
            "did not sustain your rate: {best:.0} msg/s {confirmed} of the {rate:.0} you need"
        ));
    }
    if let Some(p99) = relevant
        .iter()
        .filter_map(|m| m.p99_ms)
        .reduce(f64::max)
        .filter(|_| answers.latency_ms > 0.0)
    {
        if p99 > answers.latency_ms {
            score -= 3.0;
            reasons.push(format!(
                "p99 end to end {p99:.1} ms, over your {} ms target",
                answers.latency_ms
            ));
        } else {
            reasons.push(format!(
                "p99 end to end {p99:.1} ms, within your {} ms target",
                answers.latency_ms
            ));
        }
    }
    let lost: u64 = mine.iter().map(|m| m.lost).sum();
    if lost > 0 {
        score -= 5.0;
        reasons.push(format!("lost {lost} confirmed messages"));
    } else {
        reasons.push("lost no confirmed message".to_string());
    }
    if mine.iter().any(|m| m.unrecovered_faults > 0) {
        score -= 4.0;
        reasons.push("publishing never recovered after a fault".to_string());
    } else if let Some(worst) = mine
        .iter()
        .filter_map(|m| m.worst_recovery_s)
        .reduce(f64::max)
    {
        if worst > 10.0 {
            score -= 2.0;
        }
        reasons.push(format!("recovered from faults within {worst:.1} s"));
    }
    let score = (score.clamp(0.0, 10.0) * 10.0).round() / 10.0;
    (score, reasons.join("; "))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::run::memory::Knobs;
    use crate::run::tests::{plan, run, With};

    #[tokio::test]
    async fn evidence_is_read_through_the_one_reader_older_files_included() {
        let plan = plan("[[faults]]\nat = \"100ms\"\naction = \"kill\"\nduration = \"200ms\"\n")
            .with(|p| p.load.duration = Duration::from_millis(600));
        let (_, mut json) = run(&plan, Knobs::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let today = dir.path().join("results.json");
        std::fs::write(&today, json.to_string()).unwrap();
        let m = load(&[today], false).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].broker, m[0].faults, m[0].lost),
            (BrokerKind::Rabbitmq, 1, 0)
        );
        assert_eq!(m[0].unrecovered_faults, 0);
        assert!(m[0].worst_recovery_s.is_some() && m[0].complete && m[0].used);

        // A file from before the recovery verdict (or with none): publishing
        // that never came back counts as not recovered.
        let fault = &mut json["brokers"][0]["faults"][0];
        fault.as_object_mut().unwrap().remove("recovered");
        fault["publish_recovered_after_s"] = serde_json::Value::Null;
        let older = dir.path().join("older.json");
        std::fs::write(&older, json.to_string()).unwrap();
        let m = load(std::slice::from_ref(&older), false).unwrap();
        assert_eq!(m[0].unrecovered_faults, 1);
        assert_eq!(m[0].worst_recovery_s, None);
        json["brokers"][0]["faults"][0]["recovered"] = serde_json::Value::Null;
        std::fs::write(&older, json.to_string()).unwrap();
        assert_eq!(load(&[older], false).unwrap()[0].unrecovered_faults, 1);
    }
}
