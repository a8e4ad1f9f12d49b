//! A scenario for `brokerbench run` that matches the answers, so the user
//! measures their own case next.

use std::fmt::Write;

use super::answers::{Answers, Delivery};

/// The most consumer groups a written scenario gets; more add load on the
/// machine running brokerbench rather than insight.
pub(crate) const MAX_GROUPS: u32 = 16;

/// The scenario, as TOML text with comments.
pub(crate) fn emit(answers: &Answers) -> String {
    let durable = answers.delivery != Delivery::BestEffort;
    let groups = answers.groups.clamp(1, MAX_GROUPS);
    let producers = match answers.rate {
        r if r >= 20_000.0 => 4,
        r if r >= 2_000.0 => 2,
        _ => 1,
    };
    let mut toml = String::new();
    let w = &mut toml;
    let _ = writeln!(
        w,
        "# Written by `brokerbench advise` for these answers:\n#   brokerbench advise {}\n\
         # Run it with: brokerbench run <this file>",
        answers.as_flags().join(" ")
    );
    let _ = writeln!(w, "name = \"advised\"");
    let _ = writeln!(
        w,
        "description = \"your answers: {} events/s, {} consumer group(s), a broker restart\"",
        answers.rate, answers.groups
    );
    let _ = writeln!(w, "brokers = [\"rabbitmq\", \"jetstream\", \"kafka\"]\n");
    let _ = writeln!(w, "[load]");
    let _ = writeln!(
        w,
        "rate = {}            # your peak rate, open loop",
        answers.rate
    );
    let _ = writeln!(w, "duration = \"20s\"\nwarmup = \"2s\"");
    let _ = writeln!(w, "producers = {producers}");
    let _ = writeln!(
        w,
        "message_size = 512\nkeys = 1000          # per-key order is checked\n"
    );
    if answers.groups > MAX_GROUPS {
        let _ = writeln!(
            w,
            "# You have {} groups; {MAX_GROUPS} are measured here.",
            answers.groups
        );
    }
    for i in 1..=groups {
        let _ = writeln!(w, "[[consumers]]\ngroup = \"service-{i}\"\n");
    }
    let _ = writeln!(w, "[rabbitmq]");
    let _ = writeln!(
        w,
        "queue_type = \"{}\"\npersistent = {durable}\n",
        if durable { "quorum" } else { "classic" }
    );
    let _ = writeln!(
        w,
        "[jetstream]\nstorage = \"{}\"\n",
        if durable { "file" } else { "memory" }
    );
    let _ = writeln!(
        w,
        "[kafka]\npartitions = 6\nacks = \"{}\"\n",
        if durable { "all" } else { "1" }
    );
    let _ = writeln!(
        w,
        "[recovery]\non_unconfirmed = \"{}\"   # {}\n",
        if durable { "retry" } else { "drop" },
        if durable {
            "at-least-once: resend what was not confirmed"
        } else {
            "best effort: count it as failed"
        }
    );
    let _ = writeln!(
        w,
        "# What happens to your events when the broker restarts?\n\
         [[faults]]\nat = \"8s\"\naction = \"restart\""
    );
    toml
}
