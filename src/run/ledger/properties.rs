//! Property tests: any history of publishes and deliveries (duplicates,
//! reorderings, losses, foreign messages, messages never sent) gives the
//! counts a plain model of the same history gives.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

/// One producer's messages: each one's outcome (0 pending, 1 confirmed,
/// 2 failed), key, and how many times the group is handed it.
type Sent = Vec<(u8, u64, u8)>;

/// A delivery, in the order the group sees them.
#[derive(Clone, Debug)]
enum Delivery {
    /// Message (`producer`, `seq`), flagged redelivered by the broker or not.
    Ours(u32, u64, bool),
    /// Not a message of this run.
    Foreign,
}

/// Up to three producers of up to 40 messages, and a delivery order: each
/// message as many times as drawn, then shuffled, with foreign messages
/// and sequence numbers no producer reached mixed in.
fn history() -> impl Strategy<Value = (Vec<Sent>, Vec<Delivery>)> {
    let message = (
        0u8..3,
        0u64..4,
        prop_oneof![3 => Just(0u8), 6 => Just(1), 2 => 2u8..5],
    );
    let producers = prop::collection::vec(prop::collection::vec(message, 0..40), 1..4);
    (producers, 0usize..4, 0usize..3).prop_flat_map(|(producers, foreign, beyond)| {
        let mut deliveries = Vec::new();
        for (p, sent) in producers.iter().enumerate() {
            for (seq, &(_, _, copies)) in sent.iter().enumerate() {
                for copy in 0..copies {
                    deliveries.push(Delivery::Ours(p as u32, seq as u64, copy > 0));
                }
            }
            for extra in 0..beyond {
                deliveries.push(Delivery::Ours(p as u32, (sent.len() + extra) as u64, false));
            }
        }
        deliveries.extend(std::iter::repeat_n(Delivery::Foreign, foreign));
        (Just(producers), Just(deliveries).prop_shuffle())
    })
}

/// The counts of `deliveries` against `producers`, worked out plainly.
fn model(producers: &[Sent], deliveries: &[Delivery]) -> GroupAccount {
    let mut account = GroupAccount::default();
    let mut seen: HashMap<(u32, u64), u64> = HashMap::new();
    let mut highest: HashMap<(u32, u64), u64> = HashMap::new();
    for delivery in deliveries {
        account.delivered += 1;
        let &Delivery::Ours(p, seq, redelivered) = delivery else {
            account.unexpected += 1;
            continue;
        };
        account.redelivered += u64::from(redelivered);
        // A sequence number its producer never reached is unexpected. The
        // group cannot tell at delivery time (it never sees the producers'
        // logs), so its order is judged like any other's.
        let sent = producers[p as usize].get(seq as usize);
        account.unexpected += u64::from(sent.is_none());
        let key = sent.map_or(0, |&(_, key, _)| key);
        let copies = seen.entry((p, seq)).or_default();
        *copies += 1;
        if *copies > 1 {
            continue;
        }
        let last = highest.entry((p, key)).or_insert(seq);
        if seq < *last {
            account.out_of_order += 1;
        } else {
            *last = seq;
        }
    }
    for (p, sent) in producers.iter().enumerate() {
        for (seq, &(status, _, _)) in sent.iter().enumerate() {
            let copies = seen.get(&(p as u32, seq as u64)).copied().unwrap_or(0);
            let confirmed = status == PublishStatus::Confirmed as u8;
            account.lost += u64::from(confirmed && copies == 0);
            account.unique += u64::from(copies > 0);
            account.duplicates += copies.saturating_sub(1);
            account.recovered += u64::from(!confirmed && copies > 0);
        }
    }
    account
}

/// What the ledger makes of the same history.
fn ledger(producers: &[Sent], deliveries: &[Delivery]) -> GroupAccount {
    let logs: Vec<ProducerLog> = producers
        .iter()
        .map(|sent| {
            let mut log = ProducerLog::default();
            for &(status, _, _) in sent {
                let seq = log.attempt();
                match status {
                    1 => log.settle(seq, PublishStatus::Confirmed),
                    2 => log.settle(seq, PublishStatus::Failed),
                    _ => {}
                }
            }
            log
        })
        .collect();
    let mut group = GroupLog::default();
    for delivery in deliveries {
        match *delivery {
            Delivery::Ours(producer, seq, redelivered) => {
                let key = producers[producer as usize]
                    .get(seq as usize)
                    .map_or(0, |&(_, key, _)| key);
                group.record(&super::tests::env(producer, seq, key), redelivered);
            }
            Delivery::Foreign => group.record_foreign(),
        }
    }
    let account = group_account(&logs, &group);
    // What the drain waits for is what is lost so far.
    assert_eq!(incomplete(&logs, &group), account.lost);
    account
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_history_is_counted_as_the_model_counts_it((producers, deliveries) in history()) {
        prop_assert_eq!(ledger(&producers, &deliveries), model(&producers, &deliveries));
    }

    #[test]
    fn every_message_is_lost_unknown_failed_or_delivered((producers, deliveries) in history()) {
        let account = ledger(&producers, &deliveries);
        let attempted: usize = producers.iter().map(Vec::len).sum();
        let never_delivered = producers
            .iter()
            .enumerate()
            .flat_map(|(p, sent)| (0..sent.len()).map(move |seq| (p as u32, seq as u64)))
            .filter(|id| {
                !deliveries
                    .iter()
                    .any(|d| matches!(d, Delivery::Ours(p, s, _) if (*p, *s) == *id))
            })
            .count() as u64;
        prop_assert_eq!(account.unique + never_delivered, attempted as u64);
        prop_assert!(account.lost <= never_delivered);
        let distinct: HashSet<(u32, u64)> = deliveries
            .iter()
            .filter_map(|d| match *d {
                Delivery::Ours(p, s, _) => Some((p, s)),
                Delivery::Foreign => None,
            })
            .collect();
        prop_assert_eq!(
            account.delivered,
            account.unique + account.duplicates + account.unexpected
        );
        prop_assert!(distinct.len() as u64 >= account.unique);
    }
}
