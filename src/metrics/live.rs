//! Live metrics during a run, for Prometheus: `run --metrics-addr ADDR`
//! serves the text exposition format at `/metrics` while brokers are
//! measured, as RabbitMQ PerfTest does.
//!
//! Counters and histograms carry a `broker` label (brokers run one after
//! another), and per group a `group` label. The motivating articles' own
//! `event_processed_total{type,status}` counts what each group's consumers
//! did with each event: `ok` (processed and acknowledged), `retry`
//! (processed on a redelivery), `failed` (processing failed on purpose and
//! the message went back), `skipped` (processed already: the idempotent
//! consumer skipped it), `dead_letter` (read from the dead-letter
//! destination, once per message) and `error` (the acknowledgement failed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::kind::BrokerKind;
use crate::scenario::{Plan, EVENT_TYPE};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabels {
    broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    broker: String,
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessedLabels {
    r#type: String,
    status: String,
    broker: String,
    group: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 100 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// The metrics of a run, served while it lasts.
pub(crate) struct LiveMetrics {
    registry: Registry,
    published: Family<BrokerLabels, Counter>,
    confirmed: Family<BrokerLabels, Counter>,
    delivered: Family<GroupLabels, Counter>,
    publish_latency: Family<BrokerLabels, Histogram, fn() -> Histogram>,
    end_to_end_latency: Family<GroupLabels, Histogram, fn() -> Histogram>,
    processed: Family<ProcessedLabels, Counter>,
}

/// One broker's handles: what the producer and consumer tasks update.
#[derive(Clone, Debug)]
pub(crate) struct BrokerMetrics {
    /// Publishes sent (resends included).
    pub published: Counter,
    /// Publishes the broker confirmed.
    pub confirmed: Counter,
    /// Publish latency from the intended send time, seconds.
    pub publish_latency: Histogram,
    /// Per group (in plan order).
    pub groups: Vec<GroupMetrics>,
}

/// One group's handles.
#[derive(Clone, Debug)]
pub(crate) struct GroupMetrics {
    /// First deliveries.
    pub delivered: Counter,
    /// End-to-end latency from the intended send time, seconds.
    pub end_to_end_latency: Histogram,
    /// `event_processed_total` by status: ok, retry, dead_letter, error.
    pub processed_ok: Counter,
    /// Processed on a redelivery.
    pub processed_retry: Counter,
    /// The acknowledgement failed.
    pub processed_error: Counter,
    /// Processing failed on purpose (a poison or transient message) and the
    /// message was handed back.
    pub processed_failed: Counter,
    /// Processed already: skipped by the idempotent consumer.
    pub processed_skipped: Counter,
    /// Refused by the typed decoder: dead-lettered or dropped, never retried.
    pub processed_decode_failed: Counter,
    /// Read from the dead-letter destination, once per message.
    pub processed_dead_letter: Counter,
}

impl Default for LiveMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let published = Family::default();
        let confirmed = Family::default();
        let delivered = Family::default();
        let publish_latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let end_to_end_latency =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let processed = Family::default();
        registry.register(
            "brokerbench_published",
            "Publishes sent, resends included",
            published.clone(),
        );
        registry.register(
            "brokerbench_confirmed",
            "Publishes the broker confirmed",
            confirmed.clone(),
        );
        registry.register(
            "brokerbench_delivered",
            "First deliveries to a consumer group",
            delivered.clone(),
        );
        registry.register_with_unit(
            "brokerbench_publish_latency",
            "Publish latency from the intended send time (corrected for coordinated omission)",
            prometheus_client::registry::Unit::Seconds,
            publish_latency.clone(),
        );
        registry.register_with_unit(
            "brokerbench_end_to_end_latency",
            "End-to-end latency from the intended send time (corrected for coordinated omission)",
            prometheus_client::registry::Unit::Seconds,
            end_to_end_latency.clone(),
        );
        // Unprefixed: the name the articles use.
        registry.register(
            "event_processed",
            "Events a consumer group processed, by event type and status (ok, retry, failed, skipped, dead_letter, error)",
            processed.clone(),
        );
        LiveMetrics {
            registry,
            published,
            confirmed,
            delivered,
            publish_latency,
            end_to_end_latency,
            processed,
        }
    }
}

impl LiveMetrics {
    /// The handles of `broker`'s run of `plan`.
    pub(crate) fn for_broker(&self, broker: BrokerKind, plan: &Plan) -> BrokerMetrics {
        let b = BrokerLabels {
            broker: broker.to_string(),
        };
        BrokerMetrics {
            published: self.published.get_or_create(&b).clone(),
            confirmed: self.confirmed.get_or_create(&b).clone(),
            publish_latency: self.publish_latency.get_or_create(&b).clone(),
            groups: plan
                .consumers
                .iter()
                .map(|c| {
                    let g = GroupLabels {
                        broker: broker.to_string(),
                        group: c.group.clone(),
                    };
                    let processed = |status: &str| {
                        self.processed
                            .get_or_create(&ProcessedLabels {
                                r#type: EVENT_TYPE.to_string(),
                                status: status.to_string(),
                                broker: broker.to_string(),
                                group: c.group.clone(),
                            })
                            .clone()
                    };
                    GroupMetrics {
                        delivered: self.delivered.get_or_create(&g).clone(),
                        end_to_end_latency: self.end_to_end_latency.get_or_create(&g).clone(),
                        processed_ok: processed("ok"),
                        processed_retry: processed("retry"),
                        processed_error: processed("error"),
                        processed_failed: processed("failed"),
                        processed_skipped: processed("skipped"),
                        processed_decode_failed: processed("decode_failed"),
                        processed_dead_letter: processed("dead_letter"),
                    }
                })
                .collect(),
        }
    }

    /// The text exposition of every metric now.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Serves `/metrics` on `addr` until the returned task is aborted; the
    /// address actually bound (port 0 picks one).
    pub(crate) async fn serve(
        self: Arc<Self>,
        addr: SocketAddr,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-addr: cannot listen on {addr}"))?;
        let bound = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of file descriptors, say: no busy loop beside the benchmark.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let metrics = Arc::clone(&self);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let metrics = Arc::clone(&metrics);
                            async move { Ok::<_, std::convert::Infallible>(respond(&metrics, &request)) }
                        },
                    );
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    // A scraper that never finishes its request is dropped.
                    let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
                });
            }
        });
        Ok((bound, task))
    }
}

fn respond(
    metrics: &LiveMetrics,
    request: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.text(),
        ),
        _ => (
            404,
            "text/plain; charset=utf-8",
            "brokerbench serves /metrics\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
