//! The run's one AMQP connection, and making it again: when it breaks, the
//! first producer or consumer to see it reconnects with backoff and
//! declares the topology again; the others wait and open their channels on
//! the new connection.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::uri::{AMQPUri, AMQPUserInfo, SASLMechanism};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::broker::security::{Auth, Security};
use crate::broker::Endpoint;
use crate::driver::timed;
use crate::scenario::{ConsumerGroup, DeadLetter, RabbitmqSettings, Recovery};

/// The run's connection and how to make it again.
///
/// We reconnect ourselves rather than with lapin's automatic recovery, which
/// after a kill -9 now and then never completed (about 1 run in 5 here). The
/// first producer or consumer to see the connection fail reconnects with
/// [`crate::driver::backoff`] (1 s, 2 s, 4 s, ... capped, with jitter), declares the
/// exchange, queues and bindings again, and the others wait for it and then
/// open their channels on the new connection. After `give_up` without
/// success the session is dead: everything fails at once from then on.
pub(super) struct Session {
    pub(super) endpoint: Endpoint,
    pub(super) settings: RabbitmqSettings,
    pub(super) recovery: Recovery,
    pub(super) groups: Vec<ConsumerGroup>,
    pub(super) dead_letter: DeadLetter,
    /// Whether messages carry `message-id`, `type`, `content-type` and a
    /// `trace_id` header.
    pub(super) headers: bool,
    pub(super) current: tokio::sync::Mutex<Generation>,
}

/// One connection of the session; `number` counts reconnections.
pub(super) struct Generation {
    pub(super) number: u64,
    pub(super) connection: Option<Arc<Connection>>,
}

/// One AMQP connection to `endpoint`, named `name` in the broker's UI; the
/// run and the readiness probe connect the same way. A cluster's nodes are
/// tried in the order given until one accepts, as RabbitMQ's Java client
/// does with a list of addresses (lapin takes one).
pub(super) async fn open_connection(endpoint: &Endpoint, name: &str) -> Result<Connection> {
    let mut failed = None;
    for url in endpoint.urls() {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let shown = crate::broker::Endpoint::new(endpoint.kind, &url)
            .map(|e| e.shown())
            .unwrap_or_default();
        let connecting = async {
            if endpoint.security().is_plain() {
                return Ok(Connection::connect(&url, properties).await?);
            }
            let (uri, tls) = secured(&url, endpoint.security())?;
            let runtime = lapin::runtime::default_runtime()?;
            anyhow::Ok(Connection::connect_uri_with_config(uri, properties, tls, runtime).await?)
        };
        match timed(&format!("connecting to RabbitMQ at {shown}"), connecting).await {
            Ok(connection) => return Ok(connection),
            Err(e) => failed = Some(e),
        }
    }
    Err(failed.unwrap_or_else(|| anyhow::anyhow!("no RabbitMQ address to connect to")))
}

/// `url` with the endpoint's TLS and authentication applied: the user and
/// password go into the parsed URI (never into a URL text, which could be
/// shown), EXTERNAL lets the client certificate name the user, and the CA
/// and client certificate go to TLS.
fn secured(url: &str, security: &Security) -> Result<(AMQPUri, OwnedTLSConfig)> {
    let mut uri: AMQPUri = url.parse().map_err(|e: String| anyhow!("{e}"))?;
    match &security.auth {
        None => {}
        Some(Auth::Password { user, password, .. }) => {
            uri.authority.userinfo = AMQPUserInfo {
                username: user.clone(),
                password: password.expose().to_string(),
            };
        }
        Some(Auth::External) => uri.query.auth_mechanism = Some(SASLMechanism::External),
        Some(other) => bail!("RabbitMQ takes a password or EXTERNAL, not {other:?}"),
    }
    let mut config = OwnedTLSConfig::default();
    if let Some(tls) = &security.tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        if let Some(ca) = &tls.ca {
            config.cert_chain = Some(String::from_utf8_lossy(&read(ca)?).into_owned());
        }
        if let Some(identity) = &tls.identity {
            config.identity = Some(OwnedIdentity::PKCS8 {
                pem: read(&identity.cert)?,
                key: read(&identity.key)?,
            });
        }
    }
    Ok((uri, config))
}

impl Session {
    pub(super) async fn connect(&self) -> Result<Connection> {
        open_connection(&self.endpoint, "brokerbench").await
    }

    /// The connection in use, or an error once the session gave up.
    pub(super) async fn current(&self) -> Result<(u64, Arc<Connection>)> {
        let current = self.current.lock().await;
        match &current.connection {
            Some(connection) => Ok((current.number, connection.clone())),
            None => bail!("gave up reconnecting to RabbitMQ"),
        }
    }

    /// Replaces connection `broken`, unless someone already did; waits while
    /// another task reconnects.
    pub(super) async fn reconnect(&self, broken: u64) -> Result<(u64, Arc<Connection>)> {
        let mut current = self.current.lock().await;
        if current.number != broken || current.connection.is_none() {
            drop(current);
            return self.current().await;
        }
        let deadline = Instant::now() + self.recovery.give_up;
        for attempt in 0.. {
            let wait = crate::driver::backoff(attempt, self.recovery.backoff_max);
            if Instant::now() + wait > deadline {
                break;
            }
            tokio::time::sleep(wait).await;
            let Ok(connection) = self.connect().await else {
                continue;
            };
            if self.declare(&connection, false).await.is_ok() {
                let connection = Arc::new(connection);
                *current = Generation {
                    number: broken + 1,
                    connection: Some(connection.clone()),
                };
                return Ok((broken + 1, connection));
            }
        }
        current.connection = None;
        bail!(
            "gave up reconnecting to RabbitMQ after {}",
            humantime::format_duration(self.recovery.give_up)
        )
    }

    /// A channel with publisher confirms.
    pub(super) async fn publisher_channel(&self) -> Result<Channel> {
        self.open(|connection| async move {
            let channel = timed("opening an AMQP channel", connection.create_channel()).await?;
            timed(
                "enabling publisher confirms",
                channel.confirm_select(ConfirmSelectOptions::default()),
            )
            .await?;
            Ok(channel)
        })
        .await
    }

    /// A channel consuming `queue` with the prefetch limit.
    pub(super) async fn consumer_channel(&self, queue: &str) -> Result<(Channel, lapin::Consumer)> {
        let prefetch = self.settings.prefetch;
        self.open(|connection| async move {
            let channel = timed("opening an AMQP channel", connection.create_channel()).await?;
            timed(
                "setting the prefetch",
                channel.basic_qos(prefetch, BasicQosOptions::default()),
            )
            .await?;
            let consumer = timed(
                "starting the consumer",
                channel.basic_consume(
                    queue.into(),
                    format!("brokerbench-{queue}").as_str().into(),
                    BasicConsumeOptions::default(), // manual acknowledgement
                    FieldTable::default(),
                ),
            )
            .await?;
            Ok((channel, consumer))
        })
        .await
    }

    /// Runs `open` on the newest connection; if that connection is broken,
    /// replaces it first (or waits for whoever is replacing it) and runs
    /// `open` on the new one.
    pub(super) async fn open<T, F, Fut>(&self, open: F) -> Result<T>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (number, connection) = self.current().await?;
        if connection.status().connected() {
            if let Ok(opened) = open(connection).await {
                return Ok(opened);
            }
        }
        let (_, connection) = self.reconnect(number).await?;
        open(connection).await
    }
}
