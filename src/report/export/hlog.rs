//! HdrHistogram interval logs (`.hlog`, format 1.2): per broker, one for
//! publish latency and one per group for end-to-end latency, a histogram per
//! second. HdrHistogram's own tools (HistogramLogProcessor, the plotter) and
//! the `hdrhistogram` crate's `IntervalLogIterator` read them.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;

use super::{Document, Exporter};
use crate::metrics::decode_histogram;
use crate::results::{BrokerResult, IntervalSeries, Results};

/// The interval-log exporter.
pub(crate) struct Hlog;

impl Exporter for Hlog {
    fn export(&self, runs: &[Results]) -> Result<Vec<Document>> {
        let mut documents = Vec::new();
        for (i, r) in runs.iter().enumerate() {
            // Several runs of one scenario: number them.
            let prefix = if runs.len() > 1 {
                format!("{}-{}", i + 1, r.scenario.name)
            } else {
                r.scenario.name.clone()
            };
            for b in &r.brokers {
                let mut add = |metric: String, series: &IntervalSeries| -> Result<()> {
                    documents.push(Document {
                        file_name: format!("{prefix}-{}-{metric}.hlog", super::tracked_name(b)),
                        content: log(b, &metric, series)?,
                    });
                    Ok(())
                };
                add("publish".into(), &b.series.publish_latency_us)?;
                for (group, series) in &b.series.end_to_end_latency_us {
                    add(format!("end_to_end-{group}"), series)?;
                }
            }
        }
        Ok(documents)
    }
}

/// One interval log: a histogram per second that holds values.
fn log(b: &BrokerResult, metric: &str, series: &IntervalSeries) -> Result<Vec<u8>> {
    let start = b
        .load
        .started_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let mut header = IntervalLogWriterBuilder::new();
    header
        .add_comment("[Histogram log format version 1.2]")
        .add_comment(&format!(
            "[brokerbench {}: {} on {}{}: {} latency, microseconds, one interval per second from the start of the load]",
            env!("CARGO_PKG_VERSION"),
            b.broker,
            b.implementation,
            b.stand_in_for
                .as_ref()
                .map(|p| format!(", a stand-in for {p}"))
                .unwrap_or_default(),
            metric.replace('-', " of ")
        ))
        .with_start_time(start)
        .with_base_time(start);
    header.begin_log_with(&mut out, &mut serializer)?;
    out.extend_from_slice(
        b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    );
    let mut body = Vec::new();
    let mut writer = IntervalLogWriterBuilder::new().begin_log_with(&mut body, &mut serializer)?;
    for (second, encoded) in series.hdr.iter().enumerate() {
        if encoded.is_empty() {
            continue;
        }
        let h = decode_histogram(encoded)
            .context("a per-second histogram in results.json does not read")?;
        writer
            .write_histogram(
                &h,
                Duration::from_secs(second as u64),
                Duration::from_secs(1),
                None,
            )
            .map_err(|e| anyhow::anyhow!("writing an interval: {e:?}"))?;
    }
    out.extend_from_slice(&body);
    Ok(out)
}
