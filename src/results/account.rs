//! The ledger's accounts as results keep them: what became of the messages
//! published, and of each group's deliveries. `run::ledger` counts them.

use serde::{Deserialize, Serialize};

/// Publish outcomes over all producers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PublishAccount {
    /// Publishes attempted.
    pub attempted: u64,
    /// Confirmed by the broker.
    pub confirmed: u64,
    /// Refused by the broker, or failed to send.
    pub failed: u64,
    /// No answer by the end of the drain.
    pub unknown: u64,
}

/// The final account of one consumer group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupAccount {
    /// Deliveries, duplicates included.
    pub delivered: u64,
    /// Distinct messages of this run delivered.
    pub unique: u64,
    /// Deliveries beyond the first of a message, other than the retries of
    /// its failed attempts: what an idempotent consumer must skip.
    pub duplicates: u64,
    /// Deliveries the broker flagged as redeliveries.
    pub redelivered: u64,
    /// Confirmed, and never delivered by the end of the drain (in a group
    /// with failures: a message that is not poison, never processed nor
    /// dead-lettered, a refused one included).
    pub lost: u64,
    /// Not confirmed (failed or unknown), yet delivered.
    pub recovered: u64,
    /// Delivered, but never sent in this run.
    pub unexpected: u64,
    /// First deliveries that came after a later message of the same producer and key.
    pub out_of_order: u64,
    /// For a group that fails messages on purpose: what became of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<FailureAccount>,
}

/// What became of the messages a group failed on purpose, and of the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FailureAccount {
    /// Poison messages the broker took (confirmed, or seen though not
    /// confirmed): what the dead-letter destination should hold.
    pub poison: u64,
    /// Transient messages the broker took.
    pub transient: u64,
    /// Messages the group's typed decoder refused (docs/cross-language.md,
    /// schema evolution): dead-lettered at once, whatever their fate would
    /// have been; one missing from the dead-letter destination is lost.
    #[serde(default)]
    pub refused: u64,
    /// Distinct messages processed, transient ones after their retries included.
    pub processed: u64,
    /// Attempts that failed on purpose, each handed back to the broker (or
    /// dead-lettered, at the last).
    pub failed_attempts: u64,
    /// Distinct messages of this run read from the dead-letter destination.
    pub dead_lettered: u64,
    /// Copies read from the dead-letter destination beyond the first.
    pub dead_letter_duplicates: u64,
    /// Messages neither poison nor refused, found in the dead-letter destination.
    pub dead_lettered_wrongly: u64,
    /// Poison messages neither processed nor dead-lettered by the end, and
    /// not held by the broker either.
    pub poison_lost: u64,
    /// Dead letters that are not this run's messages.
    pub dead_letter_unexpected: u64,
    /// Deliveries per message: `attempts[i]` messages were delivered
    /// `i + 1` times.
    pub attempts: Vec<u64>,
}

impl GroupAccount {
    /// Confirmed messages gone: `lost`, plus `poison_lost` with failures.
    pub(crate) fn gone(&self) -> u64 {
        self.lost + self.failures.as_ref().map_or(0, |f| f.poison_lost)
    }
}
