//! `brokerbench advise`: the questionnaire, its flags and files, the output.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use comfy_table::{presets, ContentArrangement, Table};

use crate::advisor::answers::{self, Delivery, GivenAnswers, QUESTIONS};
use crate::advisor::{self, evidence, Advice};
use crate::broker::BrokerKind;
use crate::cli::AdviseArgs;
use crate::exit;
use crate::scenario::{Overrides, Plan, ScenarioError};

pub fn run(args: AdviseArgs) -> Result<ExitCode> {
    let from_file = match &args.answers {
        Some(file) => read_answers(file)?,
        None => GivenAnswers::default(),
    };
    let given = from_file.overridden_by(GivenAnswers {
        dead_letter: args.dead_letter,
        languages: args.languages.clone(),
        rate: args.rate,
        ordering: args.ordering,
        replay: args.replay,
        delivery: args.delivery,
        latency_ms: args.latency_ms,
        groups: args.groups,
        hosting: args.hosting,
        experience: args.experience.clone().map(|e| e.0),
    });
    check_numbers(&given)?;
    let interactive =
        !args.no_input && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    let given = if interactive { ask(given)? } else { given };
    let (answers, defaulted) = given.complete().map_err(|missing| {
        anyhow::anyhow!(
            "missing deciding answers: {} (without a terminal to ask on, these three are \
             required; every other question has a neutral default)",
            missing.join(", ")
        )
    })?;
    let measured = evidence::load(&args.results)?;
    let advice = advisor::advise(&answers, defaulted, &measured);

    if let Some(path) = &args.emit_scenario {
        let text = advisor::scenario::emit(&answers);
        Plan::parse(path, &text, &Overrides::default())
            .context("the written scenario does not parse (a bug)")?;
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&advice).context("serializing the advice")?
        );
    } else {
        print!("{}", render(&advice));
        if let Some(path) = &args.emit_scenario {
            println!(
                "Scenario for your case: {} (run it: brokerbench run {})",
                path.display(),
                path.display()
            );
        }
    }
    Ok(ExitCode::from(exit::OK))
}

fn read_answers(file: &Path) -> Result<GivenAnswers> {
    let text = std::fs::read_to_string(file).map_err(|e| ScenarioError::unreadable(file, &e))?;
    toml::from_str(&text).map_err(|e| {
        crate::scenario::RawError::toml(&e)
            .in_file(file, &text)
            .into()
    })
}

fn check_numbers(given: &GivenAnswers) -> Result<()> {
    if let Some(rate) = given.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate: must be more than 0 events per second, got {rate}");
        }
    }
    if let Some(ms) = given.latency_ms {
        if !(ms.is_finite() && ms >= 0.0) {
            bail!("--latency-ms: must be 0 (no target) or more, got {ms}");
        }
    }
    if given.groups == Some(0) {
        bail!("--groups: must be 1 or more");
    }
    Ok(())
}

/// Asks every question not answered yet, each with why it matters.
fn ask(mut given: GivenAnswers) -> Result<GivenAnswers> {
    use inquire::CustomType;
    let q = |key: &str| {
        QUESTIONS
            .iter()
            .find(|q| q.key == key)
            .expect("a known question")
    };
    if given.dead_letter.is_none() {
        given.dead_letter = Some(pick(q("dead_letter"), None)?);
    }
    if given.languages.as_ref().is_none_or(Vec::is_empty) {
        given.languages = Some(pick_many(q("languages"), true)?);
    }
    if given.rate.is_none() {
        let question = q("rate");
        given.rate = Some(
            CustomType::<f64>::new(question.text)
                .with_help_message(question.why)
                .with_validator(|rate: &f64| {
                    Ok(if *rate > 0.0 && rate.is_finite() {
                        inquire::validator::Validation::Valid
                    } else {
                        inquire::validator::Validation::Invalid("more than 0, please".into())
                    })
                })
                .prompt()
                .map_err(no_answer)?,
        );
    }
    if given.ordering.is_none() {
        given.ordering = Some(pick(q("ordering"), None)?);
    }
    if given.replay.is_none() {
        given.replay = Some(pick(q("replay"), None)?);
    }
    if given.delivery.is_none() {
        given.delivery = Some(pick(q("delivery"), Some(Delivery::AtLeastOnce))?);
    }
    if given.latency_ms.is_none() {
        let question = q("latency_ms");
        given.latency_ms = Some(
            CustomType::<f64>::new(question.text)
                .with_help_message(question.why)
                .with_default(0.0)
                .prompt()
                .map_err(no_answer)?,
        );
    }
    if given.groups.is_none() {
        let question = q("groups");
        given.groups = Some(
            CustomType::<u32>::new(question.text)
                .with_help_message(question.why)
                .with_default(1)
                .prompt()
                .map_err(no_answer)?,
        );
    }
    if given.hosting.is_none() {
        given.hosting = Some(pick(q("hosting"), None)?);
    }
    if given.experience.is_none() {
        given.experience = Some(pick_many(q("experience"), false)?);
    }
    check_numbers(&given)?;
    Ok(given)
}

fn no_answer(e: inquire::InquireError) -> anyhow::Error {
    anyhow::anyhow!("no answer: {e}")
}

/// One of `T`'s values, offered in declaration order, `first` (if any) first.
fn pick<T>(question: &answers::Question, first: Option<T>) -> Result<T>
where
    T: clap::ValueEnum + Copy + PartialEq + serde::Serialize,
{
    let options: Vec<T> = first
        .into_iter()
        .chain(
            T::value_variants()
                .iter()
                .copied()
                .filter(|v| Some(*v) != first),
        )
        .collect();
    let names: Vec<String> = options.iter().map(answers::value).collect();
    let chosen = inquire::Select::new(question.text, names.clone())
        .with_help_message(question.why)
        .prompt()
        .map_err(no_answer)?;
    let index = names.iter().position(|n| *n == chosen).expect("offered");
    Ok(options[index])
}

/// Any of `T`'s values; at least one if `required`.
fn pick_many<T>(question: &answers::Question, required: bool) -> Result<Vec<T>>
where
    T: clap::ValueEnum + Copy + serde::Serialize,
{
    use inquire::validator::Validation;
    let options = T::value_variants();
    let names: Vec<String> = options.iter().map(answers::value).collect();
    let hint = if required {
        "space selects, enter confirms"
    } else {
        "space selects, enter confirms; none is fine"
    };
    let chosen = inquire::MultiSelect::new(question.text, names.clone())
        .with_help_message(&format!("{} ({hint})", question.why))
        .with_validator(
            move |chosen: &[inquire::list_option::ListOption<&String>]| {
                Ok(if required && chosen.is_empty() {
                    Validation::Invalid("choose at least one".into())
                } else {
                    Validation::Valid
                })
            },
        )
        .prompt()
        .map_err(no_answer)?;
    Ok(chosen
        .iter()
        .filter_map(|c| names.iter().position(|n| n == c).map(|i| options[i]))
        .collect())
}

/// The advice for people.
pub fn render(advice: &Advice) -> String {
    let mut out = String::new();
    let first = &advice.ranking[0];
    out.push_str(&format!(
        "Recommendation: {} (score {:.1} of 100)\n\n",
        advisor::product(first.broker),
        first.score
    ));
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(110)
        .set_header(["#", "broker", "score", "weightiest reasons"]);
    for (i, ranked) in advice.ranking.iter().enumerate() {
        table.add_row([
            (i + 1).to_string(),
            ranked.broker.to_string(),
            format!("{:.1}", ranked.score),
            ranked
                .reasons
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
        ]);
    }
    out.push_str(&format!("{table}\n"));
    if !advice.defaulted.is_empty() {
        let defaults: Vec<String> = advice
            .defaulted
            .iter()
            .filter_map(|key| QUESTIONS.iter().find(|q| q.key == *key))
            .map(|q| format!("{} = {}", q.key, q.default.unwrap_or("?")))
            .collect();
        out.push_str(&format!(
            "Not answered, neutral defaults used: {}\n",
            defaults.join(", ")
        ));
    }
    if let Some(evidence) = &advice.evidence {
        out.push_str(&format!(
            "Measured evidence ({} broker result(s)):\n",
            evidence.measurements.len()
        ));
        for effect in &evidence.effects {
            out.push_str(&format!(
                "  {}: {}/10: {}\n",
                effect.broker, effect.score, effect.reason
            ));
        }
        let order = |o: &[BrokerKind]| {
            o.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(" > ")
        };
        let now: Vec<BrokerKind> = advice.ranking.iter().map(|r| r.broker).collect();
        if evidence.changed_ranking {
            out.push_str(&format!(
                "  The measurements changed the ranking: {} on answers alone, {} with them.\n",
                order(&evidence.ranking_without),
                order(&now)
            ));
        } else {
            out.push_str(&format!(
                "  The measurements confirm the ranking: {}.\n",
                order(&now)
            ));
        }
    }
    match &advice.nearest_flip {
        Some(flip) => out.push_str(&format!(
            "Nearest change that flips it: {} = {} instead of {} would put {} first.\n",
            flip.question, flip.to, flip.from, flip.first
        )),
        None => out.push_str("No change of a single answer would put another broker first.\n"),
    }
    out.push_str(&format!(
        "Same answers as flags: brokerbench advise {}\n",
        advice.answers.as_flags().join(" ")
    ));
    out
}
