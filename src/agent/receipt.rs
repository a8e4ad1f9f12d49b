//! The receipt an agent writes per delivery: 48 bytes, little-endian, laid
//! out in docs/cross-language.md. Fixed-size and binary, so that reading one
//! costs less than a delivery to brokerbench's own consumer.

use crate::driver::{Receipt, Settle};
use crate::event::Envelope;

/// Bytes in one receipt.
pub const RECEIPT_BYTES: usize = 48;

const READY: u8 = 1;
const DELIVERY: u8 = 2;
const FOREIGN: u8 = 3;
const DECODE_FAILED: u8 = 4;

const PROCESSED: u8 = 0;
const SKIPPED: u8 = 1;
const FAILED: u8 = 2;
const DEAD_LETTERED: u8 = 3;
const REFUSED: u8 = 4;

/// Flag bits: the broker flagged it redelivered; (decode failed only) the
/// envelope was read.
const REDELIVERED: u8 = 1;
const ENVELOPE_READ: u8 = 2;

/// What one receipt says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// The agent has subscribed.
    Ready,
    /// One delivery, as the agent read and settled it.
    Delivery {
        receipt: Receipt,
        /// The broker flagged it redelivered.
        redelivered: bool,
    },
}

/// Reads one receipt; the error says what is wrong with it.
pub fn parse(bytes: &[u8; RECEIPT_BYTES]) -> Result<Record, String> {
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let [kind, flags, action, attempt] = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if kind == READY {
        return Ok(Record::Ready);
    }
    if !matches!(kind, DELIVERY | FOREIGN | DECODE_FAILED) {
        return Err(format!("wrote a receipt of unknown kind {kind}"));
    }
    let envelope_read = flags & ENVELOPE_READ != 0;
    if flags > REDELIVERED | ENVELOPE_READ || (envelope_read && kind != DECODE_FAILED) {
        return Err(format!("wrote a receipt with unknown flags {flags:#x}"));
    }
    if (action == REFUSED) != envelope_read {
        return Err(format!(
            "wrote a receipt that refused a message without its envelope, or the reverse (flags {flags:#x}, action {action})"
        ));
    }
    let settled = match action {
        PROCESSED | SKIPPED => Settle::Ack,
        REFUSED => Settle::Refuse,
        FAILED | DEAD_LETTERED if attempt > 0 => Settle::Failed {
            attempt: u32::from(attempt),
        },
        FAILED | DEAD_LETTERED => return Err("failed a message at attempt 0".to_string()),
        other => return Err(format!("wrote a receipt with unknown action {other}")),
    };
    let envelope = Envelope {
        // The agent compared the run id; the caller knows this run's.
        run: 0,
        producer: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
        seq: u64_at(8),
        key: u64_at(16),
        intended_ns: u64_at(24),
        sent_ns: u64_at(32),
    };
    Ok(Record::Delivery {
        receipt: Receipt {
            envelope: (kind == DELIVERY || envelope_read).then_some(envelope),
            decode_failed: kind == DECODE_FAILED,
            received_ns: u64_at(40),
            settled,
            skipped: action == SKIPPED,
        },
        redelivered: flags & REDELIVERED != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receipt as the agents write it (Python: `struct.pack('<BBBBIQQQQQ', ...)`).
    fn written(fields: (u8, u8, u8, u8, u32), numbers: [u64; 5]) -> [u8; RECEIPT_BYTES] {
        let (kind, flags, action, attempt, producer) = fields;
        let mut bytes = vec![kind, flags, action, attempt];
        bytes.extend_from_slice(&producer.to_le_bytes());
        for n in numbers {
            bytes.extend_from_slice(&n.to_le_bytes());
        }
        bytes.try_into().expect("48 bytes")
    }

    #[test]
    fn a_delivery_receipt_carries_the_envelope_and_what_the_agent_did() {
        let numbers = [41, 7, 1_000, 1_500, 2_250];
        let Ok(Record::Delivery {
            receipt,
            redelivered,
        }) = parse(&written((DELIVERY, 1, FAILED, 2, 3), numbers))
        else {
            panic!("not a delivery");
        };
        assert!(redelivered);
        assert_eq!(receipt.settled, Settle::Failed { attempt: 2 });
        assert!(!receipt.skipped && !receipt.decode_failed);
        assert_eq!(receipt.received_ns, 2_250);
        let e = receipt.envelope.expect("an envelope");
        assert_eq!(
            (e.producer, e.seq, e.key, e.intended_ns, e.sent_ns),
            (3, 41, 7, 1_000, 1_500)
        );
        let Ok(Record::Delivery { receipt, .. }) =
            parse(&written((DELIVERY, 0, SKIPPED, 0, 0), numbers))
        else {
            panic!("not a delivery");
        };
        assert_eq!((receipt.settled, receipt.skipped), (Settle::Ack, true));
    }

    #[test]
    fn foreign_and_undecodable_messages_have_no_envelope() {
        for (kind, decode_failed) in [(FOREIGN, false), (DECODE_FAILED, true)] {
            let Ok(Record::Delivery { receipt, .. }) =
                parse(&written((kind, 0, PROCESSED, 0, 0), [0; 5]))
            else {
                panic!("not a delivery");
            };
            assert_eq!(receipt.envelope, None);
            assert_eq!(receipt.decode_failed, decode_failed);
        }
        assert_eq!(
            parse(&written((READY, 0, 0, 0, 0), [0; 5])),
            Ok(Record::Ready)
        );
    }

    #[test]
    fn a_refused_event_carries_the_envelope_it_could_read() {
        let numbers = [41, 7, 1_000, 1_500, 2_250];
        let flags = ENVELOPE_READ | REDELIVERED;
        let Ok(Record::Delivery {
            receipt,
            redelivered,
        }) = parse(&written((DECODE_FAILED, flags, REFUSED, 0, 3), numbers))
        else {
            panic!("not a delivery");
        };
        assert!(redelivered && receipt.decode_failed);
        assert_eq!(receipt.settled, Settle::Refuse);
        assert_eq!(receipt.envelope.map(|e| (e.producer, e.seq)), Some((3, 41)));
    }

    #[test]
    fn garbage_is_named() {
        for (fields, said) in [
            ((9, 0, 0, 0, 0), "unknown kind 9"),
            ((DELIVERY, 4, 0, 0, 0), "unknown flags"),
            ((DELIVERY, 0, 7, 0, 0), "unknown action 7"),
            ((DELIVERY, 0, FAILED, 0, 0), "attempt 0"),
            ((DELIVERY, ENVELOPE_READ, REFUSED, 0, 0), "unknown flags"),
            ((DECODE_FAILED, ENVELOPE_READ, PROCESSED, 0, 0), "refused"),
            ((DECODE_FAILED, 0, REFUSED, 0, 0), "refused"),
        ] {
            let err = parse(&written(fields, [0; 5])).expect_err("garbage");
            assert!(err.contains(said), "{err}");
        }
    }
}
