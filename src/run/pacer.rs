//! Open-loop pacing: every message has an intended send time.
//!
//! Message `i` of the run (over all producers) is due at `start + i / rate`;
//! producer `p` of `P` sends messages `p, p + P, p + 2P, ...`. Latency counts
//! from the intended time, so a stalled broker shows in the percentiles
//! instead of hiding behind a send loop that slowed down with it (coordinated
//! omission). The tokio timer has millisecond resolution: a producer woken
//! late sends every message already due at once, each stamped with its own
//! intended time, so the rate holds over any window longer than a tick.

use std::time::{Duration, Instant};

/// The schedule of one producer.
#[derive(Clone, Debug)]
pub struct Pacer {
    start: Instant,
    /// Nanoseconds between consecutive messages of the whole run.
    interval_ns: f64,
    producer: u64,
    producers: u64,
}

impl Pacer {
    /// Producer `producer` of `producers` at `rate` messages/s in total.
    /// `rate` must be positive; rate 0 (closed loop) has no pacer.
    pub fn new(start: Instant, rate: f64, producer: u32, producers: u32) -> Self {
        assert!(rate > 0.0 && producer < producers);
        Pacer {
            start,
            interval_ns: 1e9 / rate,
            producer: producer.into(),
            producers: producers.into(),
        }
    }

    /// Offset from the start at which this producer's `k`-th message is due.
    pub fn offset(&self, k: u64) -> Duration {
        let index = self.producer + k * self.producers;
        Duration::from_nanos((index as f64 * self.interval_ns).round() as u64)
    }

    /// Instant at which this producer's `k`-th message is due.
    pub fn intended(&self, k: u64) -> Instant {
        self.start + self.offset(k)
    }

    /// How many messages this producer sends in `window` from the start.
    pub fn count_within(&self, window: Duration) -> u64 {
        let total = (window.as_nanos() as f64 / self.interval_ns).ceil() as u64;
        // Indices p, p + P, ... below `total`.
        total.saturating_sub(self.producer).div_ceil(self.producers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_interleave_on_one_schedule() {
        let start = Instant::now();
        let p0 = Pacer::new(start, 500.0, 0, 2);
        let p1 = Pacer::new(start, 500.0, 1, 2);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        assert_eq!([0, 1, 2].map(|k| ms(p0.offset(k))), [0.0, 4.0, 8.0]);
        assert_eq!([0, 1, 2].map(|k| ms(p1.offset(k))), [2.0, 6.0, 10.0]);
        assert_eq!(p1.intended(1), start + Duration::from_millis(6));
    }

    #[test]
    fn counts_add_up_to_rate_times_duration() {
        let start = Instant::now();
        for (rate, producers, secs) in [(500.0, 2, 20), (50_000.0, 3, 10), (7.0, 4, 3), (1.0, 2, 1)]
        {
            let total: u64 = (0..producers)
                .map(|p| {
                    Pacer::new(start, rate, p, producers).count_within(Duration::from_secs(secs))
                })
                .sum();
            assert_eq!(
                total,
                (rate * secs as f64) as u64,
                "rate {rate}, {producers} producers, {secs}s"
            );
        }
    }

    #[test]
    fn no_message_is_due_at_or_after_the_window() {
        let pacer = Pacer::new(Instant::now(), 300.0, 2, 3);
        let window = Duration::from_secs(2);
        let n = pacer.count_within(window);
        assert!(pacer.offset(n - 1) < window);
        assert!(pacer.offset(n) >= window);
    }

    #[test]
    fn long_runs_do_not_drift() {
        // 50k msg/s for an hour: the last message is due at the hour, to the microsecond.
        let pacer = Pacer::new(Instant::now(), 50_000.0, 0, 1);
        let last = pacer.offset(50_000 * 3600);
        assert!(
            last.abs_diff(Duration::from_secs(3600)) < Duration::from_micros(1),
            "{last:?}"
        );
    }
}
