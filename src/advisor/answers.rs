//! The questions that decide a broker choice, each defined once.
//!
//! A [`Question`] holds everything about one question: its key (answers
//! files, JSON, and the flag `--key-with-dashes`), the prompt, why it
//! matters, its typed neutral default (none for the three deciding ones),
//! its bounds, the nearby answers the flip search tries, and where its answer
//! lives. [`QUESTIONS`] lists them, deciding ones first. The command-line
//! arguments, the prompts, the defaults, the missing-answer message, the
//! answers-as-flags line and the flip search all derive from that list, in
//! the manner of ripgrep's one definition per flag. The answers file is
//! [`GivenAnswers`] (its field names are the keys; a test holds them equal).

use anyhow::{bail, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kind::BrokerKind;

/// Do failed messages need a dead-letter queue?
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum DeadLetter {
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
pub(crate) enum Language {
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
pub(crate) enum Ordering {
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
pub(crate) enum Replay {
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
pub(crate) enum Delivery {
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
pub(crate) enum Hosting {
    /// The team operates them.
    SelfHosted,
    /// A cloud provider's managed service.
    Managed,
}

/// Answers as given: from a file, flags or the prompts; any may be missing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GivenAnswers {
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
pub(crate) struct Answers {
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

/// Where one question's answer lives, and how it may be varied.
pub(crate) struct Question<T: 'static> {
    /// The key in answers files and JSON; the flag is `--` and the key with dashes.
    pub key: &'static str,
    /// The question as asked.
    pub text: &'static str,
    /// Why it matters, shown with the prompt.
    pub why: &'static str,
    /// The neutral default; `None` for a deciding question, which must be answered.
    pub default: Option<T>,
    /// The default as shown, when it needs words (`0 (no target)`).
    pub default_shown: Option<&'static str>,
    /// The flag's value name in help and messages, when not derived.
    pub value_name: Option<&'static str>,
    /// Bounds an answer must keep, said as an error.
    pub check: fn(&T) -> Result<(), String>,
    /// The answers the flip search tries instead, with their distance.
    pub nearby: fn(&T) -> Vec<(T, usize)>,
    /// The answer as given.
    pub given: fn(&mut GivenAnswers) -> &mut Option<T>,
    /// The answer in a complete set.
    pub answer: fn(&mut Answers) -> &mut T,
}

/// An answer's type: how it is parsed from a flag, written back as one, and
/// asked for on a terminal.
pub(crate) trait Value:
    Clone + PartialEq + Serialize + DeserializeOwned + Send + Sync
{
    /// Lets clap check the values it can (possible values, a list's commas);
    /// `none` is a possible list only where no answer is an answer.
    fn arg(arg: clap::Arg, deciding: bool) -> clap::Arg;
    /// The answer from the flag's values.
    fn parse(values: &[String]) -> Result<Self, String>;
    /// As written after the flag: `at-least-once`, `go,python`, `none`, `200`.
    fn show(&self) -> String;
    /// What to write after the flag, when asking for it.
    fn placeholder() -> String;
    /// Asks on a terminal.
    fn prompt(q: &Question<Self>) -> Result<Self>;
    /// Whether a given answer counts as an answer (an empty required list does not).
    fn is_answer(&self, deciding: bool) -> bool {
        let _ = deciding;
        true
    }
}

/// A one-of answer (a clap value enum).
pub(crate) trait Choice:
    clap::ValueEnum + Copy + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl Choice for DeadLetter {}
impl Choice for Language {}
impl Choice for Ordering {}
impl Choice for Replay {}
impl Choice for Delivery {}
impl Choice for Hosting {}
impl Choice for BrokerKind {}

fn names<T: Choice>() -> Vec<String> {
    T::value_variants().iter().map(value).collect()
}

/// Parses one value of a one-of or list flag: spaces around it are dropped,
/// and `--help` lists the values with what each means.
#[derive(Clone)]
struct OneOf(Vec<clap::builder::PossibleValue>);

impl OneOf {
    fn of<T: Choice>(none: bool) -> Self {
        let mut values: Vec<_> = T::value_variants()
            .iter()
            .filter_map(clap::ValueEnum::to_possible_value)
            .collect();
        if none {
            values.push(clap::builder::PossibleValue::new("none").help("none of them"));
        }
        OneOf(values)
    }
}

impl clap::builder::TypedValueParser for OneOf {
    type Value = String;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let text = value.to_string_lossy();
        let trimmed = text.trim();
        if self.0.iter().any(|v| v.matches(trimmed, true)) {
            return Ok(trimmed.to_string());
        }
        clap::builder::PossibleValuesParser::new(self.0.clone()).parse_ref(command, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(self.0.iter().cloned()))
    }
}

fn choose<T: Choice>(name: &str) -> Result<T, String> {
    T::from_str(name, true)
}

fn no_answer(e: inquire::InquireError) -> anyhow::Error {
    anyhow::anyhow!("no answer: {e}")
}

impl<T: Choice> Value for T {
    fn arg(arg: clap::Arg, _deciding: bool) -> clap::Arg {
        arg.value_parser(OneOf::of::<T>(false))
    }

    fn parse(values: &[String]) -> Result<Self, String> {
        choose(values.first().map_or("", String::as_str))
    }

    fn show(&self) -> String {
        value(self)
    }

    fn placeholder() -> String {
        names::<T>().join("|")
    }

    /// A list to pick from, the default (if any) first.
    fn prompt(q: &Question<Self>) -> Result<Self> {
        let options: Vec<T> = q
            .default
            .into_iter()
            .chain(
                T::value_variants()
                    .iter()
                    .copied()
                    .filter(|v| Some(*v) != q.default),
            )
            .collect();
        let shown: Vec<String> = options.iter().map(value).collect();
        let chosen = inquire::Select::new(q.text, shown.clone())
            .with_help_message(q.why)
            .prompt()
            .map_err(no_answer)?;
        let index = shown.iter().position(|n| *n == chosen).expect("offered");
        Ok(options[index])
    }
}

impl<T: Choice + Ord> Value for Vec<T> {
    /// Comma-separated, and the flag may be repeated.
    fn arg(arg: clap::Arg, deciding: bool) -> clap::Arg {
        arg.value_delimiter(',')
            .action(clap::ArgAction::Append)
            .value_parser(OneOf::of::<T>(!deciding))
    }

    fn parse(values: &[String]) -> Result<Self, String> {
        if values.iter().all(|v| v == "none") {
            return Ok(Vec::new());
        }
        values.iter().map(|v| choose(v)).collect()
    }

    fn show(&self) -> String {
        if self.is_empty() {
            "none".into()
        } else {
            list(self)
        }
    }

    fn placeholder() -> String {
        let names = names::<T>();
        format!("{},...", names[..2.min(names.len())].join(","))
    }

    /// Any of the values; at least one for a deciding question.
    fn prompt(q: &Question<Self>) -> Result<Self> {
        use inquire::validator::Validation;
        let required = q.default.is_none();
        let options = T::value_variants();
        let shown = names::<T>();
        let hint = if required {
            "space selects, enter confirms"
        } else {
            "space selects, enter confirms; none is fine"
        };
        let chosen = inquire::MultiSelect::new(q.text, shown.clone())
            .with_help_message(&format!("{} ({hint})", q.why))
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
            .filter_map(|c| shown.iter().position(|n| n == c).map(|i| options[i]))
            .collect())
    }

    fn is_answer(&self, deciding: bool) -> bool {
        !(deciding && self.is_empty())
    }
}

/// A number typed at the prompt, checked by the question's bounds.
fn prompt_number<T>(q: &Question<T>) -> Result<T>
where
    T: Value + Copy + std::str::FromStr + ToString + 'static,
{
    use inquire::validator::Validation;
    let check = q.check;
    let mut prompt = inquire::CustomType::<T>::new(q.text)
        .with_help_message(q.why)
        .with_validator(move |v: &T| {
            Ok(match check(v) {
                Ok(()) => Validation::Valid,
                Err(why) => Validation::Invalid(why.into()),
            })
        });
    if let Some(default) = q.default {
        prompt = prompt.with_default(default);
    }
    prompt.prompt().map_err(no_answer)
}

macro_rules! number {
    ($t:ty, $what:literal) => {
        impl Value for $t {
            fn arg(arg: clap::Arg, _deciding: bool) -> clap::Arg {
                arg.allow_negative_numbers(true)
            }

            fn parse(values: &[String]) -> Result<Self, String> {
                let text = values.first().map_or("", String::as_str);
                text.trim()
                    .parse()
                    .map_err(|_| format!("'{text}' is not {}", $what))
            }

            fn show(&self) -> String {
                self.to_string()
            }

            fn placeholder() -> String {
                "N".into()
            }

            fn prompt(q: &Question<Self>) -> Result<Self> {
                prompt_number(q)
            }
        }
    };
}

number!(f64, "a number");
number!(u32, "a whole number from 0 to 4294967295");

/// One question, whatever the type of its answer: what the command, the
/// prompts and the flip search ask of it.
pub(crate) trait Ask: Sync {
    /// The key in answers files and JSON.
    fn key(&self) -> &'static str;
    /// `--key-with-dashes`.
    fn flag(&self) -> String {
        format!("--{}", self.key().replace('_', "-"))
    }
    /// Whether it must be answered (no neutral default).
    fn deciding(&self) -> bool;
    /// Its neutral default as shown, for a non-deciding question.
    fn default_shown(&self) -> Option<String>;
    /// `--flag VALUES`, as a missing answer is named.
    fn usage(&self) -> String;
    /// Its command-line argument.
    fn arg(&self) -> clap::Arg;
    /// Takes its flag's value into `given`, if the flag was used.
    fn read(&self, matches: &clap::ArgMatches, given: &mut GivenAnswers)
        -> Result<(), clap::Error>;
    /// Whether `given` answers it.
    fn answered(&self, given: &mut GivenAnswers) -> bool;
    /// `over`'s answer replaces `base`'s, when `over` has one.
    fn prefer(&self, base: &mut GivenAnswers, over: &mut GivenAnswers);
    /// An error naming the flag when the given answer is out of bounds.
    fn check(&self, given: &mut GivenAnswers) -> Result<()>;
    /// Asks on the terminal when `given` has no answer.
    fn ask(&self, given: &mut GivenAnswers) -> Result<()>;
    /// Moves the given answer, or the default, into `answers`; `false` when
    /// the default was used. The caller checked that deciding ones are given.
    fn resolve(&self, given: &mut GivenAnswers, answers: &mut Answers) -> bool;
    /// `--flag value` for the answer in `answers`.
    fn as_flag(&self, answers: &Answers) -> String;
    /// Every nearby change of this one answer, for the flip search.
    fn changes(&self, answers: &Answers) -> Vec<Change>;
}

/// One change of one answer, as the flip search tries it.
pub(crate) struct Change {
    /// Steps from the current answer: the next value of a deciding question
    /// or rate band is 1, any other answer 2.
    pub distance: usize,
    /// The question's key.
    pub question: &'static str,
    /// The answer now, as a flag value.
    pub from: String,
    /// The answer tried, as a flag value.
    pub to: String,
    /// All answers, with this one changed.
    pub answers: Answers,
}

impl<T: Value> Ask for Question<T> {
    fn key(&self) -> &'static str {
        self.key
    }

    fn deciding(&self) -> bool {
        self.default.is_none()
    }

    fn default_shown(&self) -> Option<String> {
        let shown = self.default.as_ref().map(Value::show)?;
        Some(self.default_shown.map_or(shown, str::to_string))
    }

    fn usage(&self) -> String {
        let placeholder = self.value_name.map_or_else(T::placeholder, str::to_string);
        format!("{} {placeholder}", self.flag())
    }

    fn arg(&self) -> clap::Arg {
        let help = match self.default_shown() {
            Some(default) => format!("{} [default: {default}]", self.text),
            None => self.text.to_string(),
        };
        let arg = clap::Arg::new(self.key)
            .long(self.key.replace('_', "-"))
            .help(help)
            .value_name(
                self.value_name
                    .map_or_else(|| self.key.to_uppercase(), str::to_string),
            )
            .action(clap::ArgAction::Set);
        // Set, but lists append (their `Value::arg`).
        T::arg(arg, self.deciding())
    }

    fn read(
        &self,
        matches: &clap::ArgMatches,
        given: &mut GivenAnswers,
    ) -> Result<(), clap::Error> {
        let Some(values) = matches.get_many::<String>(self.key) else {
            return Ok(());
        };
        let values: Vec<String> = values.cloned().collect();
        let parsed = T::parse(&values).map_err(|why| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{}: {why}\n", self.flag()),
            )
        })?;
        *(self.given)(given) = Some(parsed);
        Ok(())
    }

    fn answered(&self, given: &mut GivenAnswers) -> bool {
        let deciding = self.deciding();
        (self.given)(given)
            .as_ref()
            .is_some_and(|v| v.is_answer(deciding))
    }

    fn prefer(&self, base: &mut GivenAnswers, over: &mut GivenAnswers) {
        if let Some(v) = (self.given)(over).take() {
            *(self.given)(base) = Some(v);
        }
    }

    fn check(&self, given: &mut GivenAnswers) -> Result<()> {
        let deciding = self.deciding();
        // A non-answer (an empty required list) is missing, not out of bounds.
        if let Some(v) = (self.given)(given)
            .as_ref()
            .filter(|v| v.is_answer(deciding))
        {
            if let Err(why) = (self.check)(v) {
                bail!("{}: {why}, got {}", self.flag(), v.show());
            }
        }
        Ok(())
    }

    fn ask(&self, given: &mut GivenAnswers) -> Result<()> {
        if !self.answered(given) {
            *(self.given)(given) = Some(T::prompt(self)?);
        }
        Ok(())
    }

    fn resolve(&self, given: &mut GivenAnswers, answers: &mut Answers) -> bool {
        let answered = self.answered(given);
        let value = match (self.given)(given).take() {
            Some(v) if answered => v,
            _ => self
                .default
                .clone()
                .expect("deciding answers are checked first"),
        };
        *(self.answer)(answers) = value;
        answered
    }

    fn as_flag(&self, answers: &Answers) -> String {
        let mut answers = answers.clone();
        format!("{} {}", self.flag(), (self.answer)(&mut answers).show())
    }

    fn changes(&self, answers: &Answers) -> Vec<Change> {
        let mut current = answers.clone();
        let now = (self.answer)(&mut current).clone();
        (self.nearby)(&now)
            .into_iter()
            .filter(|(v, _)| *v != now)
            .map(|(v, distance)| {
                let mut changed = answers.clone();
                let to = v.show();
                *(self.answer)(&mut changed) = v;
                Change {
                    distance,
                    question: self.key,
                    from: now.show(),
                    to,
                    answers: changed,
                }
            })
            .collect()
    }
}

/// Every other value of a one-of answer, as far apart as their places in
/// the list of values.
fn by_place<T: Choice>(now: &T) -> Vec<(T, usize)> {
    let place = |v: &T| T::value_variants().iter().position(|x| x == v).unwrap_or(0);
    T::value_variants()
        .iter()
        .map(|v| (*v, place(v).abs_diff(place(now))))
        .collect()
}

/// Every other value of a one-of answer, each `D` steps away.
fn others<T: Choice, const D: usize>(_now: &T) -> Vec<(T, usize)> {
    T::value_variants().iter().map(|v| (*v, D)).collect()
}

/// The list with one more of the values it lacks, each `D` steps away.
#[allow(clippy::ptr_arg)] // the type of `Question::nearby` for a list: fn(&Vec<T>)
fn one_more<T: Choice + Ord, const D: usize>(now: &Vec<T>) -> Vec<(Vec<T>, usize)> {
    T::value_variants()
        .iter()
        .filter(|v| !now.contains(v))
        .map(|v| {
            let mut more = now.clone();
            more.push(*v);
            more.sort();
            (more, D)
        })
        .collect()
}

/// The limits of the rate criterion's bands, in events per second: what
/// any broker takes on one node, one queue, one stream.
pub(crate) const RATE_ANY: f64 = 500.0;
pub(crate) const RATE_SINGLE_QUEUE: f64 = 20_000.0;
pub(crate) const RATE_SINGLE_STREAM: f64 = 100_000.0;

/// Rates that stand for each band of the rate criterion.
const RATE_BANDS: [f64; 4] = [300.0, 5_000.0, 50_000.0, 200_000.0];

/// Which band of the rate criterion `rate` falls in.
fn band(rate: f64) -> usize {
    [RATE_ANY, RATE_SINGLE_QUEUE, RATE_SINGLE_STREAM]
        .iter()
        .filter(|limit| rate > **limit)
        .count()
}

/// A rate in each other band, as many steps away as bands.
fn rate_bands(now: &f64) -> Vec<(f64, usize)> {
    RATE_BANDS
        .into_iter()
        .map(|rate| (rate, band(rate).abs_diff(band(*now))))
        .filter(|(_, distance)| *distance > 0)
        .collect()
}

fn latency_targets(_now: &f64) -> Vec<(f64, usize)> {
    [0.0, 100.0, 20.0, 2.0]
        .into_iter()
        .map(|v| (v, 2))
        .collect()
}

fn group_counts(_now: &u32) -> Vec<(u32, usize)> {
    [1, 10, 50].into_iter().map(|v| (v, 2)).collect()
}

fn any<T>(_: &T) -> Result<(), String> {
    Ok(())
}

fn positive_rate(rate: &f64) -> Result<(), String> {
    if rate.is_finite() && *rate > 0.0 {
        Ok(())
    } else {
        Err("must be more than 0 events per second".into())
    }
}

fn latency_target(ms: &f64) -> Result<(), String> {
    if ms.is_finite() && *ms >= 0.0 {
        Ok(())
    } else {
        Err("must be 0 (no target) or more".into())
    }
}

fn at_least_one_group(groups: &u32) -> Result<(), String> {
    if *groups >= 1 {
        Ok(())
    } else {
        Err("must be 1 or more".into())
    }
}

/// A question's definition; `$field` is its key and its field in
/// [`GivenAnswers`] and [`Answers`].
macro_rules! question {
    ($name:ident: $t:ty = $field:ident {
        text: $text:expr,
        why: $why:expr,
        default: $default:expr,
        $(default_shown: $shown:expr,)?
        $(value_name: $value_name:expr,)?
        check: $check:expr,
        nearby: $nearby:expr $(,)?
    }) => {
        static $name: Question<$t> = Question {
            key: stringify!($field),
            text: $text,
            why: $why,
            default: $default,
            default_shown: question!(@opt $($shown)?),
            value_name: question!(@opt $($value_name)?),
            check: $check,
            nearby: $nearby,
            given: {
                fn given(g: &mut GivenAnswers) -> &mut Option<$t> {
                    &mut g.$field
                }
                given
            },
            answer: {
                fn answer(a: &mut Answers) -> &mut $t {
                    &mut a.$field
                }
                answer
            },
        };
    };
    (@opt $v:expr) => { Some($v) };
    (@opt) => { None };
}

question!(DEAD_LETTER: DeadLetter = dead_letter {
    text: "When a message cannot be processed, must it go to a dead-letter queue?",
    why: "RabbitMQ has dead-lettering built in; on JetStream and Kafka the application builds it.",
    default: None,
    check: any,
    nearby: by_place,
});

question!(LANGUAGES: Vec<Language> = languages {
    text: "Which languages will producers and consumers be written in?",
    why: "Client maturity differs per language and broker; the weakest client sets the pace.",
    default: None,
    check: any,
    nearby: one_more::<Language, 1>,
});

question!(RATE: f64 = rate {
    text: "Peak events per second?",
    why: "A few hundred per second suit any of the three; tens of thousands start to separate them.",
    default: None,
    value_name: "EVENTS_PER_SECOND",
    check: positive_rate,
    nearby: rate_bands,
});

question!(ORDERING: Ordering = ordering {
    text: "What must stay in order?",
    why: "Kafka orders per partition key; RabbitMQ queues lose order with competing consumers.",
    default: Some(Ordering::None),
    check: any,
    nearby: others::<Ordering, 2>,
});

question!(REPLAY: Replay = replay {
    text: "Must consumers be able to read old events again?",
    why: "Logs (Kafka, JetStream) keep events after delivery; queues delete them on ack.",
    default: Some(Replay::No),
    check: any,
    nearby: others::<Replay, 2>,
});

question!(DELIVERY: Delivery = delivery {
    text: "What delivery guarantee does the business need?",
    why: "All three do at-least-once; only Kafka has transactions for exactly-once pipelines.",
    default: Some(Delivery::AtLeastOnce),
    check: any,
    nearby: others::<Delivery, 2>,
});

question!(LATENCY_MS: f64 = latency_ms {
    text: "p99 end-to-end latency target in milliseconds (0 = none)?",
    why: "Kafka trades latency for batching; NATS and RabbitMQ deliver in about a millisecond.",
    default: Some(0.0),
    default_shown: "0 (no target)",
    value_name: "MS",
    check: latency_target,
    nearby: latency_targets,
});

question!(GROUPS: u32 = groups {
    text: "How many services (consumer groups) receive each event?",
    why: "RabbitMQ copies each message into one queue per group; logs are read in place.",
    default: Some(1),
    check: at_least_one_group,
    nearby: group_counts,
});

question!(HOSTING: Hosting = hosting {
    text: "Who runs the brokers?",
    why: "Self-hosted, operating effort matters most; managed, what providers offer does.",
    default: Some(Hosting::SelfHosted),
    check: any,
    nearby: others::<Hosting, 2>,
});

question!(EXPERIENCE: Vec<BrokerKind> = experience {
    text: "Which of the brokers does the team already run in production?",
    why: "Known tools fail in known ways: experience shortens every incident.",
    default: Some(Vec::new()),
    value_name: "BROKERS",
    check: any,
    nearby: one_more::<BrokerKind, 2>,
});

/// Every question, deciding ones first; the order of prompts, flags and the
/// flip search's ties.
pub(crate) static QUESTIONS: [&dyn Ask; 10] = [
    &DEAD_LETTER,
    &LANGUAGES,
    &RATE,
    &ORDERING,
    &REPLAY,
    &DELIVERY,
    &LATENCY_MS,
    &GROUPS,
    &HOSTING,
    &EXPERIENCE,
];

/// The question with `key`.
pub(crate) fn question(key: &str) -> Option<&'static dyn Ask> {
    QUESTIONS.iter().copied().find(|q| q.key() == key)
}

impl clap::Args for GivenAnswers {
    fn augment_args(command: clap::Command) -> clap::Command {
        QUESTIONS
            .iter()
            .fold(command, |command, q| command.arg(q.arg()))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl clap::FromArgMatches for GivenAnswers {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut given = GivenAnswers::default();
        given.update_from_arg_matches(matches)?;
        Ok(given)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        for q in QUESTIONS {
            q.read(matches, self)?;
        }
        Ok(())
    }
}

impl GivenAnswers {
    /// The deciding answers that are missing, as the flags that give them.
    pub(crate) fn missing(&mut self) -> Vec<String> {
        QUESTIONS
            .iter()
            .filter(|q| q.deciding() && !q.answered(self))
            .map(|q| q.usage())
            .collect()
    }

    /// `self`, with every answer `over` gives replacing it.
    pub(crate) fn overridden_by(mut self, mut over: GivenAnswers) -> GivenAnswers {
        for q in QUESTIONS {
            q.prefer(&mut self, &mut over);
        }
        self
    }

    /// An error naming the flag of the first answer out of bounds.
    pub(crate) fn check(&mut self) -> Result<()> {
        QUESTIONS.iter().try_for_each(|q| q.check(self))
    }

    /// Asks every question not answered yet, each with why it matters.
    pub(crate) fn ask(&mut self) -> Result<()> {
        QUESTIONS.iter().try_for_each(|q| q.ask(self))
    }

    /// Complete answers, or the list of deciding answers missing. The second
    /// value names the questions that took their neutral default.
    pub(crate) fn complete(mut self) -> Result<(Answers, Vec<&'static str>), Vec<String>> {
        let missing = self.missing();
        if !missing.is_empty() {
            return Err(missing);
        }
        let mut answers = Answers::unanswered();
        let defaulted = QUESTIONS
            .iter()
            .filter(|q| !q.resolve(&mut self, &mut answers))
            .map(|q| q.key())
            .collect();
        answers.languages.sort();
        answers.languages.dedup();
        answers.experience.sort();
        answers.experience.dedup();
        Ok((answers, defaulted))
    }
}

impl Answers {
    /// A value for every field, each replaced by its question in
    /// [`GivenAnswers::complete`]; never seen as answers.
    fn unanswered() -> Self {
        Answers {
            dead_letter: DeadLetter::No,
            languages: Vec::new(),
            rate: 0.0,
            ordering: Ordering::None,
            replay: Replay::No,
            delivery: Delivery::AtLeastOnce,
            latency_ms: 0.0,
            groups: 0,
            hosting: Hosting::SelfHosted,
            experience: Vec::new(),
        }
    }

    /// The same answers as `brokerbench advise` flags.
    pub(crate) fn as_flags(&self) -> Vec<String> {
        QUESTIONS.iter().map(|q| q.as_flag(self)).collect()
    }
}

/// Values by their serde names, comma-separated, e.g. `go,python`.
pub(crate) fn list<T: Serialize>(values: &[T]) -> String {
    values.iter().map(value).collect::<Vec<_>>().join(",")
}

/// The name serde gives a unit enum value, e.g. `at-least-once`.
pub(crate) fn value<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_question_is_a_key_of_the_answers_file_and_of_the_answers() {
        let keys: Vec<&str> = QUESTIONS.iter().map(|q| q.key()).collect();
        let given = serde_json::to_value(GivenAnswers::default()).unwrap();
        let given: Vec<&str> = given
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        let mut given_sorted = given.clone();
        given_sorted.sort();
        assert_eq!(sorted, given_sorted);
        let (answers, _) = GivenAnswers {
            dead_letter: Some(DeadLetter::No),
            languages: Some(vec![Language::Go]),
            rate: Some(1.0),
            ..Default::default()
        }
        .complete()
        .unwrap();
        let answers = serde_json::to_value(answers).unwrap();
        let mut answer_keys: Vec<&str> = answers
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        answer_keys.sort();
        assert_eq!(sorted, answer_keys);
    }

    #[test]
    fn flags_are_the_keys_with_dashes_and_deciding_ones_have_no_default() {
        let deciding: Vec<String> = QUESTIONS
            .iter()
            .filter(|q| q.deciding())
            .map(|q| q.flag())
            .collect();
        assert_eq!(deciding, ["--dead-letter", "--languages", "--rate"]);
        assert_eq!(
            question("latency_ms").unwrap().default_shown().as_deref(),
            Some("0 (no target)")
        );
        assert_eq!(
            question("rate").unwrap().usage(),
            "--rate EVENTS_PER_SECOND"
        );
        assert_eq!(
            question("dead_letter").unwrap().usage(),
            "--dead-letter required|useful|no"
        );
    }

    #[test]
    fn answers_out_of_bounds_name_their_flag() {
        type Case = (fn(&mut GivenAnswers), &'static str);
        let out_of_bounds: [Case; 3] = [
            (|g| g.rate = Some(0.0), "--rate: must be more than 0"),
            (|g| g.latency_ms = Some(-1.0), "--latency-ms: must be 0"),
            (|g| g.groups = Some(0), "--groups: must be 1 or more"),
        ];
        for (set, flag) in out_of_bounds {
            let mut given = GivenAnswers::default();
            set(&mut given);
            let err = given.check().unwrap_err().to_string();
            assert!(err.starts_with(flag), "{err}");
        }
    }
}
