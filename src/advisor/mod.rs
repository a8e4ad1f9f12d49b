//! The advisor: answers to the questions that decide a broker choice, scored
//! per broker and criterion into a ranking with its reasons; measured results
//! enter as one more criterion. docs/advisor.md explains the model.

pub(crate) mod answers;
pub(crate) mod evidence;
pub(crate) mod facts;
pub(crate) mod scenario;

use serde::Serialize;

use answers::Answers;
use evidence::Measurement;
use facts::Criterion;

use crate::broker;
use crate::kind::BrokerKind;

/// The schema name of `advise --json` output.
pub(crate) const SCHEMA: &str = "brokerbench.advice/v1";

/// The advice: a ranking with reasons, what the evidence changed, and the
/// nearest change of answers that would flip the first place.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Advice {
    pub schema: &'static str,
    /// The first broker of the ranking.
    pub recommendation: BrokerKind,
    pub ranking: Vec<Ranked>,
    pub answers: Answers,
    /// Questions not answered, which took their neutral default.
    pub defaulted: Vec<&'static str>,
    pub evidence: Option<Evidence>,
    pub nearest_flip: Option<Flip>,
}

/// One broker's place.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Ranked {
    pub broker: BrokerKind,
    /// 0 to 100: the weighted mean of the criteria scores, times ten.
    pub score: f64,
    /// The reasons, most weighty first: "criterion (score/10): why".
    pub reasons: Vec<String>,
    pub criteria: Vec<Scored>,
}

/// One criterion for one broker.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Scored {
    pub criterion: &'static str,
    pub weight: f64,
    /// 0 to 10.
    pub score: f64,
    pub reason: String,
}

/// What measured results did to the ranking.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Evidence {
    pub measurements: Vec<Measurement>,
    /// The order on answers alone.
    pub ranking_without: Vec<BrokerKind>,
    /// Whether the measurements changed the order.
    pub changed_ranking: bool,
    /// Per broker, the measured criterion's score and reasons.
    pub effects: Vec<Effect>,
}

/// The measured criterion for one broker.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Effect {
    pub broker: BrokerKind,
    pub weight: f64,
    /// 0 to 10.
    pub score: f64,
    pub reason: String,
}

/// The nearest change of one answer that puts another broker first.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Flip {
    pub question: &'static str,
    pub from: String,
    pub to: String,
    pub first: BrokerKind,
}

/// The product a recommendation names.
pub(crate) fn product(kind: BrokerKind) -> &'static str {
    broker::info(kind).display_name
}

/// Scores `answers`, with `measured` results as evidence if any.
pub(crate) fn advise(
    answers: &Answers,
    defaulted: Vec<&'static str>,
    measured: &[Measurement],
) -> Advice {
    let known = facts::criteria(answers);
    let without = rank(&known);
    let measured_criterion = evidence::criterion(answers, measured);
    let mut all = with_dead_letters(answers, known, measured);
    all.extend(measured_criterion.clone());
    let ranking = rank(&all);
    let evidence = measured_criterion.map(|c| {
        let order = |r: &[Ranked]| r.iter().map(|r| r.broker).collect::<Vec<_>>();
        Evidence {
            measurements: measured.to_vec(),
            changed_ranking: order(&without) != order(&ranking),
            ranking_without: order(&without),
            effects: crate::kind::ALL
                .into_iter()
                .map(|kind| {
                    let (score, reason) = c.judged.get(kind);
                    Effect {
                        broker: kind,
                        weight: c.weight,
                        score: *score,
                        reason: reason.clone(),
                    }
                })
                .collect(),
        }
    });
    let first = ranking[0].broker;
    Advice {
        schema: SCHEMA,
        recommendation: first,
        nearest_flip: nearest_flip(answers, first, measured),
        ranking,
        answers: answers.clone(),
        defaulted,
        evidence,
    }
}

/// Weighted means, best first; ties keep RabbitMQ, JetStream, Kafka order.
fn rank(criteria: &[Criterion]) -> Vec<Ranked> {
    let total_weight: f64 = criteria.iter().map(|c| c.weight).sum();
    let mut ranked: Vec<Ranked> = crate::kind::ALL
        .into_iter()
        .map(|kind| {
            let mut scored: Vec<Scored> = criteria
                .iter()
                .map(|c| Scored {
                    criterion: c.name,
                    weight: c.weight,
                    score: c.judged.get(kind).0,
                    reason: c.judged.get(kind).1.clone(),
                })
                .collect();
            let sum: f64 = scored.iter().map(|s| s.weight * s.score).sum();
            let score = (10.0 * sum / total_weight * 10.0).round() / 10.0;
            scored.sort_by(|a, b| {
                let spread = |s: &Scored| s.weight * (10.0 - s.score);
                b.weight
                    .total_cmp(&a.weight)
                    .then(spread(b).total_cmp(&spread(a)))
            });
            let reasons = scored
                .iter()
                .filter(|s| s.weight > 0.0)
                .map(|s| format!("{} ({}/10): {}", s.criterion, s.score, s.reason))
                .collect();
            Ranked {
                broker: kind,
                score,
                reasons,
                criteria: scored,
            }
        })
        .collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
    ranked
}

/// The first broker for `answers`, with the same evidence.
fn first(answers: &Answers, measured: &[Measurement]) -> BrokerKind {
    let mut criteria = with_dead_letters(answers, facts::criteria(answers), measured);
    criteria.extend(evidence::criterion(answers, measured));
    rank(&criteria)[0].broker
}

/// `criteria` with the dead-letter one judged on failure runs too, and the
/// client-languages one on runs of groups in the languages named.
fn with_dead_letters(
    answers: &Answers,
    mut criteria: Vec<Criterion>,
    measured: &[Measurement],
) -> Vec<Criterion> {
    if let Some(c) = criteria.iter_mut().find(|c| c.name == "dead letters") {
        evidence::dead_letter_criterion(c, measured);
    }
    if let Some(c) = criteria.iter_mut().find(|c| c.name == "client languages") {
        let named: Vec<String> = answers.languages.iter().map(answers::value).collect();
        evidence::language_criterion(c, measured, &named, answers.rate);
    }
    criteria
}

/// Tries every nearby change of one answer, nearest first (one step of a
/// rate band before two; deciding questions before the others), and returns
/// the first that puts another broker first.
fn nearest_flip(answers: &Answers, top: BrokerKind, measured: &[Measurement]) -> Option<Flip> {
    let mut changes: Vec<answers::Change> = answers::QUESTIONS
        .iter()
        .flat_map(|q| q.changes(answers))
        .collect();
    // A stable sort: at equal distance, the questions' order (deciding first).
    changes.sort_by_key(|c| c.distance);
    changes.into_iter().find_map(|change| {
        let now_first = first(&change.answers, measured);
        (now_first != top).then_some(Flip {
            question: change.question,
            from: change.from,
            to: change.to,
            first: now_first,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::answers::{DeadLetter, Delivery, GivenAnswers, Language};
    use super::*;

    fn answers(dead_letter: DeadLetter, languages: &[Language], rate: f64) -> Answers {
        GivenAnswers {
            dead_letter: Some(dead_letter),
            languages: Some(languages.to_vec()),
            rate: Some(rate),
            ..Default::default()
        }
        .complete()
        .unwrap()
        .0
    }

    fn kind(name: &str) -> BrokerKind {
        name.parse().unwrap()
    }

    fn measured(broker: BrokerKind, confirmed_per_s: f64, lost: u64) -> Measurement {
        Measurement {
            broker,
            implementation: broker.to_string(),
            file: "results.json".into(),
            target_rate_per_s: 0.0,
            confirmed_per_s,
            sustainable_per_s: None,
            p99_ms: Some(2.0),
            lost,
            faults: 1,
            worst_recovery_s: Some(3.0),
            unrecovered_faults: 0,
            complete: lost == 0,
            stand_in_for: None,
            used: true,
            dead_letters: None,
            languages: Vec::new(),
        }
    }

    /// The dead-letter criterion's score and reason for `broker` in `advice`.
    fn dead_letter_judgement(advice: &Advice, broker: BrokerKind) -> (f64, String) {
        let ranked = advice.ranking.iter().find(|r| r.broker == broker).unwrap();
        let c = ranked
            .criteria
            .iter()
            .find(|c| c.criterion == "dead letters")
            .unwrap();
        (c.score, c.reason.clone())
    }

    #[test]
    fn groups_in_the_languages_named_are_evidence_and_a_loss_moves_the_score() {
        let run = |broker: &str, lost, failed| Measurement {
            languages: vec![evidence::LanguageRun {
                language: "python".into(),
                client: "nats-py".into(),
                delivered_per_s: 500.0,
                sustained: false,
                p99_ms: Some(6.5),
                decode_failed: 0,
                lost,
                failed,
                cpu_per_message_us: Some(810.0),
            }],
            ..measured(kind(broker), 500.0, 0)
        };
        let answers = answers(DeadLetter::No, &[Language::Python], 500.0);
        let languages = |measured: &[Measurement]| {
            let all = with_dead_letters(&answers, facts::criteria(&answers), measured);
            all.into_iter()
                .find(|c| c.name == "client languages")
                .unwrap()
        };
        let unmeasured = languages(&[]);
        let clean = languages(&[run("jetstream", 0, false)]);
        let (score, reason) = clean.judged.get(BrokerKind::Jetstream);
        assert_eq!(
            *score,
            unmeasured.judged.get(BrokerKind::Jetstream).0,
            "{reason}"
        );
        assert!(
            reason.contains("python on jetstream (nats-py): 500 msg/s delivered, p99 6 ms, 810 µs CPU per message"),
            "{reason}"
        );
        for (lost, failed) in [(3, false), (0, true)] {
            let bad = languages(&[run("jetstream", lost, failed)]);
            let (score, reason) = bad.judged.get(BrokerKind::Jetstream);
            let before = unmeasured.judged.get(BrokerKind::Jetstream).0;
            assert_eq!(*score, (before - 3.0).max(0.0), "{reason}");
            assert!(reason.contains("moved the score"), "{reason}");
        }
        // A search that sustained less than the user's rate costs 2; one
        // that sustained more, nothing; both say it was the most.
        for (found, cost) in [(400.0, 2.0), (2100.0, 0.0)] {
            let mut searched = run("jetstream", 0, false);
            searched.languages[0].sustained = true;
            searched.languages[0].delivered_per_s = found;
            searched.languages[0].decode_failed = 12;
            let c = languages(&[searched]);
            let (score, reason) = c.judged.get(BrokerKind::Jetstream);
            let before = unmeasured.judged.get(BrokerKind::Jetstream).0;
            assert_eq!(*score, (before - cost).max(0.0), "{reason}");
            let said =
                format!("python on jetstream (nats-py): {found:.0} msg/s at most (find-max)");
            assert!(reason.contains(&said), "{reason}");
            assert_eq!(
                reason.contains("below your 500 msg/s"),
                cost > 0.0,
                "{reason}"
            );
            assert!(reason.contains("refused 12 undecodable events"), "{reason}");
        }
        // A language the user did not name is no evidence.
        let go_only = answers_with_go();
        let all = with_dead_letters(
            &go_only,
            facts::criteria(&go_only),
            &[run("jetstream", 3, false)],
        );
        let c = all
            .into_iter()
            .find(|c| c.name == "client languages")
            .unwrap();
        assert!(!c.judged.get(BrokerKind::Jetstream).1.contains("measured"));
    }

    fn answers_with_go() -> Answers {
        answers(DeadLetter::No, &[Language::Go], 500.0)
    }

    #[test]
    fn failure_runs_are_evidence_for_the_dead_letter_criterion() {
        let a = answers(DeadLetter::Required, &[Language::Go], 300.0);
        let run = |broker: &str, dead_lettered, poison_lost| Measurement {
            dead_letters: Some(evidence::DeadLetters {
                poison: 37,
                dead_lettered,
                poison_lost,
                dead_lettered_wrongly: 0,
                p50_ms: Some(420.0),
            }),
            ..measured(kind(broker), 200.0, 0)
        };
        let before = advise(&a, vec![], &[]);
        let (rabbit_before, _) = dead_letter_judgement(&before, kind("rabbitmq"));
        let (jet_before, _) = dead_letter_judgement(&before, kind("jetstream"));
        let advice = advise(
            &a,
            vec![],
            &[run("rabbitmq", 37, 0), run("jetstream", 20, 17)],
        );
        // Every poison message dead-lettered: the figures join the reason,
        // the score stays.
        let (score, reason) = dead_letter_judgement(&advice, kind("rabbitmq"));
        assert_eq!(score, rabbit_before);
        assert!(
            reason.contains("measured: dead-lettered 37 of 37 poison messages (100%) natively")
                && reason.contains("p50 time to dead letter 420 ms")
                && !reason.contains("moved"),
            "{reason}"
        );
        // Poison messages silently lost: the score drops, and says so.
        let (score, reason) = dead_letter_judgement(&advice, kind("jetstream"));
        assert!(score < jet_before, "{score} vs {jet_before}");
        assert!(
            reason.contains("dead-lettered 20 of 37")
                && reason.contains("17 silently lost")
                && reason.contains(&format!("moved the score from {jet_before} to {score}")),
            "{reason}"
        );
        // Kafka was not measured in a failure run: its reason is the fact alone.
        let (_, reason) = dead_letter_judgement(&advice, kind("kafka"));
        assert!(!reason.contains("measured"), "{reason}");
        // Poison messages the broker still held at the end move nothing.
        let held = advise(&a, vec![], &[run("rabbitmq", 30, 0)]);
        let (score, reason) = dead_letter_judgement(&held, kind("rabbitmq"));
        assert_eq!(score, rabbit_before);
        assert!(
            reason.contains("dead-lettered 30 of 37")
                && reason.contains("7 still held by the broker or unverified")
                && !reason.contains("moved"),
            "{reason}"
        );
    }

    #[test]
    fn a_stand_ins_figures_do_not_score_the_product_unless_accepted() {
        let a = answers(DeadLetter::No, &[Language::Java], 5_000.0);
        let redpanda = |used| Measurement {
            implementation: "Redpanda 24.2.7".into(),
            stand_in_for: Some("Apache Kafka".into()),
            used,
            ..measured(kind("kafka"), 1_800.0, 0)
        };
        let kafka_effect = |advice: Advice| {
            let evidence = advice.evidence.unwrap();
            let effect = evidence
                .effects
                .into_iter()
                .find(|e| e.broker == kind("kafka"));
            effect.unwrap()
        };
        let ignored = kafka_effect(advise(&a, vec![], &[redpanda(false)]));
        assert_eq!(ignored.score, evidence::UNMEASURED, "{ignored:?}");
        assert!(
            ignored.reason.contains("stand-in for Apache Kafka")
                && ignored.reason.contains("lost no confirmed message"),
            "{ignored:?}"
        );
        let accepted = kafka_effect(advise(&a, vec![], &[redpanda(true)]));
        assert_eq!(accepted.score, 3.6, "{accepted:?}");
        assert!(accepted.reason.contains("did not sustain your rate"));
    }

    #[test]
    fn deciding_answers_are_required_and_the_rest_default() {
        let missing = GivenAnswers::default().complete().unwrap_err();
        assert_eq!(missing.len(), 3, "{missing:?}");
        let (a, defaulted) = GivenAnswers {
            dead_letter: Some(DeadLetter::No),
            languages: Some(vec![Language::Python, Language::Go, Language::Go]),
            rate: Some(100.0),
            groups: Some(4),
            ..Default::default()
        }
        .complete()
        .unwrap();
        assert_eq!(a.languages, [Language::Go, Language::Python]);
        assert_eq!(
            defaulted,
            [
                "ordering",
                "replay",
                "delivery",
                "latency_ms",
                "hosting",
                "experience"
            ]
        );
        assert_eq!(a.delivery, Delivery::AtLeastOnce);
    }

    #[test]
    fn unasked_criteria_weigh_nothing_and_scores_stay_in_range() {
        let a = answers(DeadLetter::No, &[Language::Go], 100.0);
        let advice = advise(&a, vec![], &[]);
        for ranked in &advice.ranking {
            assert!((0.0..=100.0).contains(&ranked.score));
            for c in &ranked.criteria {
                assert!((0.0..=10.0).contains(&c.score), "{c:?}");
                if [
                    "dead letters",
                    "ordering",
                    "replay and retention",
                    "latency target",
                ]
                .contains(&c.criterion)
                {
                    assert_eq!(c.weight, 0.0, "{c:?}");
                }
            }
            assert!(ranked.reasons.iter().all(|r| !r.starts_with("ordering")));
        }
    }

    #[test]
    fn a_broker_that_lost_messages_or_missed_the_rate_is_marked_down() {
        let a = answers(DeadLetter::Useful, &[Language::Java], 5_000.0);
        let evidence = [
            measured(kind("rabbitmq"), 15_000.0, 0),
            measured(kind("jetstream"), 120_000.0, 7),
            measured(kind("kafka"), 1_800.0, 0),
        ];
        let advice = advise(&a, vec![], &evidence);
        let effects = &advice.evidence.as_ref().unwrap().effects;
        let score = |kind| effects.iter().find(|e| e.broker == kind).unwrap().score;
        assert_eq!(score(kind("rabbitmq")), 10.0);
        assert_eq!(score(kind("jetstream")), 5.0, "lost 7: {effects:?}");
        assert_eq!(score(kind("kafka")), 3.6, "{effects:?}");
        let kafka = effects.iter().find(|e| e.broker == kind("kafka")).unwrap();
        assert!(
            kafka.reason.contains("1800 msg/s confirmed of the 5000"),
            "{kafka:?}"
        );
        // A broker with no results scores the neutral 5.
        let only_rabbit = advise(&a, vec![], &evidence[..1]);
        let effects = &only_rabbit.evidence.unwrap().effects;
        assert_eq!(effects[1].score, evidence::UNMEASURED);
        assert!(effects[1].reason.starts_with("not measured"));
    }

    #[test]
    fn a_searched_sustainable_rate_stands_for_the_broker() {
        let a = answers(DeadLetter::Useful, &[Language::Java], 5_000.0);
        // The search's result is its step at the rate found, offered below
        // the user's rate: that rate, not the step's, is the evidence.
        let searched = |broker, found| Measurement {
            target_rate_per_s: 2_000.0,
            sustainable_per_s: found,
            ..measured(kind(broker), 2_000.0, 0)
        };
        let evidence = [
            searched("rabbitmq", Some(12_000.0)),
            searched("jetstream", Some(3_000.0)),
        ];
        let advice = advise(&a, vec![], &evidence);
        let effects = &advice.evidence.as_ref().unwrap().effects;
        let effect = |k| effects.iter().find(|e| e.broker == kind(k)).unwrap();
        assert_eq!(effect("rabbitmq").score, 10.0, "{effects:?}");
        assert!(
            effect("rabbitmq")
                .reason
                .contains("sustained your rate: 12000 msg/s sustainable (--find-max)"),
            "{effects:?}"
        );
        assert_eq!(effect("jetstream").score, 6.0, "{effects:?}");
        assert!(
            effect("jetstream")
                .reason
                .contains("3000 msg/s sustainable (--find-max) of the 5000 you need"),
            "{effects:?}"
        );
        // A search where nothing held says only what its step measured.
        let nothing = advise(&a, vec![], &[searched("rabbitmq", None)]);
        let effects = &nothing.evidence.unwrap().effects;
        assert!(
            effects[0].reason.starts_with("measured only up to 2000"),
            "{effects:?}"
        );
    }

    #[test]
    fn the_nearest_flip_really_flips() {
        let a = answers(
            DeadLetter::Required,
            &[Language::Go, Language::Python],
            200.0,
        );
        let advice = advise(&a, vec![], &[]);
        let flip = advice.nearest_flip.expect("a flip exists");
        assert_ne!(flip.first, advice.recommendation);
        let mut changed = a.clone();
        changed.dead_letter = DeadLetter::No;
        assert_eq!(flip.question, "dead_letter");
        assert_eq!(flip.from, "required");
        assert_eq!(first(&changed, &[]), flip.first);
    }

    #[test]
    fn written_scenarios_parse_for_any_answers() {
        for (delivery, groups, rate) in [
            (Delivery::AtLeastOnce, 3, 200.0),
            (Delivery::BestEffort, 50, 250_000.0),
            (Delivery::ExactlyOnce, 1, 0.5),
        ] {
            let mut a = answers(DeadLetter::No, &[Language::Rust], rate);
            a.delivery = delivery;
            a.groups = groups;
            let text = scenario::emit(&a);
            let plan = crate::scenario::Plan::parse(
                std::path::Path::new("advised.toml"),
                &text,
                &Default::default(),
            )
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(plan.load.rate, rate);
            assert_eq!(
                plan.consumers.len() as u32,
                groups.min(scenario::MAX_GROUPS)
            );
            assert_eq!(plan.faults.len(), 1);
        }
    }
}
