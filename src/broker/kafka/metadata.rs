//! One Kafka node's own view of a topic: a Metadata request sent to that
//! node alone, over a connection of its own (the wire format from the
//! `kafka-protocol` crate).
//!
//! librdkafka cannot ask this: it sends a metadata request to whichever
//! broker of the cluster it likes, not to the one it was bootstrapped
//! from. During a partition that is often the node cut off from the
//! others, which still answers clients with its stale view (it led 28 s
//! after the majority had moved its partitions in 12.7 s, issue 24).

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BytesMut};
use kafka_protocol::messages::{
    metadata_request::MetadataRequestTopic, ApiKey, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Metadata v12, which Kafka 2.8 to 4.x all answer (4.0 dropped v0-3).
const VERSION: i16 = 12;

/// The longest answer taken: a metadata response for one topic is a few
/// hundred bytes; more is not a Kafka node talking.
const MAX_RESPONSE: usize = 16 << 20;

/// A connection to one node, opened on the first question and again after
/// any failure, for questions about one topic.
pub(super) struct NodeMetadata {
    address: String,
    conn: Mutex<Option<(TcpStream, i32)>>,
}

impl NodeMetadata {
    pub(super) fn new(address: &str) -> Self {
        NodeMetadata {
            address: address.to_string(),
            conn: Mutex::new(None),
        }
    }

    /// What the node itself says of `topic`, within `within` (connecting
    /// included); a connection that failed or timed out is dropped.
    pub(super) async fn ask(&self, topic: &str, within: Duration) -> Result<MetadataResponse> {
        let mut conn = self.conn.lock().await;
        let asked = tokio::time::timeout(within, self.exchange(&mut conn, topic)).await;
        let answer = match asked {
            Ok(answer) => answer,
            Err(_) => Err(anyhow::anyhow!(
                "no metadata from {} within {within:?}",
                self.address
            )),
        };
        if answer.is_err() {
            *conn = None;
        }
        answer
    }

    async fn exchange(
        &self,
        conn: &mut Option<(TcpStream, i32)>,
        topic: &str,
    ) -> Result<MetadataResponse> {
        if conn.is_none() {
            let stream = TcpStream::connect(&self.address)
                .await
                .with_context(|| format!("connecting to {}", self.address))?;
            stream.set_nodelay(true)?;
            *conn = Some((stream, 0));
        }
        let (stream, correlation) = conn.as_mut().expect("connected above");
        *correlation = correlation.wrapping_add(1);
        stream.write_all(&request(topic, *correlation)?).await?;
        let body = read_frame(stream, &self.address).await?;
        response(&body, *correlation).with_context(|| format!("metadata from {}", self.address))
    }
}

/// A size-prefixed Metadata request for `topic` alone.
fn request(topic: &str, correlation: i32) -> Result<Vec<u8>> {
    let body = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .with_allow_auto_topic_creation(false);
    frame(ApiKey::Metadata, VERSION, correlation, &body)
}

/// The Metadata response in `body` (the size prefix read off), if it
/// answers request `correlation`.
fn response(body: &[u8], correlation: i32) -> Result<MetadataResponse> {
    unframe(body, VERSION, correlation)
}

/// Request `body` of API `key` at `version`, with its header and size
/// prefix.
pub(super) fn frame<R: Encodable + HeaderVersion>(
    key: ApiKey,
    version: i16,
    correlation: i32,
    body: &R,
) -> Result<Vec<u8>> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("brokerbench")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, R::header_version(version))?;
    body.encode(&mut buf, version)?;
    let mut framed = (buf.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&buf);
    Ok(framed)
}

/// The response at `version` in `body` (the size prefix read off), if it
/// answers request `correlation` and nothing follows it.
pub(super) fn unframe<R: Decodable + HeaderVersion>(
    mut body: &[u8],
    version: i16,
    correlation: i32,
) -> Result<R> {
    let header = ResponseHeader::decode(&mut body, R::header_version(version))?;
    if header.correlation_id != correlation {
        bail!(
            "answer to request {} where {correlation} was asked",
            header.correlation_id
        );
    }
    let answer = R::decode(&mut body, version)?;
    ensure!(
        !body.has_remaining(),
        "{} bytes after the response",
        body.len()
    );
    Ok(answer)
}

/// Reads one size-prefixed response from `stream`.
pub(super) async fn read_frame(stream: &mut TcpStream, address: &str) -> Result<Vec<u8>> {
    let size = stream.read_u32().await? as usize;
    ensure!(size <= MAX_RESPONSE, "{address} answered with {size} bytes");
    let mut body = vec![0; size];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{
        metadata_response::{MetadataResponsePartition, MetadataResponseTopic},
        BrokerId, RequestHeader,
    };

    #[test]
    fn a_request_is_framed_and_names_its_topic_alone() {
        let framed = request("events.order.created.v1", 7).unwrap();
        let size = u32::from_be_bytes(framed[..4].try_into().unwrap()) as usize;
        assert_eq!(size, framed.len() - 4);
        let mut body = &framed[4..];
        let header =
            RequestHeader::decode(&mut body, MetadataRequest::header_version(VERSION)).unwrap();
        assert_eq!(header.request_api_key, ApiKey::Metadata as i16);
        assert_eq!(header.correlation_id, 7);
        let asked = MetadataRequest::decode(&mut body, VERSION).unwrap();
        let topics = asked.topics.unwrap();
        assert_eq!(topics.len(), 1);
        assert_eq!(
            topics[0].name.as_ref().unwrap().0.as_str(),
            "events.order.created.v1"
        );
        assert!(!asked.allow_auto_topic_creation);
    }

    fn answer(correlation: i32) -> Vec<u8> {
        let partition = MetadataResponsePartition::default()
            .with_partition_index(2)
            .with_leader_id(BrokerId(3))
            .with_leader_epoch(4)
            .with_isr_nodes(vec![BrokerId(3), BrokerId(1)]);
        let topic = MetadataResponseTopic::default().with_partitions(vec![partition]);
        let mut buf = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(correlation)
            .encode(&mut buf, MetadataResponse::header_version(VERSION))
            .unwrap();
        MetadataResponse::default()
            .with_topics(vec![topic])
            .encode(&mut buf, VERSION)
            .unwrap();
        buf.to_vec()
    }

    #[test]
    fn a_response_is_read_only_for_the_request_it_answers() {
        let read = response(&answer(9), 9).unwrap();
        let partition = &read.topics[0].partitions[0];
        assert_eq!((partition.partition_index, *partition.leader_id), (2, 3));
        let stale = response(&answer(8), 9).unwrap_err();
        assert!(stale.to_string().contains("request 8"), "{stale}");
        let mut longer = answer(9);
        longer.push(0);
        assert!(response(&longer, 9).is_err());
    }
}
