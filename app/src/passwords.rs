//! Passwords: the rules a new password must meet, and argon2id hashing and verification on the
//! blocking pool.
//!
//! Parameters are OWASP's first recommendation for argon2id (Password Storage Cheat Sheet):
//! 19 MiB of memory, 2 passes, 1 lane. One hash costs tens of milliseconds of one core and 19 MiB,
//! so hashes run on tokio's blocking pool (never on a runtime worker, where they would stall
//! every request sharing that thread), at most one per core at a time: a burst of sign-ins waits
//! for a permit instead of multiplying the memory by the blocking pool's 512 threads.
//!
//! Hashes are stored as PHC strings, which carry their own parameters, so raising the parameters
//! later leaves existing hashes verifiable. Verification compares in constant time
//! (`password_hash::Output` compares with `subtle`). A sign-in for an unknown account, or one
//! without a password, verifies against a dummy hash with the same parameters, so it costs what a
//! wrong password costs and its timing does not tell which accounts exist.
//!
//! A [`Password`] never prints: its `Debug` is redacted, and it is not `Serialize`.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::SaltString,
};
use serde::Deserialize;
use tokio::sync::{OnceCell, Semaphore};

/// Memory cost in KiB (19 MiB).
pub const MEMORY_KIB: u32 = 19 * 1024;
/// Passes over the memory.
pub const ITERATIONS: u32 = 2;
/// Lanes (1: one request uses one core).
pub const PARALLELISM: u32 = 1;
/// Shortest accepted password, in characters. ASVS 5.0 asks for at least 8 and recommends 15;
/// 12 keeps a guess budget of 5 failures per account and window far from any real password.
pub const MIN_CHARS: usize = 12;
/// Longest accepted password, in characters (bounds the work one request can ask for; long
/// enough for any passphrase or manager-generated password).
pub const MAX_CHARS: usize = 128;

/// A password as a client sent it. Not `Serialize`, and `Debug` prints no characters.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    /// Wraps a password (tests, tools).
    pub fn new(text: impl Into<String>) -> Self {
        Password(text.into())
    }

    /// Longer than any password that can be set (refused before any hashing work).
    pub fn is_too_long(&self) -> bool {
        self.0.chars().count() > MAX_CHARS
    }

    /// Why this password cannot be set, if it cannot: what the client must change.
    pub fn problem(&self) -> Option<String> {
        let length = self.0.chars().count();
        if !(MIN_CHARS..=MAX_CHARS).contains(&length) {
            return Some(format!(
                "must be {MIN_CHARS} to {MAX_CHARS} characters, got {length}"
            ));
        }
        if self.0.chars().any(char::is_control) {
            return Some("must not contain control characters".into());
        }
        None
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Password([redacted])")
    }
}

/// Failures of hashing (never a wrong password: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// argon2 refused its input or parameters.
    #[error("failed to hash a password: {0}")]
    Hash(String),
    /// The blocking task died (a panic inside argon2).
    #[error("failed to run a password hash on the blocking pool")]
    Task(#[from] tokio::task::JoinError),
    /// A stored hash is not a PHC string this build understands.
    #[error("failed to parse a stored password hash")]
    Corrupt,
}

/// Hashes and verifies passwords; cheap to clone.
#[derive(Clone)]
pub struct Passwords {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    dummy: Arc<OnceCell<String>>,
    hashes: Arc<AtomicU64>,
    verifications: Arc<AtomicU64>,
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}

impl Passwords {
    /// A hasher with the documented parameters, running at most one hash per core at a time.
    pub fn new() -> Self {
        let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)
            .expect("the documented argon2 parameters are valid");
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Passwords {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            permits: Arc::new(Semaphore::new(cores)),
            dummy: Arc::new(OnceCell::new()),
            hashes: Arc::new(AtomicU64::new(0)),
            verifications: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The PHC string of `password` with a fresh random salt.
    pub async fn hash(&self, password: &Password) -> Result<String, PasswordError> {
        let argon2 = self.argon2.clone();
        let password = password.0.clone();
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let hashed = tokio::task::spawn_blocking(move || {
            let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
                .map_err(|error| PasswordError::Hash(error.to_string()))?;
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|error| PasswordError::Hash(error.to_string()))
        })
        .await?;
        self.hashes.fetch_add(1, Ordering::Relaxed);
        hashed
    }

    /// Whether `password` matches `stored`. Without a stored hash (no such account, or no
    /// password set) the password is checked against a dummy hash and the answer is `false`, so
    /// every failure costs one full verification.
    pub async fn verify(
        &self,
        password: &Password,
        stored: Option<&str>,
    ) -> Result<bool, PasswordError> {
        let (stored, real) = match stored {
            Some(stored) => (stored.to_string(), true),
            None => (self.dummy_hash().await?.clone(), false),
        };
        let argon2 = self.argon2.clone();
        let password = password.0.clone();
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let matched = tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&stored).map_err(|_| PasswordError::Corrupt)?;
            Ok::<_, PasswordError>(argon2.verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await??;
        self.verifications.fetch_add(1, Ordering::Relaxed);
        Ok(matched && real)
    }

    /// Password hashes computed so far (how tests see that a sign-up for a registered address
    /// costs none).
    pub fn hashes(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    /// Full argon2 verifications run so far, real or against the dummy hash (how tests see that
    /// every failed sign-in does the same work).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    async fn dummy_hash(&self) -> Result<&String, PasswordError> {
        self.dummy
            .get_or_try_init(|| async {
                let filler = hex::encode(rand::random::<[u8; 16]>());
                self.hash(&Password(filler)).await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_debug_output() {
        let password = Password::new("correct horse battery staple");
        assert!(!format!("{password:?}").contains("horse"));
    }

    #[test]
    fn length_is_counted_in_characters_and_bounded_both_ways() {
        assert!(Password::new("short").problem().is_some());
        assert!(Password::new("é".repeat(MIN_CHARS)).problem().is_none());
        assert!(Password::new("x".repeat(MAX_CHARS)).problem().is_none());
        assert!(Password::new("x".repeat(MAX_CHARS + 1)).problem().is_some());
        assert!(
            Password::new("twelve chars\n long")
                .problem()
                .is_some_and(|reason| reason.contains("control"))
        );
    }

    #[tokio::test]
    async fn a_hash_is_argon2id_with_the_documented_parameters_and_verifies_only_its_password() {
        let passwords = Passwords::new();
        let password = Password::new("correct horse battery staple");
        let hash = passwords.hash(&password).await.expect("hashes");
        assert!(
            hash.starts_with(&format!(
                "$argon2id$v=19$m={MEMORY_KIB},t={ITERATIONS},p={PARALLELISM}$"
            )),
            "{hash}"
        );
        assert!(!hash.contains("horse"));
        assert!(passwords.verify(&password, Some(&hash)).await.expect("ok"));
        let wrong = Password::new("incorrect horse battery staple");
        assert!(!passwords.verify(&wrong, Some(&hash)).await.expect("ok"));
        // Two hashes of one password differ (random salt).
        assert_ne!(passwords.hash(&password).await.expect("hashes"), hash);
    }

    #[tokio::test]
    async fn without_a_stored_hash_verification_fails_after_the_same_work() {
        let passwords = Passwords::new();
        let password = Password::new("correct horse battery staple");
        assert!(!passwords.verify(&password, None).await.expect("ok"));
        let dummy = passwords.dummy_hash().await.expect("dummy").clone();
        assert!(dummy.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(matches!(
            passwords.verify(&password, Some("not a hash")).await,
            Err(PasswordError::Corrupt)
        ));
    }
}
