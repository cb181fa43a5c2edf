//! Sessions kept in Redis with a sliding TTL, so any pod can serve any request, and an absolute
//! lifetime: a session is refused once that long has passed since its sign-in, however often it
//! was used (the sliding TTL alone would let a stolen cookie live for good). The sign-in time is
//! the `created_at` of the session's data, written by the pod that opened it and compared with
//! the clock of the pod that reads it, so clock skew between pods moves the deadline by the skew
//! (seconds, against a lifetime of hours). Data without a readable sign-in time is refused too.
//!
//! Ids are 256 random bits from a CSPRNG, new on every sign-in (no fixation). Redis stores only a
//! keyed hash of the id (`SHA-256(secret || id)`), so a dump of Redis yields no usable cookie.
//!
//! Every user has a session generation (`session-generation:<user id>`, 0 until first set), and a
//! session carries the generation it was opened under: a password change bumps it, which voids
//! every session of that user at once, wherever it is used.
//!
//! The cookie is a signed token, `v3.<id>.<user>.<generation>.<signed-in unix ms>.<mac>`, the
//! MAC an HMAC-SHA256 of the rest under the session secret. With Redis up, a session is what
//! Redis holds, as above: the token only adds that a forged cookie never reaches Redis. With
//! Redis away, a request is signed in on the token alone ([`Claims`], within its absolute
//! lifetime), so signed-in users keep working through a Redis outage. What that costs, plainly:
//! while Redis is away a session that was signed out or voided by a password change, or idle past
//! its sliding TTL, is still honoured on its signature until Redis answers again (then it is
//! refused at once); a forged, altered or expired token is refused always. Cookies of the
//! previous form (the bare 64-hex id) keep working with Redis only.
//!
//! With Redis replicated, opening a session and ending one (a sign-out, or a password change
//! voiding them all) waits up to [`REPLICA_WAIT`] for the configured number of replicas to hold
//! the write (`WAIT`, on a connection kept for such writes), so the session, or its end,
//! survives a failover right after the answer. When they do not confirm in time (a replica down
//! or far behind) the sign-in or sign-out succeeds all the same, and for [`SKIP_WAITS_FOR`]
//! after that no session write waits, so sign-ins are not slowed while a replica is away. What
//! that costs, plainly: a failover during a replica outage can lose the sessions opened in it
//! (their users sign in again) and the sign-outs and password changes made in it (those
//! sessions work again until their TTL or lifetime ends).
//!
//! Rotation. The store holds the session secret and, optionally, the one before it
//! ([`scaled_contract::ENV_SESSION_SECRET_PREVIOUS`]). Every new token is signed with the
//! current secret and its session stored under the current secret's key; a token is accepted
//! when its MAC holds under either (each comparison constant-time), and its session is looked up
//! under the key of the secret that signed it, so sessions opened before a rotation go on, with
//! Redis up and on the token alone with Redis away. Ending a session by id (a sign-out, a
//! sign-in or password change replacing it, its lifetime running out) deletes it under every
//! configured key: an id names one session whichever secret stored it. To rotate: set the
//! previous secret to the current value and the current one to a new value, and roll the pods;
//! once the absolute lifetime (`sessions.maxLifetimeSeconds`) has passed since the roll
//! finished, remove the previous secret and roll again. Every session under the old secret was
//! signed in before the rotation, so by then none is left. Once the previous secret is removed,
//! its tokens are refused like forged ones, even with Redis holding their sessions. What it
//! costs, plainly: while the roll is under way, pods still on the old secret alone refuse the
//! tokens of sign-ins on pods already rotated (401, until the request reaches a new pod; the
//! session itself is unharmed); two rolls avoid that, the first adding the new value as the
//! previous secret (accepted, not used), the second swapping the two. While both are set, a
//! token that verifies under neither costs two MACs, and the previous secret forges tokens as
//! well as the current one does while Redis is away: a secret that leaked is retired by
//! dropping it at once (every session under it ends, its users sign in again), not by keeping it
//! as the previous one. A cookie of the bare-id form is looked up under the current secret's key
//! only, so it does not survive a rotation. Password-set tokens, keyed with the same secret, are
//! redeemed under either ([`crate::password_tokens`]). Read-your-writes tokens, signed with it
//! too, are checked under the current one only: one from before the rotation is ignored, which
//! makes a read at most as stale as it would be without the token, for the seconds it lives.
//!
//! Sessions are not moved to the current secret when they are used, only when they are
//! replaced (a sign-in or a password change, through `replaces`, issues a token under the
//! current secret and deletes the old record). Moving them on any request would need a
//! `Set-Cookie` on whatever response the request gets, while the session is read by an
//! extractor that cannot touch the response, and `replaces` deletes the old record in the same
//! round trip, which would sign out a browser's concurrent requests still carrying the old
//! cookie (a copy under the same id, signed anew, would not). What moving them would buy: the
//! previous secret could go one sliding TTL after the roll instead of one absolute lifetime,
//! at the price of refusing the old tokens of sessions used only while Redis was away.
//!
//! Sessions are opened only by a sign-in with a password, and by the hidden `open-sessions`
//! benchmark command, which needs the session secret and the store itself (whoever has both can
//! forge sessions anyway). Versions before that opened a session for any user id without a
//! credential; those sessions were stored under `session:<hash>`, and this store reads and writes
//! `session:v2:<hash>` only, so none of them is honoured.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use scaled_contract::Secret;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::redis_client::{RedisCallError, RedisClient};

/// How long a session write waits for its replicas: a healthy replica answers within a round
/// trip; this is spent only while one is down or far behind.
pub const REPLICA_WAIT: Duration = Duration::from_millis(100);
/// After a wait that was not confirmed, how long session writes do not wait at all: `WAIT`
/// blocks its connection, and sign-ins waiting in turn would queue behind each other.
pub const SKIP_WAITS_FOR: Duration = Duration::from_secs(1);

/// Failures of the session store.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Redis could not be used.
    #[error("failed to reach the session store")]
    Unavailable(#[from] RedisCallError),
    /// A stored session is not valid JSON (written by something else).
    #[error("failed to decode a stored session")]
    Corrupt(#[source] serde_json::Error),
}

/// The session store.
#[derive(Clone)]
pub struct SessionStore {
    redis: RedisClient,
    secret: Secret,
    /// The secret before the last rotation: verifies, never signs.
    previous: Option<Secret>,
    ttl: Duration,
    lifetime: Duration,
    budget: Duration,
    /// When a wait for replicas last came back unconfirmed.
    unconfirmed_at: Arc<Mutex<Option<Instant>>>,
}

impl SessionStore {
    /// A store whose sessions live `ttl` since their last use and at most `lifetime` since their
    /// sign-in, signing with `secret` and still accepting tokens of `previous` (see the module
    /// docs on rotation).
    pub fn new(
        redis: RedisClient,
        secret: Secret,
        previous: Option<Secret>,
        ttl: Duration,
        lifetime: Duration,
        budget: Duration,
    ) -> Self {
        SessionStore {
            redis,
            secret,
            previous,
            ttl,
            lifetime,
            budget,
            unconfirmed_at: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `pipeline` (a session write) on the connection kept for such writes and waits for
    /// the replicas (see the module docs); the write's own failure is the caller's error, an
    /// unconfirmed wait is not.
    async fn write_durably<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        pipeline: &redis::Pipeline,
    ) -> Result<T, SessionError> {
        let mut connection = self.redis.durable_connection();
        let written: T = self
            .redis
            .timed(
                operation,
                self.budget,
                pipeline.query_async(&mut connection),
            )
            .await?;
        if self.redis.confirm_replicas() == 0 {
            return Ok(written);
        }
        let skip = self
            .unconfirmed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < SKIP_WAITS_FOR);
        if skip {
            self.redis.count_replication_wait(operation, "skipped");
            return Ok(written);
        }
        let confirmed = self
            .redis
            .wait_for_replicas(operation, &mut connection, REPLICA_WAIT)
            .await;
        if !matches!(confirmed, Ok(true)) {
            tracing::warn!(
                operation,
                "Redis replicas did not confirm a session write; a failover now would lose it"
            );
            *self
                .unconfirmed_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        }
        Ok(written)
    }

    /// Sliding lifetime: how long an unused session lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Absolute lifetime since sign-in.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Seconds until the session of `data` ends if it is not used again: the sliding TTL, or
    /// what is left of its absolute lifetime if that is less.
    pub fn expires_in(&self, data: &Value) -> u64 {
        let left = lifetime_left(data, self.lifetime, Utc::now()).unwrap_or(Duration::ZERO);
        self.ttl.min(left).as_secs()
    }

    /// Stores `data` under a fresh id and returns the cookie value for it (a signed token);
    /// `replaces` (the cookie value of the caller's previous session, if any) is deleted in the
    /// same round trip.
    pub async fn create(
        &self,
        data: &Value,
        replaces: Option<&str>,
    ) -> Result<String, SessionError> {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let token = self.token(&id, data);
        let replaces = replaces
            .and_then(|value| self.identify(value))
            .map(|cookie| cookie.id);
        let mut pipeline = redis::pipe();
        let expiry = self.expires_in(data).max(1);
        pipeline
            .set_ex(self.key(&id), data.to_string(), expiry)
            .ignore();
        if let Some(old) = &replaces {
            pipeline.del(self.keys(old)).ignore();
        }
        self.write_durably::<()>("session_create", &pipeline)
            .await?;
        Ok(token)
    }

    /// The cookie value of session `id` with `data`: its claims, signed.
    fn token(&self, id: &str, data: &Value) -> String {
        let claims = format!(
            "{TOKEN_VERSION}.{id}.{}.{}.{}",
            user_of(data).unwrap_or(0),
            generation_of(data),
            signed_in_at(data).map_or(0, |at| at.timestamp_millis()),
        );
        let mac = hex::encode(self.secret.mac(claims.as_bytes()));
        format!("{claims}.{mac}")
    }

    /// The session a cookie value names, with its verified claims; `None` when the value has
    /// neither form this store issues, or its signature does not match (forged or altered).
    pub fn identify(&self, value: &str) -> Option<SessionCookie> {
        if is_bare_id(value) {
            return Some(SessionCookie {
                id: value.to_string(),
                claims: None,
                signed_with: SignedWith::Current,
            });
        }
        let (signed, mac) = value.rsplit_once('.')?;
        let signed_with = self.verify(signed, mac)?;
        let mut parts = signed.split('.');
        let (Some(TOKEN_VERSION), Some(id), Some(user), Some(generation), Some(at), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        if !is_bare_id(id) {
            return None;
        }
        let claims = Claims {
            user_id: user.parse().ok().filter(|user: &i64| *user > 0)?,
            generation: generation.parse().ok()?,
            signed_in_at: DateTime::from_timestamp_millis(at.parse().ok()?)?,
        };
        Some(SessionCookie {
            id: id.to_string(),
            claims: Some(claims),
            signed_with,
        })
    }

    /// The configured secret under which `mac` signs `signed`, if any. Each comparison takes the
    /// same time however much of the MAC is right; whether the current secret matched may show
    /// in the time taken, which says nothing about either secret.
    fn verify(&self, signed: &str, mac: &str) -> Option<SignedWith> {
        let holds = |secret: &Secret| {
            let expected = hex::encode(secret.mac(signed.as_bytes()));
            constant_time_eq(mac.as_bytes(), expected.as_bytes())
        };
        if holds(&self.secret) {
            return Some(SignedWith::Current);
        }
        self.previous
            .as_ref()
            .filter(|previous| holds(previous))
            .map(|_| SignedWith::Previous)
    }

    /// Whether a session signed in at `signed_in_at` is still within its absolute lifetime.
    pub fn within_lifetime(&self, signed_in_at: DateTime<Utc>) -> bool {
        let data = new_data(1, 0, signed_in_at);
        lifetime_left(&data, self.lifetime, Utc::now()).is_some()
    }

    /// Opens a session of `user_id` under the user's current generation (what a sign-in does once
    /// the password matched) and returns its id and data; `replaces` is ended as in
    /// [`SessionStore::create`].
    pub async fn open(
        &self,
        user_id: i64,
        replaces: Option<&str>,
    ) -> Result<(String, Value), SessionError> {
        let generation = self.generation(user_id).await?;
        let data = new_data(user_id, generation, Utc::now());
        let id = self.create(&data, replaces).await?;
        Ok((id, data))
    }

    /// The current session generation of `user_id`.
    pub async fn generation(&self, user_id: i64) -> Result<u64, SessionError> {
        let mut connection = self.redis.connection();
        let generation: Option<u64> = self
            .redis
            .timed(
                "session_generation",
                self.budget,
                connection.get(generation_key(user_id)),
            )
            .await?;
        Ok(generation.unwrap_or(0))
    }

    /// Voids every session of `user_id` (a password change) and returns the new generation. The
    /// key has no TTL: it must outlive every session it voids (and `volatile-*` eviction never
    /// picks it).
    pub async fn end_all(&self, user_id: i64) -> Result<u64, SessionError> {
        let mut pipeline = redis::pipe();
        pipeline.incr(generation_key(user_id), 1);
        let (generation,): (u64,) = self.write_durably("session_revoke", &pipeline).await?;
        Ok(generation)
    }

    /// The data of the session `cookie` names, found under the key of the secret that signed it,
    /// extending its sliding lifetime; `None` if unknown, idle too long, or past its absolute
    /// lifetime (then it is deleted, too).
    pub async fn load(&self, cookie: &SessionCookie) -> Result<Option<Value>, SessionError> {
        let Some(key) = self.key_of(cookie) else {
            // Signed with a previous secret this store no longer has (built by hand).
            return Ok(None);
        };
        let mut connection = self.redis.connection();
        let raw: Option<String> = self
            .redis
            .timed(
                "session_load",
                self.budget,
                connection.get_ex(key, redis::Expiry::EX(self.ttl.as_secs())),
            )
            .await?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let data: Value = serde_json::from_str(&raw).map_err(SessionError::Corrupt)?;
        if lifetime_left(&data, self.lifetime, Utc::now()).is_some() {
            return Ok(Some(data));
        }
        // Refused either way; deleting it only saves the memory until its TTL would have.
        if let Err(error) = self.delete(&cookie.id).await {
            tracing::warn!(%error, "a session past its lifetime stays stored until its TTL");
        }
        Ok(None)
    }

    /// Deletes the session, under every configured secret's key; true if it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, SessionError> {
        let mut pipeline = redis::pipe();
        pipeline.del(self.keys(id));
        let (removed,): (i64,) = self.write_durably("session_revoke", &pipeline).await?;
        Ok(removed > 0)
    }

    /// Where a new session `id` is stored: under the current secret.
    fn key(&self, id: &str) -> String {
        key_under(&self.secret, id)
    }

    /// Where the session `cookie` names is stored: under the secret that signed it.
    fn key_of(&self, cookie: &SessionCookie) -> Option<String> {
        match cookie.signed_with {
            SignedWith::Current => Some(self.key(&cookie.id)),
            SignedWith::Previous => self
                .previous
                .as_ref()
                .map(|previous| key_under(previous, &cookie.id)),
        }
    }

    /// Every key session `id` may be stored under (one per configured secret).
    fn keys(&self, id: &str) -> Vec<String> {
        std::iter::once(&self.secret)
            .chain(&self.previous)
            .map(|secret| key_under(secret, id))
            .collect()
    }
}

/// `session:v2:<SHA-256(secret || id)>`.
fn key_under(secret: &Secret, id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(secret.expose().as_bytes());
    hasher.update(id.as_bytes());
    format!("session:v2:{}", hex::encode(hasher.finalize()))
}

/// First field of a session token: its format.
const TOKEN_VERSION: &str = "v3";

/// A session cookie as [`SessionStore::identify`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionCookie {
    /// The session id (what Redis keys the session by, hashed).
    pub id: String,
    /// What the signed token says; `None` for a cookie of the previous form (a bare id).
    pub claims: Option<Claims>,
    /// The secret its token verified under, and so the key its session is stored under
    /// ([`SignedWith::Current`] for a bare id).
    pub signed_with: SignedWith,
}

/// Which of the configured session secrets a token verified under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignedWith {
    /// The current secret, which signs every new token.
    Current,
    /// The secret before the last rotation (a session opened before it).
    Previous,
}

/// What a session token says, under the session secret's signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The signed-in user.
    pub user_id: i64,
    /// The session generation it was opened under.
    pub generation: u64,
    /// When it was signed in (to the millisecond).
    pub signed_in_at: DateTime<Utc>,
}

/// Compares without stopping at the first difference, so the time taken says nothing of how much
/// of a guessed MAC was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn is_bare_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|byte| byte.is_ascii_hexdigit())
}

fn generation_key(user_id: i64) -> String {
    format!("session-generation:{user_id}")
}

/// The data of a new session of `user_id`, opened under `generation`, whose absolute lifetime
/// counts from `signed_in_at` (now for a sign-in; the replaced session's for a rotation, so a
/// new id never means a longer life).
pub fn new_data(user_id: i64, generation: u64, signed_in_at: DateTime<Utc>) -> Value {
    serde_json::json!({
        "user_id": user_id,
        "generation": generation,
        "created_at": signed_in_at,
    })
}

/// What is left at `now` of the absolute `lifetime` of the session of `data`; `None` once it is
/// over, or if the data has no readable sign-in time.
fn lifetime_left(data: &Value, lifetime: Duration, now: DateTime<Utc>) -> Option<Duration> {
    let signed_in_at = signed_in_at(data)?;
    let Some(deadline) = chrono::TimeDelta::from_std(lifetime)
        .ok()
        .and_then(|lifetime| signed_in_at.checked_add_signed(lifetime))
    else {
        // A lifetime beyond the calendar: none.
        return Some(lifetime);
    };
    (deadline - now)
        .to_std()
        .ok()
        .filter(|left| !left.is_zero())
}

/// When the session of `data` was signed in (its `created_at`).
pub fn signed_in_at(data: &Value) -> Option<DateTime<Utc>> {
    data.get("created_at")
        .and_then(Value::as_str)
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&Utc))
}

/// The generation a session's data was opened under.
pub fn generation_of(data: &Value) -> u64 {
    data.get("generation").and_then(Value::as_u64).unwrap_or(0)
}

/// The signed-in user of a session's data.
pub fn user_of(data: &Value) -> Option<i64> {
    data.get("user_id")
        .and_then(Value::as_i64)
        .filter(|id| *id > 0)
}

/// `name=id`: the session cookie as a client sends it back in `Cookie` (and the start of the
/// `Set-Cookie` value that hands it out).
pub fn cookie_pair(cookie_name: &str, id: &str) -> String {
    format!("{cookie_name}={id}")
}

/// Whether a cookie value has the shape of one this store issues: a token (at most 200
/// characters, its fields separated by dots) or a bare id (so junk never reaches Redis).
pub fn is_well_formed(value: &str) -> bool {
    is_bare_id(value)
        || (value.len() <= 200
            && value.starts_with("v3.")
            && value
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_over_once_its_lifetime_since_sign_in_has_passed() {
        let signed_in = Utc::now() - chrono::TimeDelta::hours(2);
        let data = new_data(7, 0, signed_in);
        let hour = Duration::from_secs(3600);
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(lifetime_left(&data, hour, Utc::now()), None);
        let left = lifetime_left(&data, day, Utc::now()).expect("still live");
        assert!(left <= day - 2 * hour && left > day - 3 * hour, "{left:?}");
        assert_eq!(
            lifetime_left(
                &data,
                Duration::from_secs(2 * 3600),
                signed_in + chrono::TimeDelta::hours(2)
            ),
            None,
            "the deadline itself is over"
        );
    }

    #[test]
    fn data_without_a_readable_sign_in_time_has_no_lifetime_left() {
        let day = Duration::from_secs(24 * 3600);
        for data in [
            serde_json::json!({ "user_id": 7, "generation": 0 }),
            serde_json::json!({ "user_id": 7, "created_at": "yesterday" }),
            serde_json::json!({ "user_id": 7, "created_at": 1_700_000_000 }),
        ] {
            assert_eq!(lifetime_left(&data, day, Utc::now()), None, "{data}");
        }
    }

    fn store(secret: &str) -> SessionStore {
        rotated(secret, None)
    }

    /// A store signing with `secret` and still accepting `previous`.
    fn rotated(secret: &str, previous: Option<&str>) -> SessionStore {
        let settings = scaled_contract::RedisSettings {
            url: "redis://127.0.0.1:1/0".into(),
            password_required: false,
            confirm_replicas: 0,
        };
        let redis =
            RedisClient::new(&settings, None, crate::metrics::Metrics::new()).expect("a valid URL");
        let day = Duration::from_secs(24 * 3600);
        SessionStore::new(
            redis,
            Secret::new(secret),
            previous.map(Secret::new),
            day,
            day,
            Duration::from_millis(50),
        )
    }

    #[tokio::test]
    async fn a_token_names_its_session_and_claims_and_any_change_to_it_is_refused() {
        let sessions = store("one secret");
        let id = "ab".repeat(32);
        let signed_in = DateTime::from_timestamp_millis(1_800_000_000_123).expect("valid");
        let token = sessions.token(&id, &new_data(7, 3, signed_in));
        assert!(is_well_formed(&token), "{token}");
        let cookie = sessions.identify(&token).expect("verifies");
        assert_eq!(cookie.id, id);
        assert_eq!(
            cookie.claims,
            Some(Claims {
                user_id: 7,
                generation: 3,
                signed_in_at: signed_in
            })
        );
        // Another user, another generation, a later sign-in, another id: each breaks the MAC.
        for forged in [
            token.replacen(".7.", ".8.", 1),
            token.replacen(".3.", ".4.", 1),
            token.replacen("1800000000123", "1900000000123", 1),
            token.replacen("abab", "abac", 1),
            {
                // The MAC's last digit, changed.
                let last = if token.ends_with('0') { '1' } else { '0' };
                format!("{}{last}", &token[..token.len() - 1])
            },
        ] {
            assert_ne!(forged, token);
            assert_eq!(sessions.identify(&forged), None, "{forged}");
        }
        // Signed with another secret.
        assert_eq!(store("another secret").identify(&token), None);
        // The previous form still names a session, without claims.
        assert_eq!(
            sessions.identify(&id),
            Some(SessionCookie {
                id: id.clone(),
                claims: None,
                signed_with: SignedWith::Current,
            })
        );
        assert_eq!(sessions.identify("v3.junk"), None);
    }

    /// Tokens that differ from `token` in one place each: a claim, the id, the MAC.
    fn altered(token: &str) -> Vec<String> {
        let last = if token.ends_with('0') { '1' } else { '0' };
        let (signed, mac) = token.rsplit_once('.').expect("a MAC");
        vec![
            token.replacen(".7.", ".8.", 1),
            token.replacen(".3.", ".4.", 1),
            format!("{}{last}", &token[..token.len() - 1]),
            // A MAC one digit short, and one digit long.
            format!("{signed}.{}", &mac[..mac.len() - 1]),
            format!("{token}0"),
        ]
    }

    #[tokio::test]
    async fn after_a_rotation_tokens_of_the_previous_secret_verify_and_name_its_key_and_new_ones_use_the_current()
     {
        let id = "cd".repeat(32);
        let data = new_data(7, 3, Utc::now());
        let before = store("old secret");
        let old_token = before.token(&id, &data);
        let after = rotated("new secret", Some("old secret"));

        let cookie = after
            .identify(&old_token)
            .expect("verifies under the previous secret");
        assert_eq!(cookie.id, id);
        assert_eq!(cookie.signed_with, SignedWith::Previous);
        assert_eq!(cookie.claims.as_ref().map(|claims| claims.user_id), Some(7));
        // Its session is where the store before the rotation put it.
        assert_eq!(after.key_of(&cookie), Some(before.key(&id)));
        assert_ne!(after.key(&id), before.key(&id));
        assert_eq!(after.keys(&id), vec![after.key(&id), before.key(&id)]);
        for forged in altered(&old_token) {
            assert_ne!(forged, old_token);
            assert_eq!(after.identify(&forged), None, "{forged}");
        }

        // New tokens are the current secret's: a store with it alone accepts them, one with the
        // previous alone does not.
        let new_token = after.token(&id, &data);
        assert_ne!(new_token, old_token);
        let current = store("new secret");
        let cookie = current.identify(&new_token).expect("verifies");
        assert_eq!(cookie.signed_with, SignedWith::Current);
        assert_eq!(current.key_of(&cookie), Some(after.key(&id)));
        assert_eq!(
            after.identify(&new_token).map(|cookie| cookie.signed_with),
            Some(SignedWith::Current)
        );
        assert_eq!(before.identify(&new_token), None);

        // Once the previous secret is removed, its tokens are refused however well-formed.
        assert!(is_well_formed(&old_token));
        assert_eq!(current.identify(&old_token), None);
        // A third secret is no previous one.
        assert_eq!(
            rotated("new secret", Some("another")).identify(&old_token),
            None
        );
        // A cookie claiming the previous secret names no key on a store without one.
        let claimed = SessionCookie {
            id: id.clone(),
            claims: None,
            signed_with: SignedWith::Previous,
        };
        assert_eq!(current.key_of(&claimed), None);
        assert_eq!(current.keys(&id), vec![current.key(&id)]);
    }

    #[test]
    fn the_mac_comparison_needs_every_byte_and_the_length_to_match() {
        let mac = b"0123456789abcdef";
        assert!(constant_time_eq(mac, mac));
        for index in [0, 7, 15] {
            let mut other = *mac;
            other[index] ^= 1;
            assert!(!constant_time_eq(mac, &other), "byte {index}");
        }
        assert!(!constant_time_eq(mac, &mac[..15]));
        assert!(!constant_time_eq(&mac[..15], mac));
        assert!(!constant_time_eq(b"", mac));
    }

    #[tokio::test]
    async fn an_expired_token_is_past_its_lifetime_whatever_redis_says() {
        let sessions = store("s");
        assert!(sessions.within_lifetime(Utc::now() - chrono::TimeDelta::hours(23)));
        assert!(!sessions.within_lifetime(Utc::now() - chrono::TimeDelta::hours(25)));
    }

    #[test]
    fn the_sign_in_time_survives_the_round_trip_through_the_stored_json() {
        let signed_in = Utc::now();
        let stored = new_data(7, 3, signed_in).to_string();
        let data: Value = serde_json::from_str(&stored).expect("json");
        assert_eq!(signed_in_at(&data), Some(signed_in));
        assert_eq!(generation_of(&data), 3);
        assert_eq!(user_of(&data), Some(7));
    }
}
