//! One-time join tokens: `ATL1.<CA fingerprint>.<secret>`. The head keeps only
//! the secret's hash; the agent checks the CA it is shown against the fingerprint
//! before it sends the secret.

use sha2::{Digest, Sha256};

use crate::{PkiError, Result};

const PREFIX: &str = "ATL1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER), hex.
    pub ca_fingerprint: String,
    /// 32 random bytes, hex.
    pub secret: String,
}

impl JoinToken {
    pub fn generate(ca_fingerprint: &str) -> JoinToken {
        let secret: [u8; 32] = rand::random();
        JoinToken {
            ca_fingerprint: ca_fingerprint.to_string(),
            secret: hex::encode(secret),
        }
    }

    pub fn parse(s: &str) -> Result<JoinToken> {
        let bad = || {
            PkiError::Invalid("malformed join token (expected ATL1.<fingerprint>.<secret>)".into())
        };
        let mut parts = s.trim().split('.');
        let (Some(PREFIX), Some(fp), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let hex64 = |x: &str| x.len() == 64 && x.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex64(fp) || !hex64(secret) {
            return Err(bad());
        }
        Ok(JoinToken {
            ca_fingerprint: fp.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }

    /// What the head stores and looks tokens up by.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}.{}.{}", self.ca_fingerprint, self.secret)
    }
}
