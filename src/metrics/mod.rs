//! Latency histograms: HdrHistogram in microseconds.
//!
//! Each task records into its own [`Latency`] and the run merges them at the
//! end, so recording never takes a lock. Summaries carry the percentiles a
//! report needs and the whole histogram in HdrHistogram's own V2 serialized
//! form (base64), so anyone can re-analyse or merge runs with any HdrHistogram
//! library.

pub(crate) mod harness;
pub(crate) mod live;

use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency histogram, microseconds, 3 significant digits, from 1 µs up to
/// one hour (values above are recorded as one hour).
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
        }
    }
}

impl Latency {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.histogram.saturating_record(us);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds merge");
    }

    /// Percentiles and the serialized histogram.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            hdr: base64::engine::general_purpose::STANDARD.encode(self.v2()),
            ..self.percentiles()
        }
    }

    /// The histogram in HdrHistogram's V2 form.
    fn v2(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(&self.histogram, &mut bytes)
            .expect("serializing to a Vec cannot fail");
        bytes
    }

    /// The histogram in HdrHistogram's compressed V2 form, base64, as
    /// interval logs carry it; empty for an empty histogram.
    pub fn compressed(&self) -> String {
        if self.histogram.is_empty() {
            return String::new();
        }
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(&self.histogram, &mut bytes)
            .expect("serializing to a Vec cannot fail");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Percentiles only (`hdr` left empty).
    pub fn percentiles(&self) -> LatencySummary {
        let h = &self.histogram;
        let q = |quantile| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(quantile)
            }
        };
        LatencySummary {
            count: h.len(),
            mean: if h.is_empty() {
                0.0
            } else {
                (h.mean() * 10.0).round() / 10.0
            },
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: if h.is_empty() { 0 } else { h.max() },
            hdr: String::new(),
        }
    }
}

/// One task's latency histograms second by second, by the time each value
/// was recorded (counted from the start of the load), as HdrHistogram's
/// interval logs keep them. Only the current second is a full histogram;
/// finished seconds are kept serialized (V2), which is small.
#[derive(Clone, Debug, Default)]
pub struct LatencyIntervals {
    current: Option<(usize, Latency)>,
    done: Vec<(usize, Vec<u8>)>,
}

impl LatencyIntervals {
    /// Records `latency`, completed `at` from the start of the load.
    pub fn record(&mut self, at: Duration, latency: Duration) {
        let second = at.as_secs() as usize;
        if self.current.as_ref().is_some_and(|(s, _)| *s != second) {
            self.finish();
        }
        self.current
            .get_or_insert_with(|| (second, Latency::default()))
            .1
            .record(latency);
    }

    /// Serializes the current second.
    fn finish(&mut self) {
        if let Some((second, latency)) = self.current.take() {
            self.done.push((second, latency.v2()));
        }
    }

    /// Every task's intervals merged, second by second: `each` is called
    /// with every second from 0 to `seconds` (an empty histogram where
    /// nothing was recorded). One second is held at a time.
    pub fn merge<'a>(
        all: impl IntoIterator<Item = &'a LatencyIntervals>,
        seconds: usize,
        mut each: impl FnMut(&Latency),
    ) {
        // Finished seconds as they are; each task's current one serialized.
        let mut parts: Vec<(usize, std::borrow::Cow<'a, [u8]>)> = Vec::new();
        for intervals in all {
            let done = intervals.done.iter();
            parts.extend(done.map(|(s, bytes)| (*s, bytes.as_slice().into())));
            if let Some((s, latency)) = &intervals.current {
                parts.push((*s, latency.v2().into()));
            }
        }
        parts.sort_by_key(|(second, _)| *second);
        let mut parts = parts.into_iter().peekable();
        let mut latency = Latency::default();
        for second in 0..seconds {
            latency.histogram.reset();
            while let Some((_, bytes)) = parts.next_if(|(s, _)| *s == second) {
                let h: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut &bytes[..])
                    .expect("histograms serialized here read back");
                latency.histogram.add(&h).expect("same bounds");
            }
            each(&latency);
        }
    }
}

/// A histogram that [`Latency::compressed`] or [`Latency::summary`] wrote
/// (base64 of HdrHistogram's V2 form, compressed or not); none for an empty
/// string (a second without values) or one that does not decode.
pub fn decode_histogram(encoded: &str) -> Option<Histogram<u64>> {
    if encoded.is_empty() {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    if !counts_read_safely(&bytes)? {
        return None;
    }
    let histogram: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .ok()?;
    // Counts whose sum overflows are no histogram of ours (a results file
    // from elsewhere, found by fuzzing): every quantile would add them up.
    histogram
        .iter_recorded()
        .try_fold(0u64, |sum, v| sum.checked_add(v.count_at_value()))?;
    Some(histogram)
}

/// Whether hdrhistogram can read the encoded histogram `bytes` (V2, or V2
/// deflated) without a panic; `None` when its form is not one of ours (a
/// deflated one over 16 MiB included). hdrhistogram 7.6's deserializer
/// negates a run of zeros read from the file, and one of 2^63 overflows:
/// a panic where overflow is checked (found by fuzzing). The counts are
/// read here the way it reads them (zig-zag LEB128, the ninth byte whole),
/// and that run refused.
fn counts_read_safely(bytes: &[u8]) -> Option<bool> {
    use std::io::Read;
    const V2: u32 = 0x1c84_9313;
    const V2_DEFLATED: u32 = 0x1c84_9314;
    const LARGEST: u64 = 16 << 20;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let inflated;
    let v2 = match word(bytes, 0)? {
        V2 => bytes,
        V2_DEFLATED => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(bytes.get(8..)?)
                .take(LARGEST + 1)
                .read_to_end(&mut out)
                .ok()?;
            if out.len() as u64 > LARGEST {
                return None;
            }
            inflated = out;
            &inflated
        }
        _ => return None,
    };
    // The cookie, the payload's length, the normalizing offset and the
    // digits (4 bytes each), then the lowest, the highest and the ratio (8).
    let length = usize::try_from(word(v2, 4)?).ok()?;
    let payload = v2.get(40..)?;
    let payload = &payload[..length.min(payload.len())];
    let mut at = 0;
    while at < payload.len() {
        let mut value = 0u64;
        for n in 0..9 {
            let Some(&byte) = payload.get(at) else {
                return Some(true); // cut short: the deserializer refuses it
            };
            at += 1;
            if n == 8 {
                value |= u64::from(byte) << 56;
                break;
            }
            value |= u64::from(byte & 0x7f) << (7 * n);
            if byte & 0x80 == 0 {
                break;
            }
        }
        // Zig-zag: u64::MAX is -2^63.
        if value == u64::MAX {
            return Some(false);
        }
    }
    Some(true)
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Mean, µs.
    pub mean: f64,
    /// Median, µs.
    pub p50: u64,
    /// 90th percentile, µs.
    pub p90: u64,
    /// 99th percentile, µs.
    pub p99: u64,
    /// 99.9th percentile, µs.
    pub p999: u64,
    /// Maximum, µs.
    pub max: u64,
    /// The histogram in HdrHistogram V2 serialized form, base64.
    pub hdr: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_merge() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        for ms in 1..=50 {
            a.record(Duration::from_millis(ms));
        }
        for ms in 51..=100 {
            b.record(Duration::from_millis(ms));
        }
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 100);
        assert!(s.p50.abs_diff(50_000) <= 50, "{s:?}");
        assert!(s.p99.abs_diff(99_000) <= 100, "{s:?}");
        assert!(s.max.abs_diff(100_000) <= 100, "{s:?}");
    }

    #[test]
    fn the_serialized_histogram_reads_back() {
        let mut l = Latency::default();
        l.record(Duration::from_micros(250));
        l.record(Duration::from_secs(2));
        let s = l.summary();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&s.hdr)
            .unwrap();
        let back: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.max(), s.max);
    }

    #[test]
    fn both_written_forms_decode_with_every_count() {
        let mut l = Latency::default();
        for us in [0, 1, 250, 90_000, 2_000_000, 60_000_000] {
            for _ in 0..1000 {
                l.record(Duration::from_micros(us));
            }
        }
        for encoded in [l.summary().hdr, l.compressed()] {
            let back = decode_histogram(&encoded).expect("ours decodes");
            assert_eq!(back.len(), 6000);
            assert_eq!(back.max(), l.summary().max);
        }
    }

    #[test]
    fn empty_and_extreme_values() {
        let s = Latency::default().summary();
        assert_eq!((s.count, s.p99, s.max), (0, 0, 0));
        let mut l = Latency::default();
        l.record(Duration::ZERO);
        l.record(Duration::from_secs(10 * 3600));
        assert_eq!(l.summary().count, 2);
    }
}

/// Events counted in 10 ms buckets from the start of the load: enough to
/// tell when a fault's effect ended, and to chart a run per second.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    buckets: Vec<u32>,
}

impl Timeline {
    /// Bucket width.
    pub const BUCKET: Duration = Duration::from_millis(10);

    /// Counts one event `since` the start of the load.
    pub fn record(&mut self, since: Duration) {
        let i = (since.as_millis() / Self::BUCKET.as_millis()) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] = self.buckets[i].saturating_add(1);
    }

    /// Adds every event of `other`.
    pub fn merge(&mut self, other: &Timeline) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine = mine.saturating_add(*theirs);
        }
    }

    /// The start of the first bucket at or after `since` that has an event.
    pub fn first_at_or_after(&self, since: Duration) -> Option<Duration> {
        let from = (since.as_millis() / Self::BUCKET.as_millis()) as usize;
        let i = (from..self.buckets.len()).find(|&i| self.buckets[i] > 0)?;
        Some(Self::BUCKET * i as u32)
    }

    /// Whole seconds that hold events.
    pub fn seconds(&self) -> usize {
        let per = (1000 / Self::BUCKET.as_millis()) as usize;
        self.buckets.len().div_ceil(per)
    }

    /// Events per second, second by second, over `seconds` seconds.
    pub fn per_second(&self, seconds: usize) -> Vec<u64> {
        let per = (1000 / Self::BUCKET.as_millis()) as usize;
        (0..seconds)
            .map(|s| {
                self.buckets
                    .iter()
                    .skip(s * per)
                    .take(per)
                    .map(|&n| u64::from(n))
                    .sum()
            })
            .collect()
    }
}

#[cfg(test)]
mod timeline_tests {
    use super::*;

    #[test]
    fn events_land_in_their_second_and_the_gap_is_found() {
        let mut t = Timeline::default();
        for ms in [0, 5, 990, 1_000, 3_500] {
            t.record(Duration::from_millis(ms));
        }
        assert_eq!(t.per_second(5), [3, 1, 0, 1, 0]);
        assert_eq!(
            t.first_at_or_after(Duration::from_millis(1_010)),
            Some(Duration::from_millis(3_500))
        );
        assert_eq!(t.first_at_or_after(Duration::from_secs(4)), None);
        let mut u = Timeline::default();
        u.record(Duration::from_millis(2_000));
        u.merge(&t);
        assert_eq!(u.per_second(4), [3, 1, 1, 1]);
    }
}
