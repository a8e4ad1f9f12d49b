//! Where a running broker can be reached, in the form its own client wants.
//!
//! An endpoint is made from a host and port (a broker started locally) or
//! from a URL the user gave, which is checked against the form the broker's
//! client expects; a password in it is never shown.

use std::sync::Arc;

use serde::Serialize;

use super::registry;
use super::security::{LocalCredentials, Security};
use crate::kind::BrokerKind;

/// Where a running broker can be reached, with the address each client wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Which broker this is.
    pub kind: BrokerKind,
    /// An AMQP URI, a NATS URL, or a Kafka `bootstrap.servers` list.
    url: String,
    /// HTTP addresses where the broker reports its state, one per node
    /// (RabbitMQ's management API on a local cluster); empty when none.
    #[serde(skip)]
    admin: Vec<String>,
    /// TLS and authentication beyond the URL; never serialized (it holds
    /// secrets, shown only as `***`).
    #[serde(skip)]
    security: Arc<Security>,
}

impl Endpoint {
    /// A broker listening on `host:port`, reached with its default account.
    pub fn local(kind: BrokerKind, host: &str, port: u16) -> Self {
        Endpoint {
            kind,
            url: registry(kind).local_url(host, port),
            admin: Vec::new(),
            security: Arc::default(),
        }
    }

    /// A cluster whose nodes listen at `(host, port)` each.
    pub fn nodes(kind: BrokerKind, nodes: &[(String, u16)]) -> Self {
        let urls = nodes
            .iter()
            .map(|(host, port)| registry(kind).local_url(host, *port));
        Endpoint::joined(kind, urls)
    }

    /// One endpoint for several addresses, in the list form clients take.
    fn joined(kind: BrokerKind, urls: impl IntoIterator<Item = String>) -> Self {
        Endpoint {
            kind,
            url: urls.into_iter().collect::<Vec<_>>().join(","),
            admin: Vec::new(),
            security: Arc::default(),
        }
    }

    /// The same, with HTTP addresses where the broker reports its state.
    pub fn with_admin(mut self, admin: Vec<String>) -> Self {
        self.admin = admin;
        self
    }

    /// The same, with TLS and authentication beyond the URL.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = Arc::new(security);
        self
    }

    /// The same broker reached as a local run's `[security]` says: over TLS
    /// (the URL's scheme for it: `amqps://`, `tls://`) trusting the run's
    /// CA, as the run's user.
    pub fn secured_local(self, credentials: Option<&LocalCredentials>) -> Self {
        let Some(credentials) = credentials else {
            return self;
        };
        let url = match credentials.tls {
            Some(_) => self
                .url
                .split(',')
                .map(tls_scheme)
                .collect::<Vec<_>>()
                .join(","),
            None => self.url.clone(),
        };
        Endpoint {
            url,
            security: Arc::new(credentials.client(self.kind)),
            ..self
        }
    }

    /// TLS and authentication beyond the URL.
    pub fn security(&self) -> &Security {
        &self.security
    }

    /// HTTP addresses where the broker reports its state, one per node.
    pub fn admin(&self) -> &[String] {
        &self.admin
    }

    /// A cluster at the URLs the user gave, one per node, each checked for
    /// the form its client expects.
    pub fn list(kind: BrokerKind, urls: &[String]) -> Result<Self, String> {
        let checked = urls
            .iter()
            .map(|url| Endpoint::new(kind, url).map(|e| e.url))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Endpoint::joined(kind, checked))
    }

    /// Each address of a list (a cluster's nodes), or the one address.
    pub fn urls(&self) -> Vec<String> {
        self.url.split(',').map(|u| u.trim().to_string()).collect()
    }

    /// The same addresses with each one's host and port replaced by `host`
    /// and the port at its place in `ports`: the way through the fault proxy.
    pub fn through(&self, host: &str, ports: &[u16]) -> Endpoint {
        let urls = self.urls().into_iter().zip(ports).map(|(url, port)| {
            let (from, to) = host_port_span(&url);
            format!("{}{host}:{port}{}", &url[..from], &url[to..])
        });
        Endpoint {
            security: self.security.clone(),
            ..Endpoint::joined(self.kind, urls).with_admin(self.admin.clone())
        }
    }

    /// A broker at a URL the user gave, checked for the form its client expects.
    pub fn new(kind: BrokerKind, url: &str) -> Result<Self, String> {
        let url = url.trim();
        if !registry(kind).accepts_url(url) {
            return Err(format!("'{url}' is not {}", super::info(kind).url_form));
        }
        Ok(Endpoint {
            kind,
            url: url.to_string(),
            admin: Vec::new(),
            security: Arc::default(),
        })
    }

    /// The address in the form the broker's own client expects:
    /// an AMQP URI, a NATS URL, or a Kafka `bootstrap.servers` entry.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The address with any password replaced by `***`, for output and
    /// results; in a list (a cluster's nodes), in every address.
    pub fn shown(&self) -> String {
        self.url
            .split(',')
            .map(hide_password)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `url` with its scheme's TLS form; a Kafka address has no scheme (its
/// client is told by its configuration).
fn tls_scheme(url: &str) -> String {
    for (plain, tls) in [("amqp://", "amqps://"), ("nats://", "tls://")] {
        if let Some(rest) = url.trim().strip_prefix(plain) {
            return format!("{tls}{rest}");
        }
    }
    url.to_string()
}

/// Where `host:port` is in `url`: after any scheme and user, before any path.
fn host_port_span(url: &str) -> (usize, usize) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let from = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (from, end)
}

/// `url` with any password replaced by `***`.
fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_urls_are_checked_and_passwords_never_shown() {
        let kind = |name: &str| name.parse::<BrokerKind>().unwrap();
        let amqp = Endpoint::new(kind("rabbitmq"), "amqp://app:s3cret@mq1:5672/orders").unwrap();
        assert_eq!(amqp.url(), "amqp://app:s3cret@mq1:5672/orders");
        assert_eq!(amqp.shown(), "amqp://app:***@mq1:5672/orders");
        let nats = Endpoint::new(kind("jetstream"), "nats://token@n1:4222").unwrap();
        assert_eq!(nats.shown(), "nats://token@n1:4222");
        let urls = [
            "amqp://app:s3cret@mq1:5672/%2f",
            "amqp://app:s3cret@mq2:5672/%2f",
        ]
        .map(String::from);
        let cluster = Endpoint::list(kind("rabbitmq"), &urls).unwrap();
        assert_eq!(cluster.urls(), urls);
        assert_eq!(
            cluster.shown(),
            "amqp://app:***@mq1:5672/%2f,amqp://app:***@mq2:5672/%2f"
        );
        let kafka = Endpoint::new(kind("kafka"), "k1:9092, k2:9092").unwrap();
        assert_eq!(kafka.shown(), "k1:9092, k2:9092");
        for (name, bad) in [
            ("rabbitmq", "nats://mq1:5672"),
            ("jetstream", "n1:4222"),
            ("kafka", "kafka://k1:9092"),
            ("kafka", "k1"),
        ] {
            let err = Endpoint::new(kind(name), bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn the_way_through_the_proxy_keeps_scheme_user_and_path() {
        let kind = |name: &str| name.parse::<BrokerKind>().unwrap();
        let urls = ["amqp://app:pw@mq1:5672/%2f", "amqp://app:pw@mq2:5673/%2f"].map(String::from);
        let cluster = Endpoint::list(kind("rabbitmq"), &urls).unwrap();
        assert_eq!(
            cluster.through("127.0.0.1", &[7001, 7002]).urls(),
            [
                "amqp://app:pw@127.0.0.1:7001/%2f",
                "amqp://app:pw@127.0.0.1:7002/%2f"
            ]
        );
        let local = |port| ("127.0.0.1".to_string(), port);
        let kafka = Endpoint::nodes(kind("kafka"), &[local(9092), local(9093)]);
        assert_eq!(
            kafka.through("127.0.0.1", &[7001, 7002]).url(),
            "127.0.0.1:7001,127.0.0.1:7002"
        );
    }
}
