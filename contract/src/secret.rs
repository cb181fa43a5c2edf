//! The wrapper that keeps a password or key out of logs: [`Secret`]. Defined here because every
//! process holds secrets (the app, its workers, the instance manager), and one wrapper means one
//! rule for what a `{:?}` of one prints.

use std::fmt;

use sha2::{Digest, Sha256};

/// A value that must not be logged: a `{:?}` of it (in a log line or a panic message) prints
/// `Secret([redacted])`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one call that needs it (a connect, a hash).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Secret {
    /// HMAC-SHA256 of `message` under this secret (RFC 2104), for values the app hands to
    /// clients and must recognise as its own when they come back (read-your-writes tokens). Not
    /// `sha256(secret || message)`, which a client could extend without knowing the secret.
    pub fn mac(&self, message: &[u8]) -> [u8; 32] {
        const BLOCK: usize = 64;
        let mut key = [0u8; BLOCK];
        let secret = self.0.as_bytes();
        if secret.len() > BLOCK {
            key[..32].copy_from_slice(&Sha256::digest(secret));
        } else {
            key[..secret.len()].copy_from_slice(secret);
        }
        let pad = |byte: u8| key.map(|k| k ^ byte);
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_is_hmac_sha256_as_rfc_4231_gives_it() {
        // RFC 4231 test case 2 (key "Jefe").
        let mac = Secret::new("Jefe").mac(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block is hashed first (value from Python's hmac module).
        let long = Secret::new("k".repeat(100));
        assert_eq!(
            hex::encode(long.mac(b"ryw:1.12345")),
            "2c5b20c7fb7dfeefd7a10fc618bfb79dee83eceda1447a22cd5233fa68725aa2"
        );
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }
}
