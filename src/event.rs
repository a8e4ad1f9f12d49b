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
//!
//! Benchmarks compare brokers at 100 bytes and below, where the JSON event
//! (about 264 bytes at least) does not fit: [`Encoding::Binary`] carries the
//! same envelope and the trace id in [`BINARY_BYTES`] bytes, padded with
//! zeros to the message size, for the same ledger and latency accounting.
//! The order id (from which the envelope is read back), user id and trace
//! id travel in the message's properties or headers as well, unless the
//! scenario turns headers off.
//!
//! Encoding builds no `String` per message: ids are written straight into
//! the payload, and drivers write them into headers only when asked.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use arrayvec::ArrayString;

use serde::{Deserialize, Serialize};

/// Which event the producers publish: the versioned `OrderCreated`, its
/// compatible evolution, or a negative control that typed decoders must
/// refuse (docs/cross-language.md, schema evolution).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventVersion {
    /// `events.order.created.v1`.
    #[default]
    #[serde(rename = "v1")]
    V1,
    /// v1 plus one field (`currency`): a compatible addition.
    #[serde(rename = "v2")]
    V2,
    /// Says v2, but `total` is text and `user_id` is gone: the two
    /// incompatible changes that break consumers decoding into bare maps.
    #[serde(rename = "v2-broken")]
    V2Broken,
}

impl EventVersion {
    /// The version the event says it is.
    fn label(self) -> &'static str {
        match self {
            EventVersion::V1 => "v1",
            EventVersion::V2 | EventVersion::V2Broken => "v2",
        }
    }

    /// Whether a consumer's typed decoder must take it.
    pub fn decodable(self) -> bool {
        self != EventVersion::V2Broken
    }
}

/// The versions a consumer takes: v2 only adds a field.
const KNOWN_VERSIONS: [&str; 2] = ["v1", "v2"];

/// How a message's payload is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The versioned `OrderCreated` JSON event (at least about 264 bytes).
    #[default]
    Json,
    /// The envelope alone in a fixed little-endian layout of
    /// [`BINARY_BYTES`] bytes, for small messages.
    Binary,
}

/// The first byte of a binary payload; a JSON event starts with `{`.
const BINARY_MAGIC: u8 = 0xBB;

/// The binary layout's version, after the magic byte (2 added the trace id).
const BINARY_VERSION: u8 = 2;

/// Bytes of a binary payload before padding: magic, version, run (8),
/// producer (4), seq (8), key (8), intended and sent times (8 each), trace
/// id (16).
pub const BINARY_BYTES: usize = 2 + 8 + 4 + 8 + 8 + 8 + 8 + 16;

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
    /// The business id consumers are idempotent on: `ord-<run>-<producer>-<seq>`.
    pub fn order_id(&self) -> OrderId {
        OrderId(*self)
    }

    /// The partition and ordering key: `user-<key>`.
    pub fn user_id(&self) -> UserId {
        UserId(self.key)
    }
}

/// An order id, written when shown: no `String` per message.
#[derive(Clone, Copy, Debug)]
pub struct OrderId(Envelope);

/// The longest order id: `ord-`, 16 hex digits, `-`, a `u32`, `-`, a `u64`.
const ORDER_ID_MAX: usize = 4 + 16 + 1 + 10 + 1 + 20;

impl OrderId {
    /// `ord-<run in hex>-<producer>-<seq>`, on the stack.
    pub fn text(&self) -> ArrayString<ORDER_ID_MAX> {
        let mut run = [0; 16];
        hex::encode_to_slice(self.0.run.to_be_bytes(), &mut run).expect("16 digits for 8 bytes");
        let first = run.iter().position(|&digit| digit != b'0').unwrap_or(15);
        let mut text = ArrayString::new();
        text.push_str("ord-");
        text.push_str(std::str::from_utf8(&run[first..]).expect("hex digits"));
        text.push('-');
        text.push_str(itoa::Buffer::new().format(self.0.producer));
        text.push('-');
        text.push_str(itoa::Buffer::new().format(self.0.seq));
        text
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// A user id, written when shown.
#[derive(Clone, Copy, Debug)]
pub struct UserId(u64);

impl UserId {
    /// `user-<key>`, on the stack.
    pub fn text(&self) -> ArrayString<25> {
        let mut text = ArrayString::new();
        text.push_str("user-");
        text.push_str(itoa::Buffer::new().format(self.0));
        text
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// A W3C trace id, 32 hex digits, written when shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId(pub u128);

impl TraceId {
    /// The 32 lowercase hex digits, on the stack.
    pub fn text(&self) -> ArrayString<32> {
        let mut digits = [0; 32];
        hex::encode_to_slice(self.0.to_be_bytes(), &mut digits).expect("32 digits for 16 bytes");
        ArrayString::from_byte_string(&digits).expect("hex digits")
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// An RFC 3339 timestamp in milliseconds, `2026-11-22T10:00:00.123Z`.
type Timestamp = ArrayString<32>;

thread_local! {
    /// The last timestamp this thread wrote, and its millisecond: at
    /// thousands of messages a second most share it, and formatting a date
    /// costs more than the rest of the event.
    static LAST_TIMESTAMP: Cell<(u128, Timestamp)> =
        const { Cell::new((u128::MAX, Timestamp::new_const())) };
}

/// The wall clock now, as the event's timestamp.
fn timestamp() -> Timestamp {
    let now = SystemTime::now();
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    LAST_TIMESTAMP.with(|last| {
        let (at, text) = last.get();
        if at == millis {
            return text;
        }
        let mut text = Timestamp::new();
        write!(text, "{}", humantime::format_rfc3339_millis(now))
            .expect("an RFC 3339 timestamp fits in 32 bytes");
        last.set((millis, text));
        text
    })
}

#[derive(Serialize)]
struct OrderCreated<'a> {
    version: &'static str,
    order_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    total: Total,
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<&'a str>,
    timestamp: &'a str,
    trace_id: &'a str,
    bench: &'a Envelope,
}

impl<'a> OrderCreated<'a> {
    /// The event of `envelope` in `version`, with its `total` and its
    /// `(order_id, user_id, timestamp, trace_id)`: v2 adds the currency; the
    /// negative control also drops the user id and writes the total as text.
    fn of(
        version: EventVersion,
        envelope: &'a Envelope,
        total: f64,
        (order_id, user_id, timestamp, trace_id): (&'a str, &'a str, &'a str, &'a str),
    ) -> Self {
        let broken = version == EventVersion::V2Broken;
        OrderCreated {
            version: version.label(),
            order_id,
            user_id: (!broken).then_some(user_id),
            total: match broken {
                true => Total::Text(total),
                false => Total::Number(total),
            },
            currency: (version != EventVersion::V1).then_some("EUR"),
            timestamp,
            trace_id,
            bench: envelope,
        }
    }
}

/// The order's total: a JSON number, or (the negative control) the same
/// number as text.
#[derive(Clone, Copy, Serialize)]
#[serde(untagged)]
enum Total {
    Number(f64),
    #[serde(serialize_with = "number_as_text")]
    Text(f64),
}

fn number_as_text<S: serde::Serializer>(n: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&serde_json::to_string(n).expect("a finite number"))
}

/// One encoded message, with what drivers put in headers or keys.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The encoded message, padded to the message size.
    pub payload: Vec<u8>,
    /// Whose ids it carries.
    pub envelope: Envelope,
    /// Its trace id, also in the payload.
    pub trace_id: TraceId,
}

impl Outgoing {
    /// Business id (AMQP message-id, `Nats-Msg-Id`).
    pub fn order_id(&self) -> OrderId {
        self.envelope.order_id()
    }

    /// Partition / ordering key.
    pub fn user_id(&self) -> UserId {
        self.envelope.user_id()
    }
}

/// Encodes `envelope` in `encoding`, padded to `size` bytes, or of its
/// natural size if `size` is smaller: the event is never cut. Every message
/// carries a fresh trace id in its payload.
/// Its type, `events.order.created.v1`, travels as the subject / routing key /
/// topic and (AMQP) the `type` property.
pub fn encode(
    envelope: &Envelope,
    size: usize,
    encoding: Encoding,
    version: EventVersion,
) -> Outgoing {
    let trace_id = TraceId(rand::random::<u128>());
    let payload = match encoding {
        Encoding::Binary => encode_binary(envelope, trace_id, size),
        Encoding::Json => encode_json(envelope, trace_id, size, version),
    };
    Outgoing {
        payload,
        envelope: *envelope,
        trace_id,
    }
}

/// The JSON event of `envelope` in `version`, padded to `size` bytes.
fn encode_json(
    envelope: &Envelope,
    trace_id: TraceId,
    size: usize,
    version: EventVersion,
) -> Vec<u8> {
    // A plausible amount that differs per order, in cents precision.
    let total = ((envelope.seq * 7919 + envelope.key * 104_729) % 100_000) as f64 / 100.0 + 1.0;
    let ids = (envelope.order_id().text(), envelope.user_id().text());
    let texts = (&*ids.0, &*ids.1, &*timestamp(), &*trace_id.text());
    let event = OrderCreated::of(version, envelope, total, texts);
    let mut payload = Vec::with_capacity(size.max(JSON_CAPACITY));
    write_event(&mut payload, &event);
    // Pad by splicing `,"pad":"xxx"` before the closing brace.
    const PAD_OVERHEAD: usize = r#","pad":"""#.len();
    if payload.len() + PAD_OVERHEAD < size {
        payload.pop();
        payload.extend_from_slice(br#","pad":""#);
        payload.resize(size - 2, b'x');
        payload.extend_from_slice(br#""}"#);
    }
    payload
}

/// What comes before each of the envelope's numbers in the JSON event, in
/// the order [`envelope_fields`] gives them: written by [`write_event`],
/// read by [`decode_written`].
const ENVELOPE_KEYS: [&[u8]; 6] = [
    br#","bench":{"run":"#,
    br#","producer":"#,
    br#","seq":"#,
    br#","key":"#,
    br#","intended_ns":"#,
    br#","sent_ns":"#,
];

/// The envelope's numbers, in the order of [`ENVELOPE_KEYS`] (and of its
/// fields, as serde writes them).
fn envelope_fields(envelope: &Envelope) -> [u64; 6] {
    [
        envelope.run,
        u64::from(envelope.producer),
        envelope.seq,
        envelope.key,
        envelope.intended_ns,
        envelope.sent_ns,
    ]
}

/// Room for the longest JSON event before padding, so that writing it
/// never grows the buffer.
const JSON_CAPACITY: usize = 416;

/// Writes `event` exactly as `serde_json::to_writer` does (a test holds the
/// two equal), for a fraction of its work: serde_json checks every byte of
/// every key and string for escapes, and the event's keys are constants and
/// its strings are ids, digits and a timestamp that never need one.
fn write_event(out: &mut Vec<u8>, event: &OrderCreated) {
    let mut number = itoa::Buffer::new();
    let string = |out: &mut Vec<u8>, key: &[u8], text: &str| {
        debug_assert!(
            text.bytes().all(|b| b >= b' ' && b != b'"' && b != b'\\'),
            "{text:?} needs escaping"
        );
        out.extend_from_slice(key);
        out.extend_from_slice(text.as_bytes());
    };
    string(out, br#"{"version":""#, event.version);
    string(out, br#"","order_id":""#, event.order_id);
    if let Some(user_id) = event.user_id {
        string(out, br#"","user_id":""#, user_id);
    }
    out.extend_from_slice(br#"","total":"#);
    let total = |out: &mut Vec<u8>, n: f64| {
        serde_json::to_writer(out, &n).expect("writing to a Vec cannot fail")
    };
    match event.total {
        Total::Number(n) => total(out, n),
        Total::Text(n) => {
            out.push(b'"');
            total(out, n);
            out.push(b'"');
        }
    }
    if let Some(currency) = event.currency {
        string(out, br#","currency":""#, currency);
        out.push(b'"');
    }
    string(out, br#","timestamp":""#, event.timestamp);
    string(out, br#"","trace_id":""#, event.trace_id);
    out.push(b'"');
    for (key, value) in ENVELOPE_KEYS.into_iter().zip(envelope_fields(event.bench)) {
        out.extend_from_slice(key);
        out.extend_from_slice(number.format(value).as_bytes());
    }
    out.extend_from_slice(b"}}");
}

/// The binary layout of `envelope` and its trace id, padded with zeros to
/// `size` bytes.
fn encode_binary(envelope: &Envelope, trace_id: TraceId, size: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(size.max(BINARY_BYTES));
    payload.extend_from_slice(&[BINARY_MAGIC, BINARY_VERSION]);
    payload.extend_from_slice(&envelope.run.to_le_bytes());
    payload.extend_from_slice(&envelope.producer.to_le_bytes());
    for field in [
        envelope.seq,
        envelope.key,
        envelope.intended_ns,
        envelope.sent_ns,
    ] {
        payload.extend_from_slice(&field.to_le_bytes());
    }
    payload.extend_from_slice(&trace_id.0.to_le_bytes());
    payload.resize(size.max(BINARY_BYTES), 0);
    payload
}

/// Reads a binary payload's envelope.
fn decode_binary(payload: &[u8]) -> Option<Envelope> {
    if payload.len() < BINARY_BYTES {
        return None;
    }
    let (head, rest) = payload.split_first_chunk::<2>()?;
    if *head != [BINARY_MAGIC, BINARY_VERSION] {
        return None;
    }
    let (run, rest) = rest.split_first_chunk::<8>()?;
    let (producer, mut rest) = rest.split_first_chunk::<4>()?;
    let mut next = || -> Option<u64> {
        let (field, tail) = rest.split_first_chunk::<8>()?;
        rest = tail;
        Some(u64::from_le_bytes(*field))
    };
    Some(Envelope {
        run: u64::from_le_bytes(*run),
        producer: u32::from_le_bytes(*producer),
        seq: next()?,
        key: next()?,
        intended_ns: next()?,
        sent_ns: next()?,
    })
}

/// What a consumer makes of a received payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// One of ours: the typed decoder took it.
    Event(Envelope),
    /// Its envelope is ours, but the typed decoder refuses the event: a
    /// version it does not know, a required field missing, a wrong type.
    Refused(Envelope),
    /// Not one of ours, as far as can be read.
    Foreign,
}

impl Read {
    /// The envelope, whether or not the event decoded.
    pub fn envelope(self) -> Option<Envelope> {
        match self {
            Read::Event(e) | Read::Refused(e) => Some(e),
            Read::Foreign => None,
        }
    }
}

/// The event as a consumer's typed decoder reads it: every business field
/// required and of its type, unknown fields ignored.
#[derive(Deserialize)]
#[allow(dead_code)] // read to be checked, as a service would use them
struct Incoming {
    version: String,
    order_id: String,
    user_id: String,
    total: f64,
    /// v2's addition: absent in v1, text when present.
    currency: Option<String>,
    timestamp: String,
    trace_id: String,
    bench: Envelope,
}

/// The envelope alone, read from an event that is otherwise refused.
#[derive(Deserialize)]
struct EnvelopeOnly {
    bench: Envelope,
}

/// Reads a received message in either encoding, as brokerbench's own
/// consumer decodes it.
pub fn read(payload: &[u8]) -> Read {
    if payload.first() == Some(&BINARY_MAGIC) {
        return decode_binary(payload).map_or(Read::Foreign, Read::Event);
    }
    if let Some(envelope) = decode_written(payload) {
        return Read::Event(envelope);
    }
    match serde_json::from_slice::<Incoming>(payload) {
        Ok(event) if KNOWN_VERSIONS.contains(&event.version.as_str()) => Read::Event(event.bench),
        _ => match serde_json::from_slice::<EnvelopeOnly>(payload) {
            Ok(only) => Read::Refused(only.bench),
            Err(_) => Read::Foreign,
        },
    }
}

/// The envelope of a received message that decodes; `None` if it does not
/// or is not one of ours.
pub fn decode(payload: &[u8]) -> Option<Envelope> {
    match read(payload) {
        Read::Event(envelope) => Some(envelope),
        _ => None,
    }
}

/// Reads an event laid out as [`write_event`] writes a decodable one, and
/// checks it as the typed decoder would, without the cost of a parser: its
/// keys and their order are fixed, and its strings are ids, digits and a
/// timestamp that need no escape. Each business field must be there with
/// its type (`currency` may be); the envelope's numbers are read; what
/// follows it (the padding) is not. Anything laid out otherwise is read
/// whole, by serde.
fn decode_written(payload: &[u8]) -> Option<Envelope> {
    let mut rest = payload.strip_prefix(br#"{"version":""#)?;
    let version = KNOWN_VERSIONS
        .iter()
        .find(|v| rest.starts_with(v.as_bytes()) && rest.get(v.len()) == Some(&b'"'))?;
    rest = &rest[version.len()..];
    for key in [&br#"","order_id":""#[..], br#"","user_id":""#] {
        rest = text(rest.strip_prefix(key)?)?;
    }
    rest = rest.strip_prefix(br#"","total":"#)?;
    let digits = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
        .count();
    let number = &rest[..digits];
    if !(number.first()?.is_ascii_digit() && number.last()?.is_ascii_digit()) {
        return None;
    }
    rest = &rest[digits..];
    if let Some(currency) = rest.strip_prefix(br#","currency":""#) {
        rest = &text(currency)?[1..];
    }
    rest = text(rest.strip_prefix(br#","timestamp":""#)?)?;
    rest = text(rest.strip_prefix(br#"","trace_id":""#)?)?;
    rest = rest.strip_prefix(b"\"")?;
    let mut fields = [0; 6];
    for (key, field) in ENVELOPE_KEYS.into_iter().zip(&mut fields) {
        let number = rest.strip_prefix(key)?;
        let digits = number.iter().take_while(|b| b.is_ascii_digit()).count();
        *field = std::str::from_utf8(&number[..digits]).ok()?.parse().ok()?;
        rest = &number[digits..];
    }
    // The envelope's end, then the event's, after the padding if any: a
    // payload cut short is not read as whole.
    let whole = rest == b"}}" || (rest.starts_with(br#"},"pad":""#) && rest.ends_with(br#""}"#));
    if !whole {
        return None;
    }
    let [run, producer, seq, key, intended_ns, sent_ns] = fields;
    Some(Envelope {
        run,
        producer: u32::try_from(producer).ok()?,
        seq,
        key,
        intended_ns,
        sent_ns,
    })
}

/// A string's text, up to its closing quote (which starts what is
/// returned); `None` if it holds an escape or control character (such a
/// string is read whole) or never ends.
fn text(string: &[u8]) -> Option<&[u8]> {
    let end = memchr::memchr(b'"', string)?;
    let plain = string[..end].iter().all(|&b| b >= b' ' && b != b'\\');
    plain.then(|| &string[end..])
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
            let out = encode(&envelope(), size, Encoding::Json, EventVersion::V1);
            assert_eq!(out.payload.len(), size, "size {size}");
            let json: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
            assert_eq!(json["version"], "v1");
            assert_eq!(json["order_id"], "ord-abc-1-42");
            assert_eq!(json["user_id"], "user-7");
            assert_eq!(json["trace_id"], out.trace_id.to_string());
            assert_eq!(json["trace_id"].as_str().unwrap().len(), 32);
            assert!(json["total"].as_f64().unwrap() > 0.0);
            assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
            assert_eq!(decode(&out.payload), Some(envelope()));
        }
    }

    #[test]
    fn ids_are_written_as_their_formats_say() {
        for (run, producer, seq) in [(0, 0, 0), (0xabc, 1, 42), (u64::MAX, u32::MAX, u64::MAX)] {
            let envelope = Envelope {
                run,
                producer,
                seq,
                key: seq,
                ..envelope()
            };
            assert_eq!(
                envelope.order_id().to_string(),
                format!("ord-{run:x}-{producer}-{seq}")
            );
            assert_eq!(envelope.user_id().to_string(), format!("user-{seq}"));
        }
        for trace in [0, 1, 0xabc << 64, u128::MAX] {
            assert_eq!(TraceId(trace).to_string(), format!("{trace:032x}"));
        }
    }

    #[test]
    fn the_timestamp_is_the_wall_clock_to_the_millisecond() {
        let millis = |at: SystemTime| at.duration_since(UNIX_EPOCH).unwrap().as_millis();
        for _ in 0..3 {
            let before = millis(SystemTime::now());
            let written = timestamp();
            let after = millis(SystemTime::now());
            let read = millis(humantime::parse_rfc3339(&written).unwrap());
            assert!(before <= read && read <= after, "{written}");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn the_event_is_written_as_serde_json_writes_it() {
        let far = Envelope {
            run: u64::MAX,
            producer: u32::MAX,
            seq: u64::MAX,
            key: u64::MAX,
            intended_ns: u64::MAX,
            sent_ns: 0,
        };
        let versions = [EventVersion::V1, EventVersion::V2, EventVersion::V2Broken];
        let cases = [(envelope(), 1.0), (far, 1000.99), (envelope(), 12.5)];
        for ((envelope, total), version) in cases.into_iter().zip(versions.into_iter().cycle()) {
            let ids = (envelope.order_id().text(), envelope.user_id().text());
            let texts = (&*ids.0, &*ids.1, &*timestamp(), &*TraceId(u128::MAX).text());
            let event = OrderCreated::of(version, &envelope, total, texts);
            let mut written = Vec::new();
            write_event(&mut written, &event);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&event).unwrap()
            );
            assert!(serde_json::to_vec(&event).unwrap().len() <= JSON_CAPACITY);
        }
    }

    #[test]
    fn each_version_is_taken_or_refused_as_its_contract_says() {
        for version in [EventVersion::V1, EventVersion::V2, EventVersion::V2Broken] {
            for size in [0, 400] {
                let out = encode(&envelope(), size, Encoding::Json, version);
                let json: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
                assert_eq!(json["version"], version.label());
                assert_eq!(json.get("currency").is_some(), version != EventVersion::V1);
                let read = read(&out.payload);
                assert_eq!(read.envelope(), Some(envelope()), "{version:?}");
                match version.decodable() {
                    true => assert_eq!(read, Read::Event(envelope())),
                    false => assert_eq!(read, Read::Refused(envelope())),
                }
            }
        }
        // Decodable versions take the written fast path; the control cannot.
        for version in [EventVersion::V1, EventVersion::V2] {
            let out = encode(&envelope(), 300, Encoding::Json, version);
            assert_eq!(
                decode_written(&out.payload),
                Some(envelope()),
                "{version:?}"
            );
        }
    }

    /// agents/event-vectors.json: what every consumer's typed decoder, in
    /// every language, makes of each event.
    #[test]
    fn the_shared_event_vectors_are_read_as_they_say() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/agents/event-vectors.json");
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let vectors = file["vectors"].as_array().unwrap();
        assert!(vectors.len() >= 10);
        let number = |v: &serde_json::Value| match v {
            serde_json::Value::String(text) => text.parse::<u64>().unwrap(),
            other => other.as_u64().unwrap(),
        };
        for v in vectors {
            let name = v["name"].as_str().unwrap();
            let read = read(v["payload"].as_str().unwrap().as_bytes());
            let decodes = v["decodes"].as_bool().unwrap();
            assert_eq!(matches!(read, Read::Event(_)), decodes, "{name}: {read:?}");
            let bench = &v["bench"];
            let expected = (!bench.is_null()).then(|| Envelope {
                run: number(&bench["run"]),
                producer: number(&bench["producer"]) as u32,
                seq: number(&bench["seq"]),
                key: number(&bench["key"]),
                intended_ns: number(&bench["intended_ns"]),
                sent_ns: number(&bench["sent_ns"]),
            });
            assert_eq!(read.envelope(), expected, "{name}");
        }
    }

    #[test]
    fn events_laid_out_otherwise_are_read_whole() {
        let out = encode(&envelope(), 300, Encoding::Json, EventVersion::V1);
        assert_eq!(decode_written(&out.payload), Some(envelope()), "ours");
        let mut event: serde_json::Value = serde_json::from_slice(&out.payload).unwrap();
        let pretty = serde_json::to_vec_pretty(&event).unwrap();
        assert_eq!(decode_written(&pretty), None);
        assert_eq!(decode(&pretty), Some(envelope()));
        event["version"] = "v3".into();
        let v3 = serde_json::to_vec(&event).unwrap();
        assert_eq!(read(&v3), Read::Refused(envelope()));
        // Our layout of another version, a payload cut anywhere after the
        // envelope's first number, or a producer beyond u32: not read.
        let plain = encode(&envelope(), 0, Encoding::Json, EventVersion::V1).payload;
        let text = String::from_utf8(plain.clone()).unwrap();
        let v3 = text.replace(r#""version":"v1""#, r#""version":"v3""#);
        assert_ne!(v3, text);
        assert_eq!(decode(v3.as_bytes()), None);
        // An escape in a string: read whole, and taken.
        let escaped = text.replace(r#""user_id":"user-7""#, r#""user_id":"user\u002d7""#);
        assert_ne!(escaped, text);
        assert_eq!(decode_written(escaped.as_bytes()), None);
        assert_eq!(decode(escaped.as_bytes()), Some(envelope()));
        let padded = &out.payload;
        for payload in [&plain, padded] {
            let run = memchr::memmem::find(payload, br#""run":"#).unwrap();
            for cut in run + 7..payload.len() {
                assert_eq!(decode(&payload[..cut]), None, "cut at {cut}");
            }
        }
        let wide = text.replace(r#""producer":1,"#, r#""producer":4294967296,"#);
        assert_ne!(wide, text);
        assert_eq!(decode(wide.as_bytes()), None);
    }

    #[test]
    fn small_sizes_are_not_truncated() {
        let out = encode(&envelope(), 100, Encoding::Json, EventVersion::V1);
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
        let binary = encode(&envelope(), 64, Encoding::Binary, EventVersion::V1).payload;
        assert_eq!(decode(&binary[..BINARY_BYTES - 1]), None, "cut short");
        let mut other_version = binary.clone();
        other_version[1] = 1;
        assert_eq!(decode(&other_version), None);
    }

    #[test]
    fn binary_carries_the_envelope_in_small_messages() {
        let far = Envelope {
            run: u64::MAX - 1,
            producer: u32::MAX,
            seq: 1 << 40,
            key: 999,
            intended_ns: u64::MAX,
            sent_ns: 3,
        };
        for (size, len) in [(64, 64), (100, 100), (1024, 1024), (16, BINARY_BYTES)] {
            for e in [envelope(), far] {
                let out = encode(&e, size, Encoding::Binary, EventVersion::V1);
                assert_eq!(out.payload.len(), len, "size {size}");
                assert_eq!(decode(&out.payload), Some(e));
                // The ids still travel beside the payload, the trace id in it.
                assert_eq!(out.envelope, e);
                assert_eq!(out.user_id().to_string(), format!("user-{}", e.key));
                let trace = &out.payload[BINARY_BYTES - 16..BINARY_BYTES];
                assert_eq!(
                    u128::from_le_bytes(trace.try_into().unwrap()),
                    out.trace_id.0
                );
            }
        }
    }
}
