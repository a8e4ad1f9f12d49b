//! Publishing with publisher confirms, many messages in flight on one
//! confirm-mode channel.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use anyhow::Result;
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};

use crate::driver::{Answer, Awaited, ErrorKind, Failure, Producer, Token};
use crate::event::Outgoing;
use crate::scenario::EVENT_TYPE;

use super::session::Session;

/// Publishes on one confirm-mode channel, many messages at a time: each
/// `basic.publish` queues its frames at once, in send order, and lapin's I/O
/// thread writes whatever is queued together; the writes and the broker's
/// confirmations are awaited in [`Awaited`], not one by one.
pub(super) struct RabbitProducer {
    session: Arc<Session>,
    channel: Channel,
    /// The events exchange and the routing key.
    route: (ShortString, ShortString),
    confirms: Awaited<BoxFuture<'static, Result<(), Failure>>>,
}

impl RabbitProducer {
    /// A producer on a confirm-mode channel of the session's connection.
    pub(super) async fn open(session: Arc<Session>) -> Result<Self> {
        let channel = session.publisher_channel().await?;
        Ok(RabbitProducer {
            route: session.route(),
            session,
            channel,
            confirms: Awaited::new(),
        })
    }

    /// The message's properties: persistent or not, and with
    /// [`Session::headers`] its ids, type and trace id.
    pub(super) fn properties(&self, message: &Outgoing) -> BasicProperties {
        let mode = if self.session.settings.persistent {
            2
        } else {
            1
        };
        let properties = BasicProperties::default().with_delivery_mode(mode);
        if !self.session.headers {
            return properties;
        }
        let mut headers = FieldTable::default();
        headers.insert(
            "trace_id".into(),
            AMQPValue::LongString(message.trace_id.to_string().into()),
        );
        properties
            .with_content_type("application/json".into())
            .with_type(EVENT_TYPE.into())
            .with_message_id(message.order_id().to_string().into())
            .with_headers(headers)
    }
}

/// Publishes `payload` on `channel` to `(exchange, routing key)` and waits
/// for the broker's confirm.
pub(super) fn publish(
    channel: Channel,
    (exchange, routing_key): (ShortString, ShortString),
    payload: Vec<u8>,
    properties: BasicProperties,
) -> BoxFuture<'static, Result<(), Failure>> {
    Box::pin(async move {
        let confirm = channel
            .basic_publish(
                exchange,
                routing_key,
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await
            .map_err(|e| ErrorKind::Connection.because(e))?;
        match confirm.await {
            Ok(confirmation) if confirmation.is_ack() => Ok(()),
            Ok(_) => Err(ErrorKind::Refused.because("the broker nacked it (basic.nack)")),
            Err(e) => Err(ErrorKind::Connection.because(e)),
        }
    })
}

#[async_trait]
impl Producer for RabbitProducer {
    async fn send(&mut self, token: Token, message: Outgoing) -> Result<(), Failure> {
        // A closed channel is replaced (reconnecting if need be) first.
        if !self.channel.status().connected() {
            self.channel = self
                .session
                .publisher_channel()
                .await
                .map_err(|e| ErrorKind::Connection.because(format!("{e:#}")))?;
        }
        let properties = self.properties(&message);
        let mut confirm = publish(
            self.channel.clone(),
            self.route.clone(),
            message.payload,
            properties,
        );
        // The first poll queues the frames, so messages go out in send
        // order; the write and the confirm are awaited with the others.
        match confirm
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Pending => self.confirms.push(token, confirm),
            Poll::Ready(Err(failure)) => return Err(failure),
            Poll::Ready(Ok(())) => self
                .confirms
                .push(token, Box::pin(std::future::ready(Ok(())))),
        }
        Ok(())
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer> {
        self.confirms.poll_answer(cx)
    }
}
