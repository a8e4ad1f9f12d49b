//! TLS and authentication toward a broker: what a targets file gives
//! (`[rabbitmq.tls]`, `[rabbitmq.auth]`), or what the local environment
//! makes for a run with `[security]`.
//!
//! Secrets come from environment variables or files, never from a file's
//! text, and are never shown: a [`Secret`] prints as `***` and is not
//! serialized, so it cannot reach results, tables, reports or logs.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::kind::BrokerKind;

/// A password, token or key seed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the client library that sends it; never for
    /// output.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// TLS toward the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// The CA (PEM) that signed the broker's certificate; the system's
    /// roots when none.
    pub ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for mutual TLS.
    pub identity: Option<Identity>,
}

/// A client certificate and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the client proves who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// A user and a password: AMQP PLAIN, NATS user and password, Kafka SASL
    /// PLAIN or SCRAM.
    Password {
        user: String,
        password: Secret,
        mechanism: Mechanism,
    },
    /// A NATS token.
    Token(Secret),
    /// A NATS NKEY seed.
    Nkey(Secret),
    /// A NATS credentials file: the user's JWT and NKEY seed.
    Creds(PathBuf),
    /// The client certificate names the user (RabbitMQ's EXTERNAL
    /// mechanism).
    External,
}

/// The SASL mechanism of a password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    /// The name SASL and librdkafka give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// TLS and authentication toward one broker; none of either by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Security {
    pub tls: Option<Tls>,
    pub auth: Option<Auth>,
}

impl Security {
    /// Neither TLS nor authentication beyond what the URL carries.
    pub fn is_plain(&self) -> bool {
        self.tls.is_none() && self.auth.is_none()
    }

    /// What the results and tables say of it: the mechanism and whether
    /// TLS is on, never a user's secret.
    pub fn shown(&self) -> String {
        let tls = match &self.tls {
            None => "no TLS",
            Some(Tls { identity: None, .. }) => "TLS",
            Some(Tls {
                identity: Some(_), ..
            }) => "mutual TLS",
        };
        let auth = match &self.auth {
            None => "no authentication beyond the URL".to_string(),
            Some(Auth::Password {
                user, mechanism, ..
            }) => format!("user {user} ({})", mechanism.as_str()),
            Some(Auth::Token(_)) => "token".to_string(),
            Some(Auth::Nkey(_)) => "NKEY".to_string(),
            Some(Auth::Creds(_)) => "credentials file (JWT)".to_string(),
            Some(Auth::External) => "client certificate (EXTERNAL)".to_string(),
        };
        format!("{tls}, {auth}")
    }
}

/// What a local run with `[security]` made for its brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCredentials {
    /// The run's CA and the brokers' certificate, when TLS is on.
    pub tls: Option<LocalCerts>,
    /// The user clients log in as, when authentication is on: RabbitMQ's
    /// (PLAIN) and Kafka's (SCRAM-SHA-512).
    pub user: Option<(String, Secret)>,
    /// NATS's decentralized authentication, when authentication is on and
    /// JetStream is measured.
    pub nats: Option<NatsTrust>,
}

/// A local run's certificates, PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCerts {
    /// The CA's certificate: what clients trust.
    pub ca: PathBuf,
    /// The brokers' certificate, signed by the CA, for loopback.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// An operator, one account under it and one user of that account, as
/// `nsc` would make them: the server trusts the operator and has the
/// account's JWT preloaded, and the client logs in with the user's
/// credentials file. None of the JWTs is a secret; the user's seed, in the
/// credentials file only, is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsTrust {
    /// The operator's JWT.
    pub operator_jwt: String,
    /// The account's public key (`A...`) and its JWT, signed by the operator.
    pub account: (String, String),
    /// The system account's, which the server needs for JetStream.
    pub system: (String, String),
    /// The user's credentials file (its JWT and NKEY seed), mode 0600.
    pub creds: PathBuf,
}

impl LocalCredentials {
    /// What brokerbench's clients of the local broker `kind` use.
    pub fn client(&self, kind: BrokerKind) -> Security {
        let password = |mechanism| {
            self.user.as_ref().map(|(user, password)| Auth::Password {
                user: user.clone(),
                password: password.clone(),
                mechanism,
            })
        };
        Security {
            tls: self.tls.as_ref().map(|certs| Tls {
                ca: Some(certs.ca.clone()),
                identity: None,
            }),
            auth: match kind {
                BrokerKind::Rabbitmq => password(Mechanism::Plain),
                BrokerKind::Kafka => password(Mechanism::ScramSha512),
                BrokerKind::Jetstream => self.nats.as_ref().map(|n| Auth::Creds(n.creds.clone())),
            },
        }
    }
}

/// Creates `dir` (and its parents), mode 0700.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Writes `text` to `path`, readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_shown() {
        let security = Security {
            tls: Some(Tls::default()),
            auth: Some(Auth::Password {
                user: "bench".into(),
                password: Secret::new("hunter2-planted"),
                mechanism: Mechanism::ScramSha256,
            }),
        };
        let shown = format!("{security:?} {}", security.shown());
        assert!(!shown.contains("hunter2-planted"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        assert_eq!(security.shown(), "TLS, user bench (SCRAM-SHA-256)");
    }
}
