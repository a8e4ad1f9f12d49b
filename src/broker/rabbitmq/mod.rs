//! RabbitMQ: AMQP 0-9-1 through lapin; locally, the release's own
//! `rabbitmq-server` script with a private node name, ports, cookie and epmd.

mod consumer;
mod driver;
mod management;
mod producer;
mod session;
mod topology;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use tokio::process::Command;

use super::{Broker, Helper, Info, Install, Launch, PortRole};
use crate::broker::security::LocalCredentials;
use crate::broker::Endpoint;
use crate::driver::{timed, Driver};
use crate::scenario::Plan;
use driver::RabbitMqDriver;
use session::open_connection;

static INFO: Info = Info {
    display_name: "RabbitMQ",
    program: "rabbitmq-server",
    // Debian 12's 3.10.8: 3.13 and 4.x need Erlang 26, Debian 12 has 25.
    install: Install::Apt("rabbitmq-server"),
    implementation: ("RabbitMQ ", ""),
    extra_ports: &[PortRole::Distribution, PortRole::Epmd],
    // The management plugin's HTTP API on a cluster: the one place that
    // tells which node leads a quorum queue (AMQP does not).
    cluster_ports: &[PortRole::Monitoring],
    shared_ports: &[PortRole::Epmd],
    cluster_joins_first: true,
    // An Erlang VM boot on a busy 2-core machine; usually 2-5 s.
    ready_deadline: Duration::from_secs(90),
    url_form: "an AMQP URI such as amqp://user:password@host:5672/%2f",
    compose_service: "rabbitmq",
    compose_port: 5672,
};

/// RabbitMQ's entry in the registry.
pub(super) struct RabbitMq;

#[async_trait]
impl Broker for RabbitMq {
    fn info(&self) -> &'static Info {
        &INFO
    }

    async fn identify(&self, found: &Path) -> Result<(PathBuf, String)> {
        let script = release_script(found)?;
        let version =
            release_version(&script).context("no version in the RabbitMQ release path")?;
        let (before, after) = INFO.implementation;
        Ok((script, format!("{before}{version}{after}")))
    }

    /// Isolates the node from any system RabbitMQ: its own node name, ports,
    /// Erlang cookie (in `HOME`), data, logs, plugins and configuration files.
    fn command(&self, launch: &Launch<'_>) -> Result<Command> {
        let dir = launch.dir;
        let home = dir.join("home");
        let conf_dir = dir.join("etc");
        for d in [&home, &conf_dir, &dir.join("mnesia"), &dir.join("log")] {
            fs::create_dir_all(d)?;
        }
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = conf_dir.join(name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let env_conf = write("rabbitmq-env.conf", "")?;
        let plugins = match launch.cluster {
            Some(_) => "[rabbitmq_management].\n",
            None => "[].\n",
        };
        let plugins = write("enabled_plugins", plugins)?;
        let mut conf = server_config(launch)?;
        if let Some(credentials) = &launch.server.credentials {
            conf.push_str(&secured_config(launch, credentials, &write)?);
        }
        let config = write("rabbitmq.conf", &conf)?;
        if launch.cluster.is_some() {
            write_cookie(&home, launch)?;
        }
        let port = launch.ports.client;
        let dist = launch.ports.distribution.context("no distribution port")?;
        let epmd = launch.ports.epmd.context("no epmd port")?;
        let mut command = Command::new(launch.program);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("LANG", "C.UTF-8")
            // Exec the Erlang VM directly instead of behind a signal-proxy shell,
            // so our signals reach the VM itself.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env("RABBITMQ_CONF_ENV_FILE", env_conf)
            .env("RABBITMQ_NODENAME", self.node_name(launch))
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("ERL_EPMD_PORT", epmd.to_string())
            .env("ERL_EPMD_ADDRESS", launch.host)
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", plugins)
            .env("RABBITMQ_CONFIG_FILE", config)
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                conf_dir.join("advanced.config"),
            )
            .env("RABBITMQ_FEATURE_FLAGS_FILE", dir.join("feature_flags"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins-expand"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                format!(
                    "-kernel inet_dist_use_interface {{{}}}",
                    launch.ports.ip().octets().map(|o| o.to_string()).join(",")
                ),
            );
        if launch
            .server
            .credentials
            .as_ref()
            .is_none_or(|c| c.tls.is_none())
        {
            // The plain AMQP listener; with TLS, rabbitmq.conf has the TLS
            // one and no other.
            command
                .env("RABBITMQ_NODE_IP_ADDRESS", launch.host)
                .env("RABBITMQ_NODE_PORT", port.to_string());
        }
        if launch.ports.host.is_some() {
            // An address of its own (a network namespace): long names.
            command.env("RABBITMQ_USE_LONGNAME", "true");
        }
        Ok(command)
    }

    /// Our own epmd on a private port: Erlang would otherwise start a
    /// daemonised one that outlives the run. The nodes of a cluster on
    /// loopback share the first node's; each node in a network namespace of
    /// its own has its own, on the same port.
    fn helper(&self, launch: &Launch<'_>) -> Result<Option<Helper>> {
        let shared = launch.ports.host.is_none();
        if shared && launch.cluster.is_some_and(|node| node.index > 0) {
            return Ok(None);
        }
        let port = launch.ports.epmd.context("no epmd port")?;
        let epmd = which::which("epmd")
            .or_else(|_| which::which_in("epmd", Some("/usr/lib/erlang/bin"), "/"))
            .context("epmd (from Erlang, a RabbitMQ dependency) not found")?;
        let mut command = Command::new(epmd);
        command
            .args(["-port", &port.to_string(), "-address", launch.host])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(Some(Helper { command, port }))
    }

    fn local_url(&self, host: &str, port: u16) -> String {
        format!("amqp://guest:guest@{host}:{port}/%2f")
    }

    /// Its Erlang node name, which the management API gives for a queue's
    /// leader and members.
    fn node_name(&self, launch: &Launch<'_>) -> String {
        node_name(&launch.ports)
    }

    fn accepts_url(&self, url: &str) -> bool {
        url.starts_with("amqp://") || url.starts_with("amqps://")
    }

    async fn connect(&self, plan: &Plan, at: &Endpoint, _run: u64) -> Result<Box<dyn Driver>> {
        Ok(Box::new(RabbitMqDriver::connect(plan, at).await?))
    }

    async fn handshake(&self, endpoint: &Endpoint) -> Result<()> {
        let conn = open_connection(endpoint, "brokerbench-probe").await?;
        let _ = timed(
            "closing AMQP connection",
            conn.close(200, "probe done".into()),
        )
        .await;
        Ok(())
    }

    async fn publish_durable(&self, endpoint: &Endpoint, name: &str, payload: &[u8]) -> Result<()> {
        let conn = open_connection(endpoint, "brokerbench-probe").await?;
        let channel = queue(&conn, name).await?;
        timed(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let props = lapin::BasicProperties::default().with_delivery_mode(2); // persistent
        let confirm = timed(
            "publishing",
            channel.basic_publish(
                "".into(),
                name.into(),
                BasicPublishOptions::default(),
                payload,
                props,
            ),
        )
        .await?;
        let confirmation = timed("waiting for the publisher confirm", confirm).await?;
        if !confirmation.is_ack() {
            bail!("RabbitMQ did not confirm the message: {confirmation:?}");
        }
        let _ = timed("closing AMQP connection", conn.close(200, "done".into())).await;
        Ok(())
    }

    async fn fetch_one(&self, endpoint: &Endpoint, name: &str, wait: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let conn = open_connection(endpoint, "brokerbench-probe").await?;
        let channel = queue(&conn, name).await?;
        loop {
            let got = timed(
                "basic.get",
                channel.basic_get(name.into(), BasicGetOptions::default()),
            )
            .await?;
            if let Some(message) = got {
                let data = message.delivery.data.clone();
                timed(
                    "acknowledging",
                    message.delivery.ack(BasicAckOptions::default()),
                )
                .await?;
                let _ = timed("closing AMQP connection", conn.close(200, "done".into())).await;
                return Ok(data);
            }
            if Instant::now() >= deadline {
                bail!("no message in queue '{name}' within {wait:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The Erlang node name of the local node whose AMQP port is `port`.
fn node_name(ports: &super::Ports) -> String {
    match ports.host {
        None => format!("brokerbench{}@localhost", ports.client),
        Some(ip) => format!("brokerbench{}@{ip}", ports.client),
    }
}

/// `rabbitmq.conf`: logs to the file only; on a cluster, the other nodes to
/// join at first boot (classic config peer discovery, as the clustering
/// guide's config-file method), `pause_minority` (3.10's default, `ignore`,
/// leaves a cluster split after a partition heals), and the management
/// API on loopback, its queue figures refreshed every second rather than 5
/// (a member's rejoin shows there).
/// `net_ticktime` of nodes in network namespaces, seconds: a peer unseen
/// for 0.75-1.25 times this is down.
pub(crate) const NET_TICKTIME: u32 = 5;

fn server_config(launch: &Launch<'_>) -> Result<String> {
    let mut config = String::from("log.console = false\nlog.file.level = info\n");
    if let Some(node) = launch.cluster {
        config.push_str(
            "cluster_formation.peer_discovery_backend = classic_config\n\
             cluster_partition_handling = pause_minority\n\
             collect_statistics_interval = 1000\n",
        );
        for (i, peer) in node.peers.iter().enumerate() {
            config.push_str(&format!(
                "cluster_formation.classic_config.nodes.{} = {}\n",
                i + 1,
                node_name(peer)
            ));
        }
        if launch.ports.host.is_some() {
            // Across namespaces a partition is possible: a node unseen for
            // 60 s (the default, 45-75 s) is too slow to declare down. The
            // clients come from this machine's namespace, not loopback, and
            // use the default account.
            config.push_str(&format!(
                "net_ticktime = {NET_TICKTIME}\nloopback_users.guest = false\n"
            ));
        }
        let management = launch.ports.monitoring.context("no management port")?;
        config.push_str(&format!(
            "management.tcp.port = {management}\nmanagement.tcp.ip = {}\n",
            launch.host
        ));
    }
    Ok(config)
}

/// `rabbitmq.conf` lines for `[security]`: the AMQPS listener alone on the
/// client port, with the run's certificates; and the run's user, loaded
/// from a definitions file that holds its salted hash (RabbitMQ's
/// `rabbit_password_hashing_sha256`), never the password. With definitions
/// to load, RabbitMQ creates no `guest` user.
fn secured_config(
    launch: &Launch<'_>,
    credentials: &LocalCredentials,
    write: &dyn Fn(&str, &str) -> Result<PathBuf>,
) -> Result<String> {
    let mut config = String::new();
    if let Some(certs) = &credentials.tls {
        config.push_str(&format!(
            "listeners.tcp = none\n\
             listeners.ssl.1 = {}:{}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            launch.host,
            launch.ports.client,
            certs.ca.display(),
            certs.cert.display(),
            certs.key.display()
        ));
    }
    if let Some((user, password)) = &credentials.user {
        let definitions = serde_json::json!({
            "users": [{
                "name": user,
                "password_hash": password_hash(password.expose()),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator"],
            }],
            "vhosts": [{"name": "/"}],
            "permissions": [{
                "user": user, "vhost": "/",
                "configure": ".*", "write": ".*", "read": ".*",
            }],
        });
        let path = write("definitions.json", &definitions.to_string())?;
        config.push_str(&format!("load_definitions = {}\n", path.display()));
    }
    Ok(config)
}

/// RabbitMQ's SHA-256 password hash: base64 of a 4-byte salt followed by
/// SHA-256(salt, password).
fn password_hash(password: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let salt: [u8; 4] = rand::random();
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(password.as_bytes())
        .finalize();
    let mut salted = salt.to_vec();
    salted.extend_from_slice(&digest);
    base64::engine::general_purpose::STANDARD.encode(salted)
}

/// The Erlang cookie every node of a cluster shares, in the node's `HOME`,
/// readable by its owner only (Erlang refuses it otherwise).
fn write_cookie(home: &Path, launch: &Launch<'_>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let node = launch.cluster.context("not a cluster node")?;
    let cookie = home.join(".erlang.cookie");
    let _ = fs::set_permissions(&cookie, fs::Permissions::from_mode(0o600));
    fs::write(&cookie, format!("BROKERBENCH{}", node.peers[0].client))
        .with_context(|| format!("writing {}", cookie.display()))?;
    fs::set_permissions(&cookie, fs::Permissions::from_mode(0o400))?;
    Ok(())
}

/// A channel on which the durable queue `name` is declared.
async fn queue(conn: &lapin::Connection, name: &str) -> Result<lapin::Channel> {
    let channel = timed("opening a channel", conn.create_channel()).await?;
    timed(
        "declaring the queue",
        channel.queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            Default::default(),
        ),
    )
    .await?;
    Ok(channel)
}

/// RabbitMQ's release directory is named `rabbitmq_server-X.Y.Z`; that is both
/// where the real server script lives and the version that runs. Debian puts
/// a wrapper in `/usr/sbin` (which switches to the `rabbitmq` user when run as
/// root) and the releases under `/usr/lib/rabbitmq/lib`.
fn release_script(found: &Path) -> Result<PathBuf> {
    let canonical = found
        .canonicalize()
        .with_context(|| format!("resolving {}", found.display()))?;
    if release_version(&canonical).is_some() {
        return Ok(canonical);
    }
    // Debian: /usr/lib/rabbitmq/bin/rabbitmq-script-wrapper -> ../lib/rabbitmq_server-*/sbin
    let lib = canonical
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("lib"))
        .context("unexpected rabbitmq-server location")?;
    newest_release_script(&lib).with_context(|| {
        format!(
            "{} is a wrapper, and no rabbitmq_server-*/sbin/rabbitmq-server was found in {}",
            found.display(),
            lib.display()
        )
    })
}

/// `.../rabbitmq_server-3.10.8/sbin/rabbitmq-server` -> `3.10.8`.
fn release_version(script: &Path) -> Option<String> {
    let release = script.parent()?.parent()?.file_name()?.to_str()?;
    let version = release.strip_prefix("rabbitmq_server-")?;
    version
        .chars()
        .next()?
        .is_ascii_digit()
        .then(|| version.to_string())
}

fn newest_release_script(lib: &Path) -> Option<PathBuf> {
    let mut scripts: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|entry| {
            let script = entry.ok()?.path().join("sbin").join("rabbitmq-server");
            let version = release_version(&script)?;
            let key = version.split('.').map(|p| p.parse().unwrap_or(0)).collect();
            script.is_file().then_some((key, script))
        })
        .collect();
    scripts.sort();
    scripts.pop().map(|(_, script)| script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_version_from_release_dir() {
        let p = Path::new("/usr/lib/rabbitmq/lib/rabbitmq_server-3.10.8/sbin/rabbitmq-server");
        assert_eq!(release_version(p).as_deref(), Some("3.10.8"));
        assert_eq!(
            release_version(Path::new("/usr/sbin/rabbitmq-server")),
            None
        );
    }

    #[test]
    fn newest_release_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        for v in ["3.9.29", "3.10.8", "3.10.10"] {
            let sbin = dir.path().join(format!("rabbitmq_server-{v}/sbin"));
            std::fs::create_dir_all(&sbin).unwrap();
            std::fs::write(sbin.join("rabbitmq-server"), "").unwrap();
        }
        let script = newest_release_script(dir.path()).unwrap();
        assert_eq!(release_version(&script).as_deref(), Some("3.10.10"));
    }

    #[test]
    fn urls_suit_lapin() {
        let url = RabbitMq.local_url("127.0.0.1", 4000);
        assert_eq!(url, "amqp://guest:guest@127.0.0.1:4000/%2f");
        assert!(RabbitMq.accepts_url(&url));
        assert!(!RabbitMq.accepts_url("nats://mq1:5672"));
    }
}
