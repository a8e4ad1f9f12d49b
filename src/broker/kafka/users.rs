//! The SCRAM user of a local run with `[security] auth`, made over the
//! node's inter-broker listener (plain, on loopback) with an
//! AlterUserScramCredentials request, as `kafka-configs --alter
//! --add-config SCRAM-SHA-512=[...]` makes one. Not with `kafka-storage
//! format --add-scram`: that takes the salted password on its command
//! line, where any local user can read it, and a salted password logs in
//! as well as the password does.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::messages::alter_user_scram_credentials_request::ScramCredentialUpsertion;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::metadata::{frame, read_frame, unframe};
use crate::broker::security::Secret;
use crate::driver::timed;

/// The iterations of a SCRAM user's salted password (Kafka's minimum).
const ITERATIONS: u32 = 4096;

/// SCRAM-SHA-512 in the protocol's numbering (SHA-256 is 1).
const SCRAM_SHA_512: i8 = 2;

/// Makes (or remakes) `user` with `password` for SCRAM-SHA-512 on the
/// node whose inter-broker listener is `address`: a new salt, and the
/// salted password (PBKDF2-HMAC-SHA-512, RFC 5802), from which Kafka
/// derives the keys it keeps.
pub(super) async fn add_scram_user(address: &str, user: &str, password: &Secret) -> Result<()> {
    let salt: [u8; 32] = rand::random();
    let mut salted = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(
        password.expose().as_bytes(),
        &salt,
        ITERATIONS,
        &mut salted,
    );
    let body = AlterUserScramCredentialsRequest::default().with_upsertions(vec![
        ScramCredentialUpsertion::default()
            .with_name(StrBytes::from_string(user.to_string()))
            .with_mechanism(SCRAM_SHA_512)
            .with_iterations(ITERATIONS as i32)
            .with_salt(Bytes::copy_from_slice(&salt))
            .with_salted_password(Bytes::copy_from_slice(&salted)),
    ]);
    let request = frame(ApiKey::AlterUserScramCredentials, 0, 1, &body)?;
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(&request).await?;
        read_frame(&mut stream, address).await
    };
    let answer = timed(&format!("making the SCRAM user at {address}"), exchange).await?;
    let answer: AlterUserScramCredentialsResponse =
        unframe(&answer, 0, 1).context("the answer to AlterUserScramCredentials")?;
    for result in answer.results {
        if result.error_code != 0 {
            bail!(
                "Kafka refused the SCRAM user {}: error {} {}",
                result.user.as_str(),
                result.error_code,
                result.error_message.as_ref().map_or("", |m| m.as_str())
            );
        }
    }
    Ok(())
}
