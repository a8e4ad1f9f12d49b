//! A producer's sends awaiting an answer, by token. Tokens are handed out in
//! order and mostly answered in order, so they live in a ring indexed by
//! token: an answer is an index, not a hash lookup over a table as large as
//! the in-flight window (that lookup was 8% of brokerbench's CPU per Kafka
//! message at 100 bytes, docs/performance.md).

use std::collections::VecDeque;

use crate::driver::Token;

pub(super) struct InFlight<T> {
    /// Slot `i` is token `base + i`: `None` once answered, or never sent.
    ring: VecDeque<Option<T>>,
    base: Token,
    /// Sends still in the ring.
    in_ring: usize,
    /// Sends that fell `span` tokens behind the newest while still
    /// unanswered (one the broker is slow to answer while the rest go on):
    /// kept apart, so that the ring never grows past `span` slots.
    stragglers: foldhash::HashMap<Token, T>,
    span: usize,
}

impl<T> InFlight<T> {
    /// For a window of `window` sends at most: the ring spans four windows.
    pub(super) fn new(window: usize) -> Self {
        InFlight {
            ring: VecDeque::new(),
            base: 0,
            in_ring: 0,
            stragglers: foldhash::HashMap::default(),
            span: window.saturating_mul(4).max(1024),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.in_ring + self.stragglers.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `token`'s send; tokens come in increasing order.
    pub(super) fn insert(&mut self, token: Token, send: T) {
        if self.ring.is_empty() {
            self.base = token;
        }
        let end = self.base + self.ring.len() as Token;
        debug_assert!(token >= end, "token {token} out of order (next {end})");
        // Tokens of sends that failed at once never come here: their slots stay empty.
        for _ in end..token {
            self.ring.push_back(None);
        }
        self.ring.push_back(Some(send));
        self.in_ring += 1;
        while self.ring.len() > self.span {
            if let Some(straggler) = self.ring.pop_front().flatten() {
                self.in_ring -= 1;
                self.stragglers.insert(self.base, straggler);
            }
            self.base += 1;
        }
        self.trim();
    }

    /// Takes `token`'s send out; `None` if it is not here (answered or
    /// timed out already).
    pub(super) fn remove(&mut self, token: Token) -> Option<T> {
        if token < self.base {
            return self.stragglers.remove(&token);
        }
        let send = self.ring.get_mut((token - self.base) as usize)?.take()?;
        self.in_ring -= 1;
        self.trim();
        Some(send)
    }

    /// Every send still here, with its token.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Token, &T)> {
        let base = self.base;
        self.ring
            .iter()
            .enumerate()
            .filter_map(move |(i, slot)| slot.as_ref().map(|send| (base + i as Token, send)))
            .chain(self.stragglers.iter().map(|(token, send)| (*token, send)))
    }

    /// Drops answered slots from the front.
    fn trim(&mut self) {
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_any_order_take_each_send_once() {
        let mut sends = InFlight::new(8);
        for token in 0..10 {
            sends.insert(token, token * 10);
        }
        assert_eq!(sends.len(), 10);
        assert_eq!(sends.remove(3), Some(30));
        assert_eq!(sends.remove(3), None, "answered twice");
        assert_eq!(sends.remove(0), Some(0));
        assert_eq!(sends.remove(9), Some(90));
        assert_eq!(sends.remove(42), None, "never sent");
        let mut left: Vec<_> = sends.iter().map(|(t, v)| (t, *v)).collect();
        left.sort();
        assert_eq!(left, [1, 2, 4, 5, 6, 7, 8].map(|t| (t, t * 10)));
        for token in [1, 2, 4, 5, 6, 7, 8] {
            assert_eq!(sends.remove(token), Some(token * 10));
        }
        assert!(sends.is_empty());
        assert!(sends.ring.is_empty(), "answered slots are dropped");
    }

    #[test]
    fn tokens_of_sends_that_failed_at_once_leave_gaps() {
        let mut sends = InFlight::new(8);
        sends.insert(5, 'a');
        sends.insert(8, 'b'); // 6 and 7 failed at once
        assert_eq!(sends.len(), 2);
        assert_eq!(sends.remove(6), None);
        assert_eq!(sends.remove(5), Some('a'));
        assert_eq!(sends.remove(8), Some('b'));
        assert!(sends.is_empty());
        // An empty ring starts again wherever the next token is.
        sends.insert(100, 'c');
        assert_eq!(sends.iter().map(|(t, _)| t).collect::<Vec<_>>(), [100]);
    }

    #[test]
    fn a_send_never_answered_moves_aside_and_the_ring_stays_bounded() {
        let mut sends = InFlight::new(1);
        let span = sends.span as Token;
        sends.insert(0, 0);
        for token in 1..10 * span {
            sends.insert(token, token);
            assert_eq!(sends.remove(token), Some(token));
        }
        assert!(sends.ring.len() <= sends.span);
        assert_eq!(sends.len(), 1);
        assert_eq!(sends.iter().collect::<Vec<_>>(), [(0, &0)]);
        assert_eq!(
            sends.remove(0),
            Some(0),
            "the straggler is still answerable"
        );
        assert!(sends.is_empty());
    }
}
