//! Read-through cache of users: L1 in process (moka, bounded, TTL), L2 in Redis, then Postgres.
//!
//! Correctness rules, each closing a race the naive cache-aside has:
//! - Single flight: concurrent misses of one key in a pod share one load (`try_get_with`).
//! - Generations: every user has a generation in Redis, the WAL position of its last write. A
//!   loader reads it before loading and stores into L2 only if it is unchanged (one Lua script),
//!   so a loader that read before a write cannot store the old value after it. It also reads
//!   only from a replica that has replayed that position, so it cannot load the old value from a
//!   lagging replica either.
//! - Epochs: every L1 entry remembers the invalidation epoch of its key at load start and is
//!   served only while the epoch is unchanged, which also covers a load still in flight when the
//!   invalidation arrived.
//! - Cross-pod: writers publish invalidations; while this pod is not subscribed (Redis down,
//!   reconnecting) nothing enters L1, and on (re)subscription L1 is cleared.
//! - Redis errors are misses, bounded by `cache.redisTimeoutMs`; they never fail a request.

mod epochs;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::body::Bytes;
use futures::StreamExt;
use redis::{AsyncCommands, Script};
use scaled_contract::CacheSettings;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::{
    db::{
        Cluster, DbError,
        users::{self, User},
    },
    metrics::Metrics,
    redis_client::RedisClient,
};
use epochs::{Epoch, Epochs};

/// Pub/sub channel of invalidations; messages are user ids.
pub const INVALIDATION_CHANNEL: &str = "cache:invalidate";
/// Generations outlive the values they guard by this much, so a value never outlives its
/// generation (a vanished generation reads as 0 and would match a value stored under 0).
const GENERATION_GRACE: Duration = Duration::from_secs(60);

/// Stores a value only if the generation is still the one the loader read.
const SET_IF_GENERATION: &str = r"
local current = redis.call('GET', KEYS[2]) or '0'
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if current ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
return 1
";

/// Raises the generation to the write's position, drops the value, and tells every pod.
const INVALIDATE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// A user ready to serve: the public JSON body and its ETag are computed once per load.
#[derive(Debug)]
pub struct CachedUser {
    /// The user (with the email: for its owner only).
    pub user: User,
    /// `serde_json` of the public representation ([`User::public`]).
    pub json: Bytes,
    /// Weak ETag (weak, because compression changes the bytes on the wire) of `json` and the
    /// user's `updated_at`, so it changes with every edit, even one (an email change) that leaves
    /// the public body as it was.
    pub etag: String,
    epoch: Epoch,
}

/// What L2 holds for a user.
#[derive(Serialize, Deserialize)]
struct L2Value {
    /// Generation the value was loaded under.
    g: u64,
    /// The user.
    u: User,
}

/// Why a load produced no value for L1.
#[derive(Clone, Debug)]
enum LoadError {
    /// The user does not exist (not cached: creating it must not wait for a TTL).
    Missing,
    /// Loaded, but without proof of freshness; serve it once, do not keep it.
    Uncacheable(Arc<CachedUser>),
    /// The database failed.
    Db(DbError),
}

/// The user cache.
pub struct UserCache {
    l1: moka::future::Cache<i64, Arc<CachedUser>>,
    epochs: Epochs,
    subscribed: AtomicBool,
    redis: RedisClient,
    cluster: Arc<Cluster>,
    settings: CacheSettings,
    metrics: Metrics,
    set_if_generation: Script,
    invalidate: Script,
}

impl UserCache {
    /// An empty cache.
    pub fn new(
        settings: &CacheSettings,
        redis: RedisClient,
        cluster: Arc<Cluster>,
        metrics: Metrics,
    ) -> Self {
        UserCache {
            l1: moka::future::Cache::builder()
                .max_capacity(settings.l1_max_entries)
                .time_to_live(Duration::from_secs(settings.l1_ttl_seconds))
                .build(),
            epochs: Epochs::new(),
            subscribed: AtomicBool::new(false),
            redis,
            cluster,
            settings: settings.clone(),
            metrics,
            set_if_generation: Script::new(SET_IF_GENERATION),
            invalidate: Script::new(INVALIDATE),
        }
    }

    /// A user by id. `read_after` is the caller's own last write position on the user's shard,
    /// if it has one: such a caller bypasses L1 (which another pod's write may not have reached
    /// yet) and reads from a source at least that fresh.
    pub async fn get(
        &self,
        id: i64,
        read_after: Option<u64>,
    ) -> Result<Option<Arc<CachedUser>>, DbError> {
        if read_after.is_none() {
            if let Some(entry) = self.l1.get(&id).await {
                if self.epochs.current(id) == entry.epoch {
                    self.metrics.cache.l1_hit.inc();
                    return Ok(Some(entry));
                }
                self.l1.invalidate(&id).await;
            }
            self.metrics.cache.l1_miss.inc();
        }
        // Boxed: the miss path holds the loader's Redis and Postgres futures, and without the box
        // every read's future (an L1 hit's too) would be that large and moved that often.
        Box::pin(self.get_uncached(id, read_after)).await
    }

    async fn get_uncached(
        &self,
        id: i64,
        read_after: Option<u64>,
    ) -> Result<Option<Arc<CachedUser>>, DbError> {
        if read_after.is_none() {
            let loaded = self.l1.try_get_with(id, self.load(id, 0)).await;
            match loaded {
                // An entry whose epoch moved while it loaded: fall through to a direct load.
                Ok(entry) if self.epochs.current(id) != entry.epoch => {
                    self.l1.invalidate(&id).await
                }
                Ok(entry) => return Ok(Some(entry)),
                Err(error) => return unpack((*error).clone()),
            }
        }
        match self.load(id, read_after.unwrap_or(0)).await {
            Ok(entry) => Ok(Some(entry)),
            Err(error) => unpack(error),
        }
    }

    async fn load(&self, id: i64, read_after: u64) -> Result<Arc<CachedUser>, LoadError> {
        // Both taken before anything is read, so anything that happens during the load is seen.
        let epoch = self.epochs.current(id);
        let mut cacheable = self.subscribed.load(Ordering::Acquire);
        let budget = Duration::from_millis(self.settings.redis_timeout_ms);
        let mut connection = self.redis.connection();
        let keys = [value_key(id), generation_key(id)];
        let l2: Result<(Option<Vec<u8>>, Option<u64>), _> = self
            .redis
            .timed("cache_get", budget, connection.mget(&keys))
            .await;
        let generation = match l2 {
            Ok((value, generation)) => {
                let generation = generation.unwrap_or(0);
                match value.and_then(|raw| serde_json::from_slice::<L2Value>(&raw).ok()) {
                    Some(value) if value.g == generation => {
                        self.metrics.cache.l2_hit.inc();
                        return finish(value.u, epoch, cacheable);
                    }
                    _ => self.metrics.cache.l2_miss.inc(),
                }
                Some(generation)
            }
            Err(error) => {
                tracing::debug!(%error, "L2 unavailable; reading the database");
                self.metrics.cache.l2_error.inc();
                cacheable = false;
                None
            }
        };
        let min_lsn = generation.unwrap_or(0).max(read_after);
        let user = users::find(&self.cluster, id, min_lsn)
            .await
            .map_err(LoadError::Db)?;
        let Some(user) = user else {
            return Err(LoadError::Missing);
        };
        if let Some(generation) = generation {
            self.store_l2(&user, generation, budget).await;
        }
        finish(user, epoch, cacheable)
    }

    async fn store_l2(&self, user: &User, generation: u64, budget: Duration) {
        let value = match serde_json::to_vec(&L2Value {
            g: generation,
            u: user.clone(),
        }) {
            Ok(value) => value,
            Err(error) => {
                tracing::error!(%error, "failed to serialise a user for L2");
                return;
            }
        };
        let ttl_ms = self.settings.default_ttl_seconds.saturating_mul(1000);
        let mut connection = self.redis.connection();
        let mut invocation = self.set_if_generation.key(value_key(user.id));
        invocation
            .key(generation_key(user.id))
            .arg(generation)
            .arg(value)
            .arg(ttl_ms)
            .arg(ttl_ms + GENERATION_GRACE.as_millis() as u64);
        let stored: Result<i64, _> = self
            .redis
            .timed(
                "cache_set",
                budget,
                invocation.invoke_async(&mut connection),
            )
            .await;
        if let Err(error) = stored {
            tracing::debug!(%error, "L2 store skipped");
        }
    }

    /// Called after a write to user `id` committed at WAL position `lsn`: drops this pod's
    /// entry, then raises the generation, deletes the L2 value and tells the other pods.
    /// If Redis is unreachable the outbox row written with the change repeats this later.
    pub async fn invalidate_after_write(&self, id: i64, lsn: u64) {
        self.invalidate_local(id).await;
        if let Err(error) = self.invalidate_shared(id, lsn).await {
            tracing::warn!(%error, user = id, "cache invalidation deferred to the outbox relay");
        }
    }

    /// The Redis half of an invalidation (also run by the outbox relay).
    pub async fn invalidate_shared(
        &self,
        id: i64,
        lsn: u64,
    ) -> Result<(), crate::redis_client::RedisCallError> {
        let budget = Duration::from_millis(self.settings.redis_timeout_ms.max(100));
        let generation_ttl = self.settings.default_ttl_seconds.saturating_mul(1000)
            + GENERATION_GRACE.as_millis() as u64;
        let mut connection = self.redis.connection();
        let mut invocation = self.invalidate.key(generation_key(id));
        invocation
            .key(value_key(id))
            .arg(lsn)
            .arg(generation_ttl)
            .arg(INVALIDATION_CHANNEL)
            .arg(id);
        self.redis
            .timed(
                "cache_invalidate",
                budget,
                invocation.invoke_async::<i64>(&mut connection),
            )
            .await
            .map(|_| ())
    }

    /// Whether this pod hears invalidations now (only then does anything enter L1).
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Drops this pod's entry for `id` (a write here or an invalidation message).
    pub async fn invalidate_local(&self, id: i64) {
        self.epochs.bump(id);
        self.l1.invalidate(&id).await;
    }

    fn invalidate_all_local(&self) {
        self.epochs.bump_all();
        self.l1.invalidate_all();
    }

    /// Follows the invalidation channel until `shutdown`, reconnecting as needed.
    pub async fn listen_for_invalidations(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            match self.subscribe().await {
                Ok(pubsub) => {
                    // Messages published while unsubscribed are lost: start from empty.
                    self.invalidate_all_local();
                    self.subscribed.store(true, Ordering::Release);
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            message = messages.next() => match message {
                                Some(message) => match message.get_payload::<i64>() {
                                    Ok(id) => self.invalidate_local(id).await,
                                    Err(error) => tracing::warn!(%error, "ignoring a malformed invalidation"),
                                },
                                None => break,
                            },
                        }
                    }
                    self.subscribed.store(false, Ordering::Release);
                    self.invalidate_all_local();
                    tracing::warn!("invalidation subscription lost; L1 disabled until it is back");
                }
                Err(error) => tracing::debug!(%error, "cannot subscribe to invalidations yet"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSub, redis::RedisError> {
        let mut pubsub = self.redis.client().get_async_pubsub().await?;
        pubsub.subscribe(INVALIDATION_CHANNEL).await?;
        Ok(pubsub)
    }
}

fn value_key(id: i64) -> String {
    format!("user:{id}")
}

fn generation_key(id: i64) -> String {
    format!("user:{id}:gen")
}

fn finish(user: User, epoch: Epoch, cacheable: bool) -> Result<Arc<CachedUser>, LoadError> {
    let json = Bytes::from(serde_json::to_vec(&user.public()).expect("a User always serialises"));
    let mut hasher = Sha256::new();
    hasher.update(&json);
    hasher.update(user.updated_at.to_rfc3339().as_bytes());
    let digest = hasher.finalize();
    let entry = Arc::new(CachedUser {
        etag: format!("W/\"{}\"", hex::encode(&digest[..16])),
        json,
        user,
        epoch,
    });
    if cacheable {
        Ok(entry)
    } else {
        Err(LoadError::Uncacheable(entry))
    }
}

fn unpack(error: LoadError) -> Result<Option<Arc<CachedUser>>, DbError> {
    match error {
        LoadError::Missing => Ok(None),
        LoadError::Uncacheable(entry) => Ok(Some(entry)),
        LoadError::Db(error) => Err(error),
    }
}
