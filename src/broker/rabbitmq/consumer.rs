//! Consuming with manual acks after processing, a prefetch limit, and
//! acknowledgements batched into `multiple` acks.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use lapin::Channel;

use crate::driver::{timed, Consumer, ErrorKind, Incoming, Settle, Settler};
use crate::scenario::QueueType;

use super::session::Session;

pub(super) struct RabbitConsumer {
    session: Arc<Session>,
    queue: String,
    /// The subscription broke and is not replaced yet.
    broken: bool,
    channel: Channel,
    consumer: lapin::Consumer,
    /// The channel's acknowledgements, when they go out as `multiple` acks.
    acks: Option<Arc<Acks>>,
}

/// How long a processed delivery may wait for its `multiple` ack.
pub(super) const ACK_DELAY: Duration = Duration::from_millis(5);

/// A consumer channel's acknowledgements sent as `multiple` acks: one frame
/// acknowledges every delivery up to a tag, so a message processed waits
/// until all before it are, then goes out with them when a batch (half the
/// prefetch) is complete, or [`ACK_DELAY`] after the first of them.
pub(super) struct Acks {
    channel: Channel,
    batch: u64,
    state: std::sync::Mutex<AckState>,
}

#[derive(Default)]
pub(super) struct AckState {
    /// The lowest delivery tag not processed yet (tags start at 1).
    next: u64,
    /// Processed tags above `next`, each with whether it is to be
    /// acknowledged (false: it was rejected on its own).
    processed: std::collections::BTreeMap<u64, bool>,
    /// The highest tag below `next` to be acknowledged: what a `multiple`
    /// ack names (naming a rejected tag is a channel error).
    ackable: u64,
    /// The highest tag acknowledged to the broker.
    sent: u64,
    /// Whether a delayed ack is on its way.
    scheduled: bool,
}

impl Acks {
    pub(super) fn new(channel: Channel, prefetch: u16) -> Arc<Self> {
        Arc::new(Acks {
            channel,
            batch: (u64::from(prefetch) / 2).max(1),
            state: std::sync::Mutex::new(AckState {
                next: 1,
                ..AckState::default()
            }),
        })
    }

    /// Delivery `tag` was processed: acknowledges what a batch completes,
    /// or makes sure a delayed ack will.
    pub(super) async fn processed(self: &Arc<Self>, tag: u64) -> Result<(), ErrorKind> {
        self.settled(tag, true).await
    }

    /// Delivery `tag` was rejected on its own (its reject is out): the
    /// `multiple` acks go past it, naming the tags around it.
    pub(super) async fn rejected(self: &Arc<Self>, tag: u64) -> Result<(), ErrorKind> {
        self.settled(tag, false).await
    }

    async fn settled(self: &Arc<Self>, tag: u64, ack: bool) -> Result<(), ErrorKind> {
        let (ack, schedule) = {
            let mut guard = self.state.lock().expect("acks lock");
            let state = &mut *guard;
            state.processed.insert(tag, ack);
            while let Some(ack) = state.processed.remove(&state.next) {
                if ack {
                    state.ackable = state.next;
                }
                state.next += 1;
            }
            if state.next > state.sent + self.batch {
                (self.send(state), false)
            } else {
                let schedule = !state.scheduled && state.ackable > state.sent;
                state.scheduled |= schedule;
                (None, schedule)
            }
        };
        if schedule {
            let acks = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(ACK_DELAY).await;
                let _ = acks.flush().await;
            });
        }
        match ack {
            Some(ack) => Self::finish(ack).await,
            None => Ok(()),
        }
    }

    /// Acknowledges every processed delivery not acknowledged yet.
    pub(super) async fn flush(&self) -> Result<(), ErrorKind> {
        let ack = {
            let mut state = self.state.lock().expect("acks lock");
            state.scheduled = false;
            self.send(&mut state)
        };
        match ack {
            Some(ack) => Self::finish(ack).await,
            None => Ok(()),
        }
    }

    /// Starts the `multiple` ack up to the processed prefix, if it grew.
    /// Its frame is queued before the lock is let go, so acks go out in
    /// order: an ack for a lower tag after a higher one would be refused.
    pub(super) fn send(
        &self,
        state: &mut AckState,
    ) -> Option<BoxFuture<'static, lapin::Result<()>>> {
        let top = state.ackable;
        if top <= state.sent {
            return None;
        }
        state.sent = top;
        let channel = self.channel.clone();
        let mut ack: BoxFuture<'static, lapin::Result<()>> = Box::pin(async move {
            channel
                .basic_ack(top, BasicAckOptions { multiple: true })
                .await
        });
        match ack.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => Some(Box::pin(std::future::ready(result))),
            Poll::Pending => Some(ack),
        }
    }

    pub(super) async fn finish(
        ack: BoxFuture<'static, lapin::Result<()>>,
    ) -> Result<(), ErrorKind> {
        match tokio::time::timeout(crate::driver::CALL_TIMEOUT, ack).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(ErrorKind::Ack),
        }
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    /// Cancel-safe: a broken subscription is marked before it is replaced,
    /// so a call dropped while resubscribing is taken up by the next one
    /// (polled again, lapin's ended consumer would wait forever).
    async fn next(&mut self) -> Option<Result<Incoming, ErrorKind>> {
        if !self.broken {
            match self.consumer.next().await {
                Some(Ok(delivery)) => return Some(Ok(self.incoming(delivery))),
                // The channel or connection broke (we never cancel the
                // consumer ourselves).
                Some(Err(_)) | None => self.broken = true,
            }
        }
        // Consume again on a new channel. What was delivered but not
        // acknowledged comes back, flagged as redelivered.
        match self.session.consumer_channel(&self.queue).await {
            Ok((channel, consumer)) => {
                // Tags start again at 1 on the new channel.
                if self.acks.is_some() {
                    self.acks = Some(Acks::new(channel.clone(), self.session.settings.prefetch));
                }
                (self.channel, self.consumer) = (channel, consumer);
                self.broken = false;
                Some(Err(ErrorKind::Receive))
            }
            Err(_) if self.session.current().await.is_err() => None,
            Err(_) => Some(Err(ErrorKind::Receive)),
        }
    }

    async fn close(self: Box<Self>) {
        // What was processed is acknowledged before the channel closes.
        if let Some(acks) = &self.acks {
            let _ = acks.flush().await;
        }
        let _ = timed(
            "closing the consumer channel",
            self.channel.close(200, "consumer done".into()),
        )
        .await;
    }
}

impl RabbitConsumer {
    /// A consumer of `queue`, manual acknowledgement; with `batched`, its
    /// acknowledgements go out as `multiple` acks ([`Acks`]).
    pub(super) async fn open(
        session: Arc<Session>,
        queue: String,
        batched: bool,
    ) -> Result<Box<dyn Consumer>> {
        let (channel, consumer) = session.consumer_channel(&queue).await?;
        let acks = batched.then(|| Acks::new(channel.clone(), session.settings.prefetch));
        Ok(Box::new(RabbitConsumer {
            session,
            queue,
            broken: false,
            channel,
            consumer,
            acks,
        }))
    }

    /// A delivery, with how to settle it.
    pub(super) fn incoming(&self, delivery: lapin::message::Delivery) -> Incoming {
        let acker = delivery.acker;
        let session = self.session.clone();
        let (acks, tag) = (self.acks.clone(), delivery.delivery_tag);
        let settle: Settler = Box::new(move |how| {
            Box::pin(async move {
                let settled = match how {
                    Settle::Ack if acks.is_some() => {
                        return acks.expect("batched").processed(tag).await;
                    }
                    Settle::Ack => {
                        let ack = acker.ack(BasicAckOptions::default());
                        tokio::time::timeout(crate::driver::CALL_TIMEOUT, ack).await
                    }
                    Settle::Refuse => {
                        // Dead-lettered at once by the queue's dead-letter
                        // exchange, or dropped when it has none. With batched
                        // acks the tag counts as done only once the reject is
                        // out: a `multiple` ack must not take it in first.
                        let reject = acker.reject(BasicRejectOptions { requeue: false });
                        let rejected =
                            tokio::time::timeout(crate::driver::CALL_TIMEOUT, reject).await;
                        match (rejected, acks) {
                            (Ok(Ok(_)), Some(acks)) => return acks.rejected(tag).await,
                            (rejected, _) => rejected,
                        }
                    }
                    Settle::Failed { attempt } => {
                        // RabbitMQ cannot delay a redelivery: the consumer waits.
                        tokio::time::sleep(session.dead_letter.retry_delay).await;
                        // A quorum queue counts deliveries and dead-letters at
                        // its limit; a classic queue dead-letters what is
                        // rejected without requeueing, at the consumer's count.
                        let requeue = session.settings.queue_type == QueueType::Quorum
                            || attempt < session.dead_letter.max_deliveries;
                        let reject = acker.reject(BasicRejectOptions { requeue });
                        tokio::time::timeout(crate::driver::CALL_TIMEOUT, reject).await
                    }
                };
                match settled {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(_)) | Err(_) => Err(ErrorKind::Ack),
                }
            })
        });
        Incoming {
            receipt: None,
            payload: delivery.data.into(),
            redelivered: delivery.redelivered,
            settle,
        }
    }
}
