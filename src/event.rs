//! The event every message carries: a versioned `OrderCreated` in JSON.
//!
//! The business fields are what a real order service would publish
//! (`order_id`, `user_id`, `total`, `timestamp`, `version`, `trace_id`); the
//! `bench` envelope is ours: who sent it, its sequence number, and two
//! instants on the producing process's monotonic clock (nanoseconds since the
//! run's epoch): when it *should* have been sent (the pacer's intended time,
//! for latency without coordinated omission) and when it was. Consumers run
//! in the same process, so end-to-end latency never depends on broker
//! timestamps (AMQP's are whole seconds). A `pad` field fills the event to
//! the scenario's message size.

use serde::{Deserialize, Serialize};

/// The schema version carried in every event.
pub const VERSION: &str = "v1";

/// The benchmark's part of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Identifies the run, so messages left over from another run are told apart.
    pub run: u64,
    /// Producer index within the run.
    pub producer: u32,
    /// Sequence number within the producer, from 0.
    pub seq: u64,
    /// Key index; `user_id` is `user-<key>`. Per-key order is checked on it.
    pub key: u64,
    /// Intended send time, ns since the run's epoch.
    pub intended_ns: u64,
    /// Actual send time, ns since the run's epoch.
    pub sent_ns: u64,
}

impl Envelope {
    /// The business id consumers are idempotent on.
    pub fn order_id(&self) -> String {
        format!("ord-{:x}-{}-{}", self.run, self.producer, self.seq)
    }
}

#[derive(Serialize)]
struct OrderCreated<'a> {
    version: &'static str,
    order_id: &'a str,
    user_id: &'a str,
    total: f64,
    timestamp: &'a str,
    trace_id: &'a str,
    bench: &'a Envelope,
}

/// One encoded message with the metadata drivers put in headers.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The JSON event, padded to the message size.
    pub payload: Vec<u8>,
    /// Business id (AMQP message-id, `Nats-Msg-Id`).
    pub order_id: String,
    /// Partition / ordering key.
    pub user_id: String,
    /// W3C trace id, 32 hex digits, also sent as a header.
    pub trace_id: String,
}

/// Encodes `envelope` as an `OrderCreated` event of `size` bytes, or of its
/// natural size (about 270 bytes) if `size` is smaller: the event is never cut.
/// Its type, `events.order.created.v1`, travels as the subject / routing key /
/// topic and (AMQP) the `type` property.
pub fn encode(envelope: &Envelope, size: usize) -> Outgoing {
    let order_id = envelope.order_id();
    let user_id = format!("user-{}", envelope.key);
    let trace_id = format!("{:032x}", rand::random::<u128>());
    let timestamp = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let event = OrderCreated {
        version: VERSION,
        order_id: &order_id,
        user_id: &user_id,
        // A plausible amount that differs per order, in cents precision.
        total: ((envelope.seq * 7919 + envelope.key * 104_729) % 100_000) as f64 / 100.0 + 1.0,
        timestamp: &timestamp,
        trace_id: &trace_id,
        bench: envelope,
    };
    let mut payload = Vec::with_capacity(size.max(256));
    serde_json::to_writer(&mut payload, &event).expect("serializing to a Vec cannot fail");
    // Pad by splicing `,"pad":"xxx"` before the closing brace.
    const PAD_OVERHEAD: usize = r#","pad":"""#.len();
    if payload.len() + PAD_OVERHEAD < size {
        payload.pop();
        payload.extend_from_slice(br#","pad":""#);
        payload.resize(size - 2, b'x');
        payload.extend_from_slice(br#""}"#);
    }
    Outgoing {
        payload,
        order_id,
        user_id,
        trace_id,
    }
}

#[derive(Deserialize)]
struct Incoming {
    version: String,
    bench: Envelope,
}

/// Reads the envelope of a received event; `None` if it is not one of ours.
pub fn decode(payload: &[u8]) -> Option<Envelope> {
    let incoming: Incoming = serde_json::from_slice(payload).ok()?;
    (incoming.version == VERSION).then_some(incoming.bench)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            run: 0xabc,
            producer: 1,
            seq: 42,
            key: 7,
            intended_ns: 1_000,
            sent_ns: 1_500,
        }
    }

    #[test]
    fn encodes_the_versioned_event_padded_to_size() {
        for size in [300, 512, 4096] {
            let out = encode(&envelope(), size);
            assert_eq!(out.payload.len(), size, "size {size}");
            let json: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
            assert_eq!(json["version"], "v1");
            assert_eq!(json["order_id"], "ord-abc-1-42");
            assert_eq!(json["user_id"], "user-7");
            assert_eq!(json["trace_id"].as_str().unwrap().len(), 32);
            assert!(json["total"].as_f64().unwrap() > 0.0);
            assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
            assert_eq!(decode(&out.payload), Some(envelope()));
        }
    }

    #[test]
    fn small_sizes_are_not_truncated() {
        let out = encode(&envelope(), 100);
        assert!(
            out.payload.len() > 100 && out.payload.len() < 300,
            "{}",
            out.payload.len()
        );
        assert_eq!(decode(&out.payload), Some(envelope()));
    }

    #[test]
    fn foreign_payloads_are_not_ours() {
        assert_eq!(decode(b"hello"), None);
        assert_eq!(decode(br#"{"version":"v2","bench":{}}"#), None);
    }
}
