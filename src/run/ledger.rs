//! Exact message accounting, Jepsen's total-queue style, per consumer group.
//!
//! Every message is named by (producer, sequence number). Each producer keeps
//! one status byte per message it attempted; each consumer group keeps one
//! delivery-count byte per message it saw, and a group that fails messages on
//! purpose two more: its failed attempts (with a processed bit) and the
//! copies its dead-letter reader found. That is at most 3 bytes per message
//! per group plus 1 per message (the budget is 16), needs no locks (each log
//! has one owner task), and makes the final account exact: a confirmed
//! message never delivered (with failures: never processed nor
//! dead-lettered) after the drain is *lost*; one not confirmed yet delivered
//! is *recovered*; a delivery of a message never sent is *unexpected*.

pub(crate) use crate::results::account::{FailureAccount, GroupAccount, PublishAccount};

use crate::event::Envelope;
use crate::scenario::{ConsumerGroup, Failures, Fate};

/// What became of one publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PublishStatus {
    /// Sent; no answer (yet). At the end of the run: unknown.
    Pending = 0,
    /// The broker confirmed it.
    Confirmed = 1,
    /// The broker refused it, or sending failed.
    Failed = 2,
}

/// One producer's publish history, indexed by sequence number.
#[derive(Clone, Debug, Default)]
pub struct ProducerLog {
    status: Vec<u8>,
}

impl ProducerLog {
    /// Records an attempt; sequence numbers are handed out in order from 0.
    pub fn attempt(&mut self) -> u64 {
        self.status.push(PublishStatus::Pending as u8);
        self.status.len() as u64 - 1
    }

    /// Records the broker's answer for `seq`.
    pub fn settle(&mut self, seq: u64, status: PublishStatus) {
        self.status[seq as usize] = status as u8;
    }

    /// How many messages were attempted.
    pub fn attempted(&self) -> u64 {
        self.status.len() as u64
    }

    fn status(&self, seq: u64) -> Option<u8> {
        self.status.get(seq as usize).copied()
    }

    /// Whether the broker confirmed `seq`.
    pub fn is_confirmed(&self, seq: u64) -> bool {
        self.status(seq) == Some(PublishStatus::Confirmed as u8)
    }
}

/// What one delivery was, as far as the ledger can tell at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The first delivery of this message to this group.
    First,
    /// This group had it already.
    Duplicate,
}

/// One consumer group's delivery history.
#[derive(Clone, Debug, Default)]
pub struct GroupLog {
    /// Per producer, per sequence number: deliveries (saturating at 255).
    counts: Vec<Vec<u8>>,
    /// Per (producer, key): highest sequence number delivered so far
    /// (foldhash: a lookup per delivery, and the keys are ours).
    last_per_key: foldhash::HashMap<(u32, u64), u64>,
    delivered: u64,
    unique: u64,
    redelivered: u64,
    foreign: u64,
    out_of_order: u64,
    /// For a group that fails messages on purpose.
    failures: Option<FailureLog>,
}

/// What a group with failures did with each message, and its dead letters.
#[derive(Clone, Debug)]
struct FailureLog {
    /// The group's part of each message's fate ([`Failures::seed`]).
    seed: u64,
    failures: Failures,
    /// Per producer, per sequence number: failed attempts (low 7 bits,
    /// saturating at 126) and [`PROCESSED`], or [`REFUSED`].
    state: Vec<Vec<u8>>,
    /// Per producer, per sequence number: copies read from the dead-letter
    /// destination (saturating at 255).
    dead: Vec<Vec<u8>>,
    failed_attempts: u64,
    dead_foreign: u64,
}

/// Set in [`FailureLog::state`] once a message was processed.
const PROCESSED: u8 = 0x80;

/// [`FailureLog::state`] of a message the typed decoder refused: it is
/// dead-lettered at once, never processed.
const REFUSED: u8 = 0x7f;

/// The byte of message (`producer`, `seq`) in a per-producer table, grown as needed.
fn slot(table: &mut Vec<Vec<u8>>, producer: u32, seq: u64) -> &mut u8 {
    let producer = producer as usize;
    if table.len() <= producer {
        table.resize_with(producer + 1, Vec::new);
    }
    let row = &mut table[producer];
    let seq = seq as usize;
    if row.len() <= seq {
        row.resize(seq + 1, 0);
    }
    &mut row[seq]
}

/// The byte of message (`producer`, `seq`), 0 if never written.
fn get(table: &[Vec<u8>], producer: usize, seq: u64) -> u8 {
    table
        .get(producer)
        .and_then(|row| row.get(seq as usize))
        .copied()
        .unwrap_or(0)
}

/// What the consumer is to do with a delivery of a group with failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Process it and acknowledge it.
    Process,
    /// This group processed it already: acknowledge it without processing
    /// (the idempotent consumer's skip, keyed on the order id).
    Skip,
    /// Processing fails: this is its `n`-th failed attempt, from 1.
    Fail(u32),
    /// The typed decoder refused it: dead-letter it at once, or drop it.
    Refuse,
}

impl GroupLog {
    /// An empty log for `group`, tracking its failures if it has any.
    pub fn for_group(group: &ConsumerGroup) -> Self {
        GroupLog {
            failures: group.failures.clone().map(|failures| FailureLog {
                seed: Failures::seed(&group.group),
                failures,
                state: Vec::new(),
                dead: Vec::new(),
                failed_attempts: 0,
                dead_foreign: 0,
            }),
            ..GroupLog::default()
        }
    }

    /// Records a delivery of one of our messages. `redelivered` is the broker's
    /// own flag (AMQP redelivered, JetStream delivery count above 1).
    pub fn record(&mut self, envelope: &Envelope, redelivered: bool) -> Seen {
        self.delivered += 1;
        self.redelivered += u64::from(redelivered);
        let count = slot(&mut self.counts, envelope.producer, envelope.seq);
        *count = count.saturating_add(1);
        if *count > 1 {
            return Seen::Duplicate;
        }
        self.unique += 1;
        let last = self
            .last_per_key
            .entry((envelope.producer, envelope.key))
            .or_insert(envelope.seq);
        if envelope.seq < *last {
            self.out_of_order += 1;
        } else {
            *last = envelope.seq;
        }
        Seen::First
    }

    /// Records a delivery that is not one of this run's messages.
    pub fn record_foreign(&mut self) {
        self.delivered += 1;
        self.foreign += 1;
    }

    /// Distinct messages delivered so far (for the drain and progress).
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Deliveries so far, duplicates and foreign ones included.
    pub fn deliveries(&self) -> u64 {
        self.delivered
    }

    /// For a group with failures, what to do with a delivery of `envelope`,
    /// recorded at once (a failed attempt counts before the message is handed
    /// back, so its next delivery sees it); `None` for a group without.
    /// The second value is whether the message is complete now for the
    /// first time (processed, or dead-lettered before).
    pub fn decide(&mut self, envelope: &Envelope) -> Option<(Decision, bool)> {
        let f = self.failures.as_mut()?;
        let was_dead = get(&f.dead, envelope.producer as usize, envelope.seq) > 0;
        let state = slot(&mut f.state, envelope.producer, envelope.seq);
        if *state & PROCESSED != 0 {
            return Some((Decision::Skip, false));
        }
        let failed = u32::from(*state & !PROCESSED);
        let fate = f.failures.fate_of(f.seed, envelope.producer, envelope.seq);
        if f.failures.fails(fate, failed) {
            *state = (*state & PROCESSED) | (failed as u8 + 1).min(REFUSED - 1);
            f.failed_attempts += 1;
            Some((Decision::Fail(failed + 1), false))
        } else {
            *state |= PROCESSED;
            Some((Decision::Process, !was_dead))
        }
    }

    /// Records that the group's typed decoder refused `envelope`, delivered
    /// for the `first` time or not; the second value is whether the message
    /// is complete now for the first time: without failures once delivered,
    /// with failures (a dead-letter destination) once its dead letter is read.
    pub fn refuse(&mut self, envelope: &Envelope, first: bool) -> (Decision, bool) {
        let Some(f) = self.failures.as_mut() else {
            return (Decision::Refuse, first);
        };
        let state = slot(&mut f.state, envelope.producer, envelope.seq);
        if *state & PROCESSED == 0 {
            *state = REFUSED;
        }
        (Decision::Refuse, false)
    }

    /// Records a copy of `envelope` read from the dead-letter destination;
    /// the second value is whether the message is complete now for the
    /// first time (not processed, and not dead-lettered before).
    pub fn record_dead_letter(&mut self, envelope: &Envelope) -> (Seen, bool) {
        let Some(f) = self.failures.as_mut() else {
            return (Seen::Duplicate, false);
        };
        let processed = get(&f.state, envelope.producer as usize, envelope.seq) & PROCESSED != 0;
        let copies = slot(&mut f.dead, envelope.producer, envelope.seq);
        *copies = copies.saturating_add(1);
        if *copies > 1 {
            (Seen::Duplicate, false)
        } else {
            (Seen::First, !processed)
        }
    }

    /// Records a dead letter that is not one of this run's messages.
    pub fn record_dead_foreign(&mut self) {
        if let Some(f) = self.failures.as_mut() {
            f.dead_foreign += 1;
        }
    }
}

/// Sequence numbers `from..to` of each producer (indexed like the producers).
pub type Window = [(u64, u64)];

/// Every message of every producer.
pub fn everything(producers: &[ProducerLog]) -> Vec<(u64, u64)> {
    producers.iter().map(|p| (0, p.attempted())).collect()
}

/// Publish outcomes of all producers.
pub(crate) fn publish_account(producers: &[ProducerLog]) -> PublishAccount {
    publish_account_in(producers, &everything(producers))
}

/// Publish outcomes of the messages in `window`.
pub(crate) fn publish_account_in(producers: &[ProducerLog], window: &Window) -> PublishAccount {
    let mut account = PublishAccount::default();
    for (log, &(from, to)) in producers.iter().zip(window) {
        let to = to.min(log.attempted()) as usize;
        let from = (from as usize).min(to);
        account.attempted += (to - from) as u64;
        for &s in &log.status[from..to] {
            match s {
                s if s == PublishStatus::Confirmed as u8 => account.confirmed += 1,
                s if s == PublishStatus::Failed as u8 => account.failed += 1,
                _ => account.unknown += 1,
            }
        }
    }
    account
}

/// The account of `group` against what `producers` sent.
pub(crate) fn group_account(producers: &[ProducerLog], group: &GroupLog) -> GroupAccount {
    let mut account = group_account_in(producers, group, &everything(producers));
    account.delivered = group.delivered;
    account.redelivered = group.redelivered;
    account.out_of_order = group.out_of_order;
    // Not ours, or sequence numbers (or producers) that were never attempted.
    account.unexpected = group.foreign + never_attempted(producers, &group.counts);
    if let (Some(a), Some(f)) = (account.failures.as_mut(), &group.failures) {
        a.failed_attempts = f.failed_attempts;
        a.dead_letter_unexpected = f.dead_foreign + never_attempted(producers, &f.dead);
    }
    account
}

/// The counts in a per-producer `table` of messages no producer attempted.
fn never_attempted(producers: &[ProducerLog], table: &[Vec<u8>]) -> u64 {
    table
        .iter()
        .enumerate()
        .map(|(p, counts)| {
            let attempted = producers.get(p).map_or(0, ProducerLog::attempted) as usize;
            counts
                .iter()
                .skip(attempted)
                .map(|&n| u64::from(n))
                .sum::<u64>()
        })
        .sum()
}

/// Confirmed messages that `group` has not yet completed: not delivered, or
/// (with failures) neither processed nor dead-lettered. The drain waits for them.
pub fn incomplete(producers: &[ProducerLog], group: &GroupLog) -> u64 {
    group_account_in(producers, group, &everything(producers)).gone()
}

/// Unique, duplicates, lost and recovered among the messages in `window`
/// (the fields about the group's whole history stay 0); with failures, what
/// became of the poison and transient messages, where `poison_lost` and
/// `lost` still include what the broker may hold.
pub(crate) fn group_account_in(
    producers: &[ProducerLog],
    group: &GroupLog,
    window: &Window,
) -> GroupAccount {
    let mut account = GroupAccount::default();
    let mut failures = group.failures.as_ref().map(|_| FailureAccount::default());
    for (p, (log, &(from, to))) in producers.iter().zip(window).enumerate() {
        for seq in from..to.min(log.attempted()) {
            let count = get(&group.counts, p, seq);
            let confirmed = log.status(seq) == Some(PublishStatus::Confirmed as u8);
            let (Some(f), Some(a)) = (&group.failures, failures.as_mut()) else {
                match (confirmed, count) {
                    (true, 0) => account.lost += 1,
                    (false, 0) => {}
                    (confirmed, n) => {
                        account.unique += 1;
                        account.duplicates += u64::from(n) - 1;
                        account.recovered += u64::from(!confirmed);
                    }
                }
                continue;
            };
            let state = get(&f.state, p, seq);
            let dead = get(&f.dead, p, seq);
            let processed = state & PROCESSED != 0;
            let refused = state == REFUSED;
            let failed = if refused { 0 } else { state & !PROCESSED };
            let seen = count > 0 || dead > 0;
            if !confirmed && !seen {
                continue; // the broker never had it, as far as anyone knows
            }
            // A refused message is dead-lettered whatever its fate would be.
            let fate = match refused {
                true => None,
                false => Some(f.failures.fate_of(f.seed, p as u32, seq)),
            };
            a.poison += u64::from(fate == Some(Fate::Poison));
            a.transient += u64::from(fate == Some(Fate::Transient));
            a.refused += u64::from(refused);
            a.processed += u64::from(processed);
            if dead > 0 {
                a.dead_lettered += 1;
                a.dead_letter_duplicates += u64::from(dead) - 1;
                a.dead_lettered_wrongly += u64::from(!refused && fate != Some(Fate::Poison));
            }
            if count > 0 {
                account.unique += 1;
                account.duplicates += u64::from(count.saturating_sub(1 + failed));
                account.recovered += u64::from(!confirmed);
                let i = usize::from(count) - 1;
                if a.attempts.len() <= i {
                    a.attempts.resize(i + 1, 0);
                }
                a.attempts[i] += 1;
            }
            if confirmed && !processed && dead == 0 {
                match fate {
                    Some(Fate::Poison) => a.poison_lost += 1,
                    _ => account.lost += 1,
                }
            }
        }
    }
    account.failures = failures;
    account
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn env(producer: u32, seq: u64, key: u64) -> Envelope {
        Envelope {
            run: 1,
            producer,
            seq,
            key,
            intended_ns: 0,
            sent_ns: 0,
        }
    }

    /// Two producers: p0 sends 0..4, p1 sends 0..3, with the given outcomes.
    fn producers() -> Vec<ProducerLog> {
        let mut p0 = ProducerLog::default();
        let mut p1 = ProducerLog::default();
        for _ in 0..4 {
            p0.attempt();
        }
        for _ in 0..3 {
            p1.attempt();
        }
        p0.settle(0, PublishStatus::Confirmed);
        p0.settle(1, PublishStatus::Confirmed);
        p0.settle(2, PublishStatus::Failed); // refused by the broker
                                             // p0 seq 3 stays pending: unknown
        p1.settle(0, PublishStatus::Confirmed);
        p1.settle(1, PublishStatus::Confirmed);
        p1.settle(2, PublishStatus::Confirmed);
        vec![p0, p1]
    }

    #[test]
    fn publish_outcomes_are_counted() {
        let account = publish_account(&producers());
        assert_eq!(
            account,
            PublishAccount {
                attempted: 7,
                confirmed: 5,
                failed: 1,
                unknown: 1
            }
        );
    }

    #[test]
    fn a_clean_history_has_nothing_to_report() {
        let mut producer = ProducerLog::default();
        let mut group = GroupLog::default();
        for seq in 0..100 {
            producer.attempt();
            producer.settle(seq, PublishStatus::Confirmed);
            assert_eq!(group.record(&env(0, seq, seq % 7), false), Seen::First);
        }
        let account = group_account(&[producer], &group);
        assert_eq!(
            account,
            GroupAccount {
                delivered: 100,
                unique: 100,
                ..GroupAccount::default()
            }
        );
    }

    #[test]
    fn lost_duplicate_recovered_and_unexpected() {
        let producers = producers();
        let mut group = GroupLog::default();
        group.record(&env(0, 0, 1), false);
        // p0 seq 1: confirmed, never delivered -> lost
        group.record(&env(0, 3, 2), false); // unknown, yet delivered -> recovered
        group.record(&env(1, 0, 1), false);
        group.record(&env(1, 1, 1), false);
        assert_eq!(group.record(&env(1, 1, 1), true), Seen::Duplicate); // duplicate
        group.record(&env(1, 2, 1), false);
        group.record(&env(1, 9, 1), false); // never sent -> unexpected
        group.record(&env(5, 0, 1), false); // no such producer -> unexpected
        group.record_foreign(); // not our message -> unexpected
        let account = group_account(&producers, &group);
        assert_eq!(
            account,
            GroupAccount {
                delivered: 9,
                unique: 5,
                duplicates: 1,
                redelivered: 1,
                lost: 1,
                recovered: 1,
                unexpected: 3,
                out_of_order: 0,
                failures: None,
            }
        );
    }

    #[test]
    fn a_window_counts_only_its_own_messages() {
        let producers = producers();
        let mut group = GroupLog::default();
        group.record(&env(0, 0, 1), false);
        group.record(&env(0, 3, 2), false);
        group.record(&env(1, 1, 1), false);
        group.record(&env(1, 1, 1), true);
        // p0 seq 1..4 and p1 seq 1..3.
        let window = [(1, 4), (1, 3)];
        let publish = publish_account_in(&producers, &window);
        assert_eq!(
            publish,
            PublishAccount {
                attempted: 5,
                confirmed: 3,
                failed: 1,
                unknown: 1
            }
        );
        let account = group_account_in(&producers, &group, &window);
        // p0 seq 1 lost, p0 seq 3 recovered, p1 seq 1 twice, p1 seq 2 lost.
        assert_eq!(
            (
                account.unique,
                account.lost,
                account.recovered,
                account.duplicates
            ),
            (2, 2, 1, 1)
        );
    }

    #[test]
    fn order_is_judged_per_producer_and_key() {
        let mut group = GroupLog::default();
        group.record(&env(0, 1, 5), false);
        group.record(&env(0, 0, 5), false); // before seq 1 of the same key: out of order
        group.record(&env(0, 2, 6), false);
        group.record(&env(1, 0, 5), false); // other producer: its own order
        group.record(&env(0, 3, 5), false);
        group.record(&env(0, 3, 5), true); // a redelivery is a duplicate, not disorder
        group.record(&env(0, 4, 6), false);
        let producers = {
            let mut p0 = ProducerLog::default();
            let mut p1 = ProducerLog::default();
            (0..5).for_each(|s| {
                p0.attempt();
                p0.settle(s, PublishStatus::Confirmed);
            });
            p1.attempt();
            p1.settle(0, PublishStatus::Confirmed);
            vec![p0, p1]
        };
        let account = group_account(&producers, &group);
        assert_eq!(account.out_of_order, 1);
        assert_eq!(account.duplicates, 1);
        assert_eq!(account.lost, 0);
    }

    #[test]
    fn ten_million_messages_fit_in_the_memory_budget() {
        // 1 status byte per message and 1 count byte per message per group.
        let mut producer = ProducerLog::default();
        let mut group = GroupLog::default();
        let n = 10_000_000u64;
        for seq in 0..n {
            producer.attempt();
            group.record(&env(0, seq, seq % 1000), false);
        }
        let bytes = producer.status.capacity() + group.counts[0].capacity();
        assert!(bytes as u64 <= 2 * n * 2, "{bytes} bytes for {n} messages"); // Vec growth at most doubles
        assert!((bytes as u64) < 16 * n);
    }

    #[test]
    fn a_group_with_failures_stays_within_the_memory_budget() {
        // Plus a state byte per message, and a dead-letter byte per message
        // up to the last one dead-lettered.
        let mut group = GroupLog::for_group(&risk());
        let n = 5_000_000u64;
        for seq in 0..n {
            let e = env(0, seq, seq % 1000);
            group.record(&e, false);
            if let Some((Decision::Fail(_), _)) = group.decide(&e) {
                group.record_dead_letter(&e);
            }
        }
        let f = group.failures.as_ref().unwrap();
        let bytes = group.counts[0].capacity() + f.state[0].capacity() + f.dead[0].capacity();
        assert!(bytes as u64 <= 3 * n * 2, "{bytes} bytes for {n} messages");
        assert!((bytes as u64) < 16 * n);
        // The keys' last sequence numbers are per key, not per message.
        assert_eq!(group.last_per_key.len(), 1000);
    }

    fn risk() -> ConsumerGroup {
        ConsumerGroup {
            failures: Some(Failures {
                poison: 0.1,
                transient: 0.2,
                transient_attempts: 2,
            }),
            ..ConsumerGroup::named("risk".into())
        }
    }

    /// Sequence numbers of producer 0 with `fate` in group risk.
    fn with_fate(fate: Fate, n: usize) -> Vec<u64> {
        let failures = risk().failures.unwrap();
        (0..)
            .filter(|&s| failures.fate("risk", 0, s) == fate)
            .take(n)
            .collect()
    }

    #[test]
    fn a_group_with_failures_fails_retries_skips_and_dead_letters() {
        let mut group = GroupLog::for_group(&risk());
        let (poison, transient, fine) = (
            with_fate(Fate::Poison, 1)[0],
            with_fate(Fate::Transient, 1)[0],
            with_fate(Fate::Fine, 1)[0],
        );
        let deliver = |group: &mut GroupLog, seq: u64| {
            group.record(&env(0, seq, 1), false);
            group.decide(&env(0, seq, 1)).unwrap()
        };
        // Fine: processed at once, complete; a second delivery is skipped.
        assert_eq!(deliver(&mut group, fine), (Decision::Process, true));
        assert_eq!(deliver(&mut group, fine), (Decision::Skip, false));
        // Transient: fails twice, then processed.
        assert_eq!(deliver(&mut group, transient), (Decision::Fail(1), false));
        assert_eq!(deliver(&mut group, transient), (Decision::Fail(2), false));
        assert_eq!(deliver(&mut group, transient), (Decision::Process, true));
        // Poison: fails every time, complete only when dead-lettered.
        for attempt in 1..=5 {
            assert_eq!(
                deliver(&mut group, poison),
                (Decision::Fail(attempt), false)
            );
        }
        assert_eq!(
            group.record_dead_letter(&env(0, poison, 1)),
            (Seen::First, true)
        );
        assert_eq!(
            group.record_dead_letter(&env(0, poison, 1)),
            (Seen::Duplicate, false)
        );
        group.record_dead_foreign();
        let mut producer = ProducerLog::default();
        for seq in 0..=poison.max(transient).max(fine) {
            producer.attempt();
            producer.settle(seq, PublishStatus::Confirmed);
        }
        let account = group_account(&[producer], &group);
        let f = account.failures.clone().unwrap();
        assert_eq!((f.processed, f.failed_attempts), (2, 7));
        assert_eq!((f.dead_lettered, f.dead_letter_duplicates), (1, 1));
        assert_eq!(f.dead_letter_unexpected, 1);
        assert_eq!(f.dead_lettered_wrongly, 0);
        assert_eq!(f.attempts, vec![0, 1, 1, 0, 1]); // fine twice, transient 3, poison 5
                                                     // Retries are not duplicates: only the skipped delivery is.
        assert_eq!(account.duplicates, 1);
        // Every other message was confirmed and never delivered: lost (or
        // still held by the broker), poison ones as poison_lost.
        let failures = risk().failures.unwrap();
        let others: Vec<u64> = (0..=poison.max(transient).max(fine))
            .filter(|s| ![poison, transient, fine].contains(s))
            .collect();
        let poison_others = others
            .iter()
            .filter(|&&s| failures.fate("risk", 0, s) == Fate::Poison)
            .count() as u64;
        assert_eq!(f.poison_lost, poison_others);
        assert_eq!(account.lost, others.len() as u64 - poison_others);
    }

    #[test]
    fn poison_not_dead_lettered_is_poison_lost_and_a_wrong_dead_letter_is_named() {
        let mut group = GroupLog::for_group(&risk());
        let poison = with_fate(Fate::Poison, 2);
        let fine = with_fate(Fate::Fine, 1)[0];
        let mut producer = ProducerLog::default();
        for seq in 0..=poison[1].max(fine) {
            producer.attempt();
            producer.settle(seq, PublishStatus::Confirmed);
            let e = env(0, seq, 1);
            group.record(&e, false);
            group.decide(&e);
        }
        // Poison[0] reaches the dead-letter destination, poison[1] never
        // does; `fine` was processed and dead-lettered as well: wrongly.
        group.record_dead_letter(&env(0, poison[0], 1));
        assert_eq!(
            group.record_dead_letter(&env(0, fine, 1)),
            (Seen::First, false)
        );
        let f = group_account(&[producer.clone()], &group).failures.unwrap();
        assert_eq!(f.dead_lettered, 2);
        assert_eq!(f.dead_lettered_wrongly, 1);
        // Every poison message but poison[0] is gone, poison[1] among them.
        assert!(f.poison >= 2);
        assert_eq!(f.poison_lost, f.poison - 1);
        // Incomplete for the drain: those, and the transient messages that
        // failed once and were never delivered again.
        assert_eq!(
            incomplete(&[producer.clone()], &group),
            f.poison_lost + f.transient
        );
    }
}
