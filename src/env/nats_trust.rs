//! NATS's decentralized authentication for one local run with `[security]
//! auth`: an operator, an account with JetStream under it, a user of that
//! account, and the system account the server needs for JetStream, made with NKEYs and signed JWTs as `nsc` makes them. The
//! server trusts the operator and has the account preloaded (a `MEMORY`
//! resolver); brokerbench's clients log in with the user's credentials
//! file, the form Synadia Cloud hands out.

use std::path::Path;

use anyhow::{anyhow, Result};
use nats_jwt_rs::account::{Account, JetStreamLimits};
use nats_jwt_rs::operator::Operator;
use nats_jwt_rs::user::User;
use nkeys::KeyPair;

use crate::broker::security::{private_dir, write_private, NatsTrust};

/// The name of every key made here.
const NAME: &str = "brokerbench";

/// A new operator, account and user; the user's credentials file is
/// written to `dir` (created, mode 0700), mode 0600.
pub fn generate(dir: &Path) -> Result<NatsTrust> {
    private_dir(dir)?;
    let operator = KeyPair::new_operator();
    let account = KeyPair::new_account();
    let user = KeyPair::new_user();
    let jwt_error = |e: anyhow::Error| anyhow!("signing a NATS JWT: {e}");

    let system = KeyPair::new_account();
    let mut claims = Operator::new_claims(NAME.into(), operator.public_key());
    claims.payload_mut().system_account = Some(system.public_key());
    let operator_jwt = claims.encode(&operator).map_err(jwt_error)?;
    let system_jwt = Account::new_claims("SYS".into(), system.public_key())
        .encode(&operator)
        .map_err(jwt_error)?;
    let mut claims = Account::new_claims(NAME.into(), account.public_key());
    // Without JetStream limits the account has no JetStream; -1 is no limit.
    if let Some(limits) = claims.payload_mut().limits.as_mut() {
        limits.jetstream = Some(JetStreamLimits {
            memory_storage: Some(-1),
            disk_storage: Some(-1),
            streams: Some(-1),
            consumer: Some(-1),
            ..Default::default()
        });
    }
    let account_jwt = claims.encode(&operator).map_err(jwt_error)?;
    let user_jwt = User::new_claims(NAME.into(), user.public_key())
        .encode(&account)
        .map_err(jwt_error)?;
    let seed = user
        .seed()
        .map_err(|e| anyhow!("the NATS user's seed: {e}"))?;

    let creds = dir.join("brokerbench.creds");
    write_private(&creds, &creds_text(&user_jwt, &seed))?;
    Ok(NatsTrust {
        operator_jwt,
        account: (account.public_key(), account_jwt),
        system: (system.public_key(), system_jwt),
        creds,
    })
}

/// A credentials file as `nsc generate creds` writes it.
fn creds_text(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_is_signed_by_the_account_the_operator_signed() {
        let dir = tempfile::tempdir().unwrap();
        let trust = generate(dir.path()).unwrap();
        let account = nats_jwt_rs::Claims::<Account>::decode(&trust.account.1).unwrap();
        let operator = nats_jwt_rs::Claims::<Operator>::decode(&trust.operator_jwt).unwrap();
        assert_eq!(account.iss, operator.sub);
        assert_eq!(account.sub, trust.account.0);
        let text = std::fs::read_to_string(&trust.creds).unwrap();
        let jwt = text.lines().nth(1).unwrap();
        let user = nats_jwt_rs::Claims::<User>::decode(jwt).unwrap();
        assert_eq!(user.iss, trust.account.0);
        assert!(text.contains("\nSU"), "a user seed starts with SU");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&trust.creds)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
