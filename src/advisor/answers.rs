//! The questions, their answers, and the neutral defaults.

use serde::{Deserialize, Serialize};

use crate::broker::BrokerKind;

/// Do failed messages need a dead-letter queue?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DeadLetter {
    /// Failures must be parked and inspected, never dropped or retried forever.
    Required,
    /// Nice to have; the team could write it.
    Useful,
    /// Failures are retried or ignored.
    No,
}

/// A language consumers or producers are written in.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Language {
    Go,
    Python,
    Node,
    Java,
    Dotnet,
    Rust,
    Ruby,
    Php,
}

/// What must stay in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// Each message stands alone.
    None,
    /// Messages of one key (an order, a user) in order.
    PerKey,
    /// Every message in one total order.
    Global,
}

/// Must consumers be able to read old messages again?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Replay {
    /// A message is gone once every group has it.
    No,
    /// Re-read the last hours or days (a new consumer, a bug fix).
    Days,
    /// Keep the history for months or for good (event sourcing, analytics).
    Long,
}

/// The delivery guarantee the business needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Losing some is acceptable (metrics, presence).
    BestEffort,
    /// Nothing may be lost; duplicates are handled by idempotent consumers.
    AtLeastOnce,
    /// Effects must happen once, with the broker's help.
    ExactlyOnce,
}

/// Who runs the brokers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Hosting {
    /// The team operates them.
    SelfHosted,
    /// A cloud provider's managed service.
    Managed,
}

/// Answers as given: from a file, flags or the prompts; any may be missing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GivenAnswers {
    pub dead_letter: Option<DeadLetter>,
    pub languages: Option<Vec<Language>>,
    pub rate: Option<f64>,
    pub ordering: Option<Ordering>,
    pub replay: Option<Replay>,
    pub delivery: Option<Delivery>,
    pub latency_ms: Option<f64>,
    pub groups: Option<u32>,
    pub hosting: Option<Hosting>,
    pub experience: Option<Vec<BrokerKind>>,
}

/// A complete set of answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Answers {
    pub dead_letter: DeadLetter,
    pub languages: Vec<Language>,
    /// Peak events per second.
    pub rate: f64,
    pub ordering: Ordering,
    pub replay: Replay,
    pub delivery: Delivery,
    /// p99 end-to-end latency target in milliseconds; 0 means none.
    pub latency_ms: f64,
    /// Consumer groups: how many services receive each event.
    pub groups: u32,
    pub hosting: Hosting,
    /// Brokers the team already runs in production.
    pub experience: Vec<BrokerKind>,
}

/// One question: its key (as in answers files and JSON), its flag, the
/// question, why it matters, and its neutral default (None: deciding).
pub struct Question {
    pub key: &'static str,
    pub flag: &'static str,
    pub text: &'static str,
    pub why: &'static str,
    pub default: Option<&'static str>,
}

/// Every question, deciding ones first.
pub const QUESTIONS: [Question; 10] = [
    Question {
        key: "dead_letter",
        flag: "--dead-letter",
        text: "When a message cannot be processed, must it go to a dead-letter queue?",
        why: "RabbitMQ has dead-lettering built in; on JetStream and Kafka the application builds it.",
        default: None,
    },
    Question {
        key: "languages",
        flag: "--languages",
        text: "Which languages will producers and consumers be written in?",
        why: "Client maturity differs per language and broker; the weakest client sets the pace.",
        default: None,
    },
    Question {
        key: "rate",
        flag: "--rate",
        text: "Peak events per second?",
        why: "A few hundred per second suit any of the three; tens of thousands start to separate them.",
        default: None,
    },
    Question {
        key: "ordering",
        flag: "--ordering",
        text: "What must stay in order?",
        why: "Kafka orders per partition key; RabbitMQ queues lose order with competing consumers.",
        default: Some("none"),
    },
    Question {
        key: "replay",
        flag: "--replay",
        text: "Must consumers be able to read old events again?",
        why: "Logs (Kafka, JetStream) keep events after delivery; queues delete them on ack.",
        default: Some("no"),
    },
    Question {
        key: "delivery",
        flag: "--delivery",
        text: "What delivery guarantee does the business need?",
        why: "All three do at-least-once; only Kafka has transactions for exactly-once pipelines.",
        default: Some("at-least-once"),
    },
    Question {
        key: "latency_ms",
        flag: "--latency-ms",
        text: "p99 end-to-end latency target in milliseconds (0 = none)?",
        why: "Kafka trades latency for batching; NATS and RabbitMQ deliver in about a millisecond.",
        default: Some("0 (no target)"),
    },
    Question {
        key: "groups",
        flag: "--groups",
        text: "How many services (consumer groups) receive each event?",
        why: "RabbitMQ copies each message into one queue per group; logs are read in place.",
        default: Some("1"),
    },
    Question {
        key: "hosting",
        flag: "--hosting",
        text: "Who runs the brokers?",
        why: "Self-hosted, operating effort matters most; managed, what providers offer does.",
        default: Some("self-hosted"),
    },
    Question {
        key: "experience",
        flag: "--experience",
        text: "Which of the brokers does the team already run in production?",
        why: "Known tools fail in known ways: experience shortens every incident.",
        default: Some("none"),
    },
];

/// The deciding answers that are missing, by flag.
pub fn missing(given: &GivenAnswers) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if given.dead_letter.is_none() {
        missing.push("--dead-letter required|useful|no");
    }
    if given.languages.as_ref().is_none_or(|l| l.is_empty()) {
        missing.push("--languages go,python,...");
    }
    if given.rate.is_none() {
        missing.push("--rate EVENTS_PER_SECOND");
    }
    missing
}

impl GivenAnswers {
    /// `self`, with every answer `over` gives replacing it.
    pub fn overridden_by(self, over: GivenAnswers) -> GivenAnswers {
        GivenAnswers {
            dead_letter: over.dead_letter.or(self.dead_letter),
            languages: over.languages.or(self.languages),
            rate: over.rate.or(self.rate),
            ordering: over.ordering.or(self.ordering),
            replay: over.replay.or(self.replay),
            delivery: over.delivery.or(self.delivery),
            latency_ms: over.latency_ms.or(self.latency_ms),
            groups: over.groups.or(self.groups),
            hosting: over.hosting.or(self.hosting),
            experience: over.experience.or(self.experience),
        }
    }

    /// Complete answers, or the list of deciding answers missing. The second
    /// value names the questions that took their neutral default.
    pub fn complete(self) -> Result<(Answers, Vec<&'static str>), Vec<&'static str>> {
        let missing = missing(&self);
        if !missing.is_empty() {
            return Err(missing);
        }
        let mut defaulted = Vec::new();
        let mut or_default = |given: bool, key: &'static str| {
            if !given {
                defaulted.push(key);
            }
        };
        or_default(self.ordering.is_some(), "ordering");
        or_default(self.replay.is_some(), "replay");
        or_default(self.delivery.is_some(), "delivery");
        or_default(self.latency_ms.is_some(), "latency_ms");
        or_default(self.groups.is_some(), "groups");
        or_default(self.hosting.is_some(), "hosting");
        or_default(self.experience.is_some(), "experience");
        let mut languages = self.languages.unwrap_or_default();
        languages.sort();
        languages.dedup();
        let mut experience = self.experience.unwrap_or_default();
        experience.sort();
        experience.dedup();
        let answers = Answers {
            dead_letter: self.dead_letter.expect("checked"),
            languages,
            rate: self.rate.expect("checked"),
            ordering: self.ordering.unwrap_or(Ordering::None),
            replay: self.replay.unwrap_or(Replay::No),
            delivery: self.delivery.unwrap_or(Delivery::AtLeastOnce),
            latency_ms: self.latency_ms.unwrap_or(0.0),
            groups: self.groups.unwrap_or(1),
            hosting: self.hosting.unwrap_or(Hosting::SelfHosted),
            experience,
        };
        Ok((answers, defaulted))
    }
}

impl Answers {
    /// The same answers as `brokerbench advise` flags.
    pub fn as_flags(&self) -> Vec<String> {
        let names = |values: String| {
            if values.is_empty() {
                "none".to_string()
            } else {
                values
            }
        };
        vec![
            format!("--dead-letter {}", value(&self.dead_letter)),
            format!("--languages {}", names(list(&self.languages))),
            format!("--rate {}", self.rate),
            format!("--ordering {}", value(&self.ordering)),
            format!("--replay {}", value(&self.replay)),
            format!("--delivery {}", value(&self.delivery)),
            format!("--latency-ms {}", self.latency_ms),
            format!("--groups {}", self.groups),
            format!("--hosting {}", value(&self.hosting)),
            format!("--experience {}", names(list(&self.experience))),
        ]
    }
}

/// Values by their serde names, comma-separated, e.g. `go,python`.
pub fn list<T: Serialize>(values: &[T]) -> String {
    values.iter().map(value).collect::<Vec<_>>().join(",")
}

/// The name serde gives a unit enum value, e.g. `at-least-once`.
pub fn value<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
