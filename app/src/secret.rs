//! The wrapper that keeps a password or key out of logs: [`Secret`].
//!
//! It is a leaf, importing nothing of the crate, so that the low-level clients (Postgres, Redis)
//! and the settings can all hold secrets without the clients depending on the settings.

use std::fmt;

/// A value that must not be logged: a `{:?}` of it (in a log line or a panic message) prints
/// `Secret([redacted])`.
#[derive(Clone)]
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

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2");
    }
}
