//! NATS JetStream through async-nats; locally, `nats-server -js` with file
//! storage in the run's data directory.

mod driver;

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::process::Command;

use super::{Broker, Info, Install, Launch, PortRole, PROBE_CONSUMER};
use crate::broker::security::LocalCredentials;
use crate::broker::Endpoint;
use crate::driver::{timed, Driver, CALL_TIMEOUT};
use crate::scenario::Plan;
use driver::{open_connection, options, JetStreamDriver};

/// The nats-server release brokerbench is tested with (`scripts/install-brokers`).
pub const NATS_SERVER_VERSION: &str = "v2.15.3";

static INFO: Info = Info {
    display_name: "NATS JetStream",
    program: "nats-server",
    // Debian 12's 2.9.10 drops expired, partly filled pull requests without
    // a word (fixed in 2.9.16); users run 2.10 and later.
    install: Install::Go {
        module: "github.com/nats-io/nats-server/v2",
        version: NATS_SERVER_VERSION,
    },
    implementation: ("nats-server ", ""),
    extra_ports: &[PortRole::Monitoring],
    cluster_ports: &[PortRole::Route],
    shared_ports: &[],
    cluster_joins_first: false,
    ready_deadline: Duration::from_secs(30),
    url_form: "a NATS URL such as nats://host:4222",
    compose_service: "nats",
    compose_port: 4222,
};

/// The server's configuration file, in its data directory.
const CONFIG: &str = "nats-server.conf";

/// JetStream with its store in the data directory; with `sync_always`,
/// every write synced before it is acknowledged (`sync_interval` is
/// server-wide, so it cannot be set per stream). One node of a cluster
/// also listens for routes and names every node's route, as the NATS
/// documentation's static cluster does (a node ignores the route to itself),
/// and advertises no client address: clients know only the addresses they
/// were given (the fault proxy's, when there is one).
fn server_config(launch: &Launch<'_>) -> Result<String> {
    let store = launch.dir.join("jetstream");
    let sync = if launch.server.sync_always {
        "\n  sync_interval: always"
    } else {
        ""
    };
    let mut config = format!(
        "# Written by brokerbench before each start.\njetstream {{\n  store_dir: {:?}{sync}\n}}\n",
        store.display().to_string()
    );
    if let Some(credentials) = &launch.server.credentials {
        config.push_str(&secured_config(credentials));
    }
    if let Some(node) = launch.cluster {
        let host = launch.host;
        let route = launch.ports.route.context("no route port")?;
        let routes = node
            .peers
            .iter()
            .map(|p| {
                Ok(format!(
                    "    nats-route://{}:{}",
                    p.ip(),
                    p.route.context("no route port")?
                ))
            })
            .collect::<Result<Vec<_>>>()?
            .join("\n");
        config.push_str(&format!(
            "cluster {{\n  name: brokerbench\n  listen: {host}:{route}\n  no_advertise: true\n  routes: [\n{routes}\n  ]\n}}\n"
        ));
    }
    Ok(config)
}

/// A local run's `[security]`: TLS with the run's certificate (clients
/// must use it: `tls://`), and for authentication the run's operator,
/// trusted, with its account preloaded into a `MEMORY` resolver, so that
/// only holders of a user JWT signed by that account connect. The JWTs
/// are public; no secret is written here.
fn secured_config(credentials: &LocalCredentials) -> String {
    let mut config = String::new();
    if let Some(certs) = &credentials.tls {
        config.push_str(&format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  timeout: 5\n}}\n",
            certs.cert.display().to_string(),
            certs.key.display().to_string()
        ));
    }
    if let Some(trust) = &credentials.nats {
        let (account, account_jwt) = &trust.account;
        let (system, system_jwt) = &trust.system;
        config.push_str(&format!(
            "operator: {:?}\nsystem_account: {system}\nresolver: MEMORY\nresolver_preload: {{\n  \
             {account}: {account_jwt:?}\n  {system}: {system_jwt:?}\n}}\n",
            trust.operator_jwt
        ));
    }
    config
}

/// NATS JetStream's entry in the registry.
pub(super) struct JetStream;

/// A NATS connection for a probe, made as the run makes its own.
async fn probe_connection(endpoint: &Endpoint) -> Result<async_nats::Client> {
    open_connection(
        endpoint,
        options("brokerbench-probe", Duration::from_secs(1)),
    )
    .await
}

#[async_trait]
impl Broker for JetStream {
    fn info(&self) -> &'static Info {
        &INFO
    }

    async fn prepare(&self, launch: &Launch<'_>) -> Result<()> {
        let config = launch.dir.join(CONFIG);
        std::fs::write(&config, server_config(launch)?)
            .with_context(|| format!("writing {}", config.display()))
    }

    fn command(&self, launch: &Launch<'_>) -> Result<Command> {
        let port = launch.ports.client.to_string();
        let monitoring = launch.ports.monitoring.context("no monitoring port")?;
        let mut command = Command::new(launch.program);
        command
            .arg("-c")
            .arg(launch.dir.join(CONFIG))
            .args(["-a", launch.host, "-p", &port])
            .arg("-m")
            .arg(monitoring.to_string())
            .args(["-n", &self.node_name(launch)]);
        Ok(command)
    }

    fn node_name(&self, launch: &Launch<'_>) -> String {
        format!("brokerbench-{}", launch.ports.client)
    }

    fn local_url(&self, host: &str, port: u16) -> String {
        format!("nats://{host}:{port}")
    }

    fn accepts_url(&self, url: &str) -> bool {
        ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
    }

    async fn connect(&self, plan: &Plan, at: &Endpoint, _run: u64) -> Result<Box<dyn Driver>> {
        Ok(Box::new(JetStreamDriver::connect(plan, at).await?))
    }

    async fn handshake(&self, endpoint: &Endpoint) -> Result<()> {
        // A raw `$JS.API.INFO` request: async-nats 0.51's typed
        // `query_account` cannot parse nats-server 2.9's reply.
        let client = probe_connection(endpoint).await?;
        let reply = timed(
            "querying the JetStream account",
            client.request("$JS.API.INFO", "".into()),
        )
        .await?;
        let info: serde_json::Value =
            serde_json::from_slice(&reply.payload).context("JetStream account info")?;
        if let Some(error) = info.get("error") {
            bail!("JetStream is not available: {error}");
        }
        Ok(())
    }

    async fn publish_durable(&self, endpoint: &Endpoint, name: &str, payload: &[u8]) -> Result<()> {
        let js = jetstream::new(probe_connection(endpoint).await?);
        file_stream(&js, name).await?;
        let ack = timed(
            "publishing",
            js.publish(name.to_string(), payload.to_vec().into()),
        )
        .await?;
        timed("waiting for the JetStream ack", ack.into_future()).await?;
        Ok(())
    }

    async fn fetch_one(&self, endpoint: &Endpoint, name: &str, wait: Duration) -> Result<Vec<u8>> {
        let js = jetstream::new(probe_connection(endpoint).await?);
        let stream = file_stream(&js, name).await?;
        let config = pull::Config {
            durable_name: Some(PROBE_CONSUMER.to_string()),
            ..Default::default()
        };
        let pull = timed(
            "creating the pull consumer",
            stream.get_or_create_consumer(PROBE_CONSUMER, config),
        )
        .await?;
        let mut batch = timed(
            "fetching",
            pull.fetch().max_messages(1).expires(wait).messages(),
        )
        .await?;
        let message = tokio::time::timeout(wait + CALL_TIMEOUT, batch.next())
            .await
            .ok()
            .flatten()
            .with_context(|| format!("no message on stream '{name}' within {wait:?}"))?
            .map_err(|e| anyhow!(e))?;
        let ack = async { message.double_ack().await.map_err(|e| anyhow!("{e}")) };
        timed("acknowledging", ack).await?;
        Ok(message.payload.to_vec())
    }
}

/// The file-stored stream that holds subject `name`.
async fn file_stream(js: &jetstream::Context, name: &str) -> Result<stream::Stream> {
    let config = stream::Config {
        name: name.replace('.', "_"),
        subjects: vec![name.to_string()],
        storage: stream::StorageType::File,
        ..Default::default()
    };
    timed("creating the stream", js.get_or_create_stream(config)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_suit_async_nats() {
        assert_eq!(
            JetStream.local_url("127.0.0.1", 4000),
            "nats://127.0.0.1:4000"
        );
        assert!(JetStream.accepts_url("tls://n1:4222"));
        assert!(!JetStream.accepts_url("n1:4222"));
    }
}
