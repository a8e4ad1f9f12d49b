//! Entry points for the fuzz targets (`fuzz/`, run by `scripts/fuzz`,
//! docs/reliability.md): each takes arbitrary bytes along the path a
//! user's file or a broker's payload takes, error messages included, and
//! must not panic, whatever the bytes. Not an interface for anything else.

use std::path::Path;

use clap::ValueEnum;

use crate::report::compare::{compare, Allowance};
use crate::report::export::{exporter, Format};
use crate::report::table::{self, Layout};
use crate::results::Results;
use crate::scenario::{Overrides, Plan};

/// A scenario file, parsed and checked as `brokerbench run` does.
pub fn scenario(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Plan::parse(Path::new("fuzz.toml"), text, &Overrides::default()) {
        Ok(plan) => drop(plan.brokers),
        Err(e) => drop(e.to_string()),
    }
}

/// A targets file (`--env external`), parsed and checked.
pub fn targets(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = crate::env::external::Targets::parse(Path::new("targets.toml"), text.into()) {
        drop(e.to_string());
    }
}

/// An answers file (`brokerbench advise --answers`), read and completed
/// with the neutral defaults.
pub fn answers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match crate::commands::advise::parse_answers(Path::new("answers.toml"), text) {
        Ok(mut given) => {
            let _ = given.check();
            drop(given.complete());
        }
        Err(e) => drop(e.to_string()),
    }
}

/// A results.json from another machine, read, then shown as `run`,
/// `report` and `compare` show it.
pub fn results(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let results = match Results::parse(Path::new("results.json"), text) {
        Ok(results) => results,
        Err(e) => return drop(e.to_string()),
    };
    let layout = Layout::for_width(Some(100));
    drop(table::summary(&results, layout).to_string());
    drop(table::groups(&results, layout).to_string());
    drop(table::notes(&results, layout));
    drop(table::cluster_faults(&results, layout));
    drop(table::harness_warnings(&results));
    for format in Format::value_variants() {
        drop(exporter(*format).export(std::slice::from_ref(&results)));
    }
    let allowance = Allowance {
        max_regression: 0.1,
        alpha: 0.05,
        min_latency_change_us: 100.0,
    };
    drop(compare(&results, &results, allowance));
}

/// A payload read from a broker that other programs write to as well.
pub fn event(data: &[u8]) {
    let _ = crate::event::read(data);
}

#[cfg(test)]
mod tests {
    /// A fuzz target's entry point.
    type Target = fn(&[u8]);

    /// Every input a fuzz target crashed on, kept in
    /// `fuzz/regressions/TARGET/`, goes through its target again.
    #[test]
    fn every_crash_the_fuzzers_found_stays_fixed() {
        let targets: [(&str, Target); 5] = [
            ("scenario", super::scenario),
            ("targets", super::targets),
            ("answers", super::answers),
            ("results", super::results),
            ("event", super::event),
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        let mut inputs = 0;
        for (name, target) in targets {
            let Ok(dir) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for file in dir {
                target(&std::fs::read(file.unwrap().path()).unwrap());
                inputs += 1;
            }
        }
        // The HdrHistogram whose counts overflow, and the one with a run of
        // 2^63 zeros (results, 2026-12-07).
        assert!(inputs >= 2, "no regression inputs in {}", root.display());
    }
}
