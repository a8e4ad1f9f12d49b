//! `brokerbench advise`: the questionnaire, its flags and files, the output.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use comfy_table::{presets, ContentArrangement, Table};

use crate::advisor::answers::{self, GivenAnswers};
use crate::advisor::{self, evidence, Advice};
use crate::cli::AdviseArgs;
use crate::exit;
use crate::kind::BrokerKind;
use crate::scenario::{Overrides, Plan, ScenarioError};

pub(crate) fn run(args: AdviseArgs) -> Result<ExitCode> {
    let from_file = match &args.answers {
        Some(file) => read_answers(file)?,
        None => GivenAnswers::default(),
    };
    let mut given = from_file.overridden_by(args.given.clone());
    given.check()?;
    let interactive =
        !args.no_input && std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if interactive {
        given.ask()?;
        given.check()?;
    }
    let (answers, defaulted) = given.complete().map_err(|missing| {
        anyhow::anyhow!(
            "missing deciding answers: {} (without a terminal to ask on, these three are \
             required; every other question has a neutral default)",
            missing.join(", ")
        )
    })?;
    let measured = evidence::load(&args.results, args.accept_stand_ins)?;
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
    parse_answers(file, &text)
}

/// The answers in `text`, named `file` in errors.
pub(crate) fn parse_answers(file: &Path, text: &str) -> Result<GivenAnswers> {
    toml::from_str(text).map_err(|e| {
        crate::scenario::RawError::toml(&e)
            .in_file(file, text)
            .into()
    })
}

/// The advice for people.
pub(crate) fn render(advice: &Advice) -> String {
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
            .filter_map(|key| answers::question(key))
            .map(|q| format!("{} = {}", q.key(), q.default_shown().unwrap_or_default()))
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
        for m in evidence.measurements.iter().filter(|m| !m.used) {
            out.push_str(&format!(
                "  Not used: {}'s figures from {} ({}), a stand-in for {}; \
                 --accept-stand-ins uses them.\n",
                m.broker,
                m.implementation,
                m.file.display(),
                m.stand_in_for.as_deref().unwrap_or("the product"),
            ));
        }
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
