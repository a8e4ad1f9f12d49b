//! A targets file's `[BROKER.tls]` and `[BROKER.auth]` tables, resolved
//! into the [`Security`] a client uses:
//!
//! ```toml
//! [rabbitmq]
//! url = "amqps://mq.example.com:5671/%2f"
//! [rabbitmq.tls]
//! ca = "ca.pem"                 # trust this CA (the system's roots when absent)
//! cert = "client.pem"           # a client certificate, with its key: mutual TLS
//! key = "client-key.pem"
//! [rabbitmq.auth]
//! mechanism = "PLAIN"           # RabbitMQ: PLAIN, EXTERNAL; Kafka: PLAIN,
//!                               # SCRAM-SHA-256, SCRAM-SHA-512; NATS: password,
//!                               # token, nkey, creds
//! user = "bench"
//! password_env = "MQ_PASSWORD"  # or password_file = "/run/secrets/mq"
//! ```
//!
//! NATS takes `token` from `password_env` or `password_file`, an NKEY seed
//! from `nkey_file`, and a credentials file (JWT) from `creds_file`. Paths
//! are relative to the targets file. A secret is read once, when the file
//! is loaded, and an error names the variable or file, never its content.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::broker::security::{Auth, Identity, Mechanism, Secret, Security, Tls};
use crate::kind::BrokerKind;

/// `[BROKER.tls]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

/// `[BROKER.auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthFile {
    mechanism: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    nkey_file: Option<Spanned<String>>,
    creds_file: Option<Spanned<String>>,
}

/// What went wrong, and where: the field (under the broker's table), its
/// place in the text, and a message that never holds a secret.
pub(crate) type Problem = (String, Option<Range<usize>>, String);

/// The security of broker `kind` from its tables; paths are relative to
/// `dir` (the targets file's directory).
pub(crate) fn resolve(
    kind: BrokerKind,
    tls: Option<&TlsFile>,
    auth: Option<&Spanned<AuthFile>>,
    dir: &Path,
) -> Result<Security, Problem> {
    let tls = tls.map(|t| resolve_tls(kind, t, dir)).transpose()?;
    let auth = auth
        .map(|a| resolve_auth(kind, a.get_ref(), Some(a.span()), tls.as_ref(), dir))
        .transpose()?;
    Ok(Security { tls, auth })
}

fn problem(
    kind: BrokerKind,
    field: &str,
    span: Option<Range<usize>>,
    message: impl Into<String>,
) -> Problem {
    (format!("{kind}.{field}"), span, message.into())
}

/// A path relative to `dir` that must name a readable file.
fn existing(
    kind: BrokerKind,
    field: &str,
    value: &Spanned<String>,
    dir: &Path,
) -> Result<PathBuf, Problem> {
    let path = dir.join(value.get_ref());
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err(problem(
            kind,
            field,
            Some(value.span()),
            format!("{} is not a file", path.display()),
        )),
        Err(e) => Err(problem(
            kind,
            field,
            Some(value.span()),
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// The text of the file `value` names (relative to `dir`), and its path.
fn file_text(
    kind: BrokerKind,
    field: &str,
    value: &Spanned<String>,
    dir: &Path,
) -> Result<(PathBuf, String), Problem> {
    let path = existing(kind, field, value, dir)?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        problem(
            kind,
            field,
            Some(value.span()),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    Ok((path, text))
}

fn resolve_tls(kind: BrokerKind, file: &TlsFile, dir: &Path) -> Result<Tls, Problem> {
    let ca = file
        .ca
        .as_ref()
        .map(|ca| existing(kind, "tls.ca", ca, dir))
        .transpose()?;
    let identity = match (&file.cert, &file.key) {
        (Some(cert), Some(key)) => Some(Identity {
            cert: existing(kind, "tls.cert", cert, dir)?,
            key: existing(kind, "tls.key", key, dir)?,
        }),
        (None, None) => None,
        (Some(cert), None) => {
            return Err(problem(
                kind,
                "tls.cert",
                Some(cert.span()),
                "a client certificate needs its `key`",
            ))
        }
        (None, Some(key)) => {
            return Err(problem(
                kind,
                "tls.key",
                Some(key.span()),
                "a key needs its client certificate, `cert`",
            ))
        }
    };
    Ok(Tls { ca, identity })
}

/// The mechanisms each broker's client offers, the first the default.
fn mechanisms(kind: BrokerKind) -> &'static [&'static str] {
    match kind {
        BrokerKind::Rabbitmq => &["PLAIN", "EXTERNAL"],
        BrokerKind::Kafka => &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        BrokerKind::Jetstream => &["password", "token", "nkey", "creds"],
    }
}

/// A secret from `password_env` or `password_file`, exactly one of them.
fn password(
    kind: BrokerKind,
    file: &AuthFile,
    dir: &Path,
    whole: Option<Range<usize>>,
) -> Result<Secret, Problem> {
    match (&file.password_env, &file.password_file) {
        (Some(var), None) => match std::env::var(var.get_ref()) {
            Ok(value) if !value.is_empty() => Ok(Secret::new(value)),
            _ => Err(problem(
                kind,
                "auth.password_env",
                Some(var.span()),
                format!("the environment variable {} is not set", var.get_ref()),
            )),
        },
        (None, Some(path)) => {
            let (path_buf, text) = file_text(kind, "auth.password_file", path, dir)?;
            // A trailing newline is the file's, not the secret's.
            let value = text.strip_suffix('\n').unwrap_or(&text);
            let value = value.strip_suffix('\r').unwrap_or(value);
            if value.is_empty() {
                return Err(problem(kind, "auth.password_file", Some(path.span()), format!("{} is empty", path_buf.display())));
            }
            Ok(Secret::new(value))
        }
        (Some(var), Some(_)) => Err(problem(
            kind,
            "auth.password_env",
            Some(var.span()),
            "give `password_env` or `password_file`, not both",
        )),
        (None, None) => Err(problem(
            kind,
            "auth",
            whole,
            "needs `password_env` (an environment variable) or `password_file`: a secret is never written in the targets file",
        )),
    }
}

fn resolve_auth(
    kind: BrokerKind,
    file: &AuthFile,
    whole: Option<Range<usize>>,
    tls: Option<&Tls>,
    dir: &Path,
) -> Result<Auth, Problem> {
    let offered = mechanisms(kind);
    let (mechanism, span) = match &file.mechanism {
        Some(m) => (m.get_ref().as_str(), Some(m.span())),
        None => (offered[0], None),
    };
    let Some(&mechanism) = offered.iter().find(|m| m.eq_ignore_ascii_case(mechanism)) else {
        return Err(problem(
            kind,
            "auth.mechanism",
            span,
            format!(
                "unknown mechanism for {kind} (expected {})",
                offered.join(", ")
            ),
        ));
    };
    let user = |what: &str| match &file.user {
        Some(user) if !user.get_ref().trim().is_empty() => Ok(user.get_ref().clone()),
        _ => Err(problem(
            kind,
            "auth.user",
            span.clone(),
            format!("{what} needs a `user`"),
        )),
    };
    let at = whole;
    Ok(match mechanism {
        "PLAIN" | "password" => Auth::Password {
            user: user(mechanism)?,
            password: password(kind, file, dir, at)?,
            mechanism: Mechanism::Plain,
        },
        "SCRAM-SHA-256" | "SCRAM-SHA-512" => Auth::Password {
            user: user(mechanism)?,
            password: password(kind, file, dir, at)?,
            mechanism: if mechanism == "SCRAM-SHA-256" {
                Mechanism::ScramSha256
            } else {
                Mechanism::ScramSha512
            },
        },
        "EXTERNAL" => {
            if tls.is_none_or(|t| t.identity.is_none()) {
                return Err(problem(
                    kind,
                    "auth.mechanism",
                    span,
                    "EXTERNAL needs a client certificate: `cert` and `key` under [rabbitmq.tls]",
                ));
            }
            Auth::External
        }
        "token" => Auth::Token(password(kind, file, dir, at)?),
        "nkey" => {
            let Some(seed) = &file.nkey_file else {
                return Err(problem(
                    kind,
                    "auth.nkey_file",
                    span,
                    "the nkey mechanism needs `nkey_file`, the seed's file",
                ));
            };
            let (_, text) = file_text(kind, "auth.nkey_file", seed, dir)?;
            Auth::Nkey(Secret::new(text.trim()))
        }
        _ => {
            let Some(creds) = &file.creds_file else {
                return Err(problem(
                    kind,
                    "auth.creds_file",
                    span,
                    "the creds mechanism needs `creds_file`",
                ));
            };
            Auth::Creds(existing(kind, "auth.creds_file", creds, dir)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Tables {
        tls: Option<TlsFile>,
        auth: Option<Spanned<AuthFile>>,
    }

    fn resolved(kind: BrokerKind, text: &str, dir: &Path) -> Result<Security, Problem> {
        let tables: Tables = toml::from_str(text).unwrap();
        resolve(kind, tables.tls.as_ref(), tables.auth.as_ref(), dir)
    }

    #[test]
    fn a_password_comes_from_the_environment_or_a_file_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "from-a-file-0451\n").unwrap();
        std::fs::write(dir.path().join("ca.pem"), "pem").unwrap();
        let security = resolved(
            BrokerKind::Kafka,
            "[tls]\nca = \"ca.pem\"\n[auth]\nmechanism = \"SCRAM-SHA-512\"\nuser = \"bench\"\npassword_file = \"pw\"\n",
            dir.path(),
        )
        .unwrap();
        match &security.auth {
            Some(Auth::Password {
                user,
                password,
                mechanism,
            }) => {
                assert_eq!(user, "bench");
                assert_eq!(password.expose(), "from-a-file-0451");
                assert_eq!(*mechanism, Mechanism::ScramSha512);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(security.tls.unwrap().ca.unwrap(), dir.path().join("ca.pem"));

        // A variable no other test uses.
        std::env::set_var("BROKERBENCH_TEST_PW_7f3a", "from-the-env-9931");
        let security = resolved(
            BrokerKind::Rabbitmq,
            "[auth]\nuser = \"bench\"\npassword_env = \"BROKERBENCH_TEST_PW_7f3a\"\n",
            dir.path(),
        )
        .unwrap();
        let shown = format!("{security:?} {}", security.shown());
        assert!(!shown.contains("from-the-env-9931"), "{shown}");
        assert!(matches!(
            security.auth,
            Some(Auth::Password {
                mechanism: Mechanism::Plain,
                ..
            })
        ));
    }

    #[test]
    fn mistakes_name_the_field_and_never_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), "pem").unwrap();
        let cases = [
            (
                BrokerKind::Rabbitmq,
                "[auth]\nuser = \"u\"\n",
                "rabbitmq.auth",
                "password_env",
            ),
            (
                BrokerKind::Rabbitmq,
                "[auth]\nuser = \"u\"\npassword_env = \"BROKERBENCH_TEST_UNSET_1c\"\n",
                "rabbitmq.auth.password_env",
                "not set",
            ),
            (
                BrokerKind::Kafka,
                "[auth]\nmechanism = \"GSSAPI\"\nuser = \"u\"\n",
                "kafka.auth.mechanism",
                "SCRAM-SHA-256",
            ),
            (
                BrokerKind::Rabbitmq,
                "[auth]\nmechanism = \"EXTERNAL\"\n",
                "rabbitmq.auth.mechanism",
                "client certificate",
            ),
            (
                BrokerKind::Jetstream,
                "[auth]\nmechanism = \"creds\"\n",
                "jetstream.auth.creds_file",
                "creds_file",
            ),
            (
                BrokerKind::Kafka,
                "[tls]\ncert = \"cert.pem\"\n",
                "kafka.tls.cert",
                "key",
            ),
            (
                BrokerKind::Kafka,
                "[tls]\nca = \"missing.pem\"\n",
                "kafka.tls.ca",
                "missing.pem",
            ),
            (
                BrokerKind::Kafka,
                "[auth]\nuser = \"u\"\npassword_file = \"missing\"\n",
                "kafka.auth.password_file",
                "missing",
            ),
        ];
        for (kind, text, field, says) in cases {
            let (named, _, message) = resolved(kind, text, dir.path()).unwrap_err();
            assert_eq!(named, field, "{text}");
            assert!(message.contains(says), "{text}: {message}");
        }
    }
}
