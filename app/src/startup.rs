//! Wiring for the three modes: build pools, clients and routers from [`Settings`], run until the
//! shutdown token fires, then drain (HTTP requests in flight finish; workers finish the message
//! in hand).

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    cache::UserCache,
    config::{ConfigError, Settings, load_runtime_config},
    db::{self, Cluster, DbError},
    http::{self, AppState, MetricsSources, Readiness, Services},
    metrics::Metrics,
    password_tokens::PasswordTokens,
    passwords::Passwords,
    ratelimit::{AttemptLimiter, RateLimiter},
    redis_client::{RedisCallError, RedisClient},
    relay::Relay,
    sessions::{SessionError, SessionStore},
    worker::{self, FaultInjection},
};

/// How often the config file is re-read for shard-map and rate-limit changes.
const CONFIG_POLL: Duration = Duration::from_secs(2);
/// Budget of session and rate-limit calls: they decide the response, so they get longer than a
/// cache lookup (which can always fall back to the database).
const MIN_REDIS_DECISION_BUDGET: Duration = Duration::from_millis(250);

/// Failures while starting or running.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A listener could not be bound.
    #[error("failed to bind {address}")]
    Bind {
        /// Address tried.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Redis URL is unusable.
    #[error("failed to configure the Redis client")]
    Redis(#[source] redis::RedisError),
    /// The HTTP server stopped with an error.
    #[error("failed to serve HTTP")]
    Serve(#[source] std::io::Error),
    /// Migrations failed.
    #[error("failed to migrate")]
    Migrate(#[source] DbError),
    /// Benchmark users could not be created.
    #[error("failed to seed users")]
    Seed(#[source] DbError),
    /// A password-set token could not be issued.
    #[error("failed to issue a password-set token")]
    PasswordToken(#[source] PasswordTokenError),
    /// Benchmark sessions could not be opened.
    #[error("failed to open benchmark sessions")]
    OpenSessions(#[source] OpenSessionsError),
    /// Settings are incomplete.
    #[error("failed to load settings")]
    Config(#[from] ConfigError),
}

/// Pools and clients every mode needs.
struct Core {
    metrics: Metrics,
    cluster: Arc<Cluster>,
    redis: RedisClient,
}

impl Core {
    fn new(settings: &Settings) -> Result<Self, StartupError> {
        let metrics = Metrics::new();
        let runtime = &settings.runtime;
        let cluster = Arc::new(Cluster::new(
            &runtime.shard_map,
            &runtime.database,
            settings.database_password.clone(),
            metrics.clone(),
        ));
        let redis = RedisClient::new(
            &runtime.redis,
            settings.redis_password.as_ref(),
            metrics.clone(),
        )
        .map_err(StartupError::Redis)?;
        Ok(Core {
            metrics,
            cluster,
            redis,
        })
    }

    fn metrics_sources(&self) -> MetricsSources {
        MetricsSources {
            metrics: self.metrics.clone(),
            cluster: self.cluster.clone(),
            redis: self.redis.clone(),
        }
    }
}

/// Budget of the Redis calls that decide a response (sessions, limits, tokens).
fn decision_budget(settings: &Settings) -> Duration {
    Duration::from_millis(settings.runtime.cache.redis_timeout_ms).max(MIN_REDIS_DECISION_BUDGET)
}

/// The session store `serve` uses; `open-sessions` uses the same, so its sessions are the ones a
/// sign-in opens (same key, same sliding and absolute lifetimes).
fn session_store(settings: &Settings, redis: RedisClient) -> SessionStore {
    SessionStore::new(
        redis,
        settings.session_secret.clone(),
        settings.session_secret_previous.clone(),
        Duration::from_secs(settings.runtime.sessions.ttl_seconds),
        settings.session_lifetime,
        decision_budget(settings),
    )
}

async fn bind(settings: &Settings, port: u16) -> Result<TcpListener, StartupError> {
    let address = SocketAddr::new(settings.bind_address, port);
    TcpListener::bind(address)
        .await
        .map_err(|source| StartupError::Bind { address, source })
}

/// The `serve` mode, bound and ready to run.
pub struct Application {
    http: TcpListener,
    metrics: TcpListener,
    state: AppState,
    core: Core,
    config_path: Option<PathBuf>,
}

impl Application {
    /// Builds everything and binds both ports (port 0 picks a free one).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let core = Core::new(&settings)?;
        let runtime = &settings.runtime;
        let decision_budget = decision_budget(&settings);
        let cache = Arc::new(UserCache::new(
            &runtime.cache,
            core.redis.clone(),
            core.cluster.clone(),
            core.metrics.clone(),
        ));
        let services = Services {
            cluster: core.cluster.clone(),
            cache,
            limiter: RateLimiter::new(
                core.redis.clone(),
                runtime.rate_limit.clone(),
                settings.limits,
                decision_budget,
                core.metrics.clone(),
            ),
            sessions: session_store(&settings, core.redis.clone()),
            passwords: Passwords::new(),
            password_tokens: PasswordTokens::new(
                core.redis.clone(),
                settings.session_secret.clone(),
                settings.session_secret_previous.clone(),
                decision_budget,
            ),
            sign_in: AttemptLimiter::new(core.redis.clone(), settings.sign_in, decision_budget),
            metrics: core.metrics.clone(),
            relay_wake: Arc::new(Notify::new()),
            config: Arc::new(runtime.clone()),
            redis: core.redis.clone(),
            readiness: Readiness::default(),
            consistency_key: settings.session_secret.clone(),
        };
        let state = AppState::new(services);
        Ok(Application {
            http: bind(&settings, runtime.http_port).await?,
            metrics: bind(&settings, runtime.metrics_port).await?,
            state,
            core,
            config_path: settings.config_path.clone(),
        })
    }

    /// Where the API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` listens.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Shared state (tests reach the cluster and metrics through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown`, then lets requests in flight finish and stops background tasks.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartupError> {
        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(db::watch_replicas(
            self.core.cluster.clone(),
            background.clone(),
        ));
        tasks.spawn(
            self.state
                .cache
                .clone()
                .listen_for_invalidations(background.clone()),
        );
        let relay = Relay::new(
            self.core.cluster.clone(),
            self.core.redis.clone(),
            self.state.cache.clone(),
            self.state.relay_wake.clone(),
            self.core.metrics.clone(),
        );
        tasks.spawn(relay.run(background.clone()));
        tasks.spawn(self.core.redis.clone().keep_connected(background.clone()));
        if let Some(path) = self.config_path.clone() {
            tasks.spawn(watch_config(
                path,
                self.core.cluster.clone(),
                self.state.limiter.clone(),
                background.clone(),
            ));
        }
        let metrics_server = axum::serve(
            self.metrics,
            http::metrics_router(self.core.metrics_sources()),
        )
        .with_graceful_shutdown(background.clone().cancelled_owned());
        tasks.spawn(async move {
            if let Err(error) = metrics_server.await {
                tracing::error!(%error, "metrics server failed");
            }
        });
        tracing::info!(address = %self.http.local_addr().map_err(StartupError::Serve)?, "serving");
        let served = axum::serve(
            self.http,
            http::router(self.state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
        background.cancel();
        while tasks.join_next().await.is_some() {}
        served.map_err(StartupError::Serve)
    }
}

/// The `worker` mode: consumers for `streams` until `shutdown`, with `/metrics` on the metrics
/// port.
pub async fn run_worker(
    settings: Settings,
    streams: &[String],
    concurrency: usize,
    faults: FaultInjection,
    shutdown: CancellationToken,
) -> Result<(), StartupError> {
    let core = Core::new(&settings)?;
    let metrics_listener = bind(&settings, settings.runtime.metrics_port).await?;
    let metrics_server = axum::serve(
        metrics_listener,
        http::metrics_router(core.metrics_sources()),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let metrics_task = tokio::spawn(async move {
        if let Err(error) = metrics_server.await {
            tracing::error!(%error, "metrics server failed");
        }
    });
    let heartbeat = tokio::spawn(core.redis.clone().keep_connected(shutdown.clone()));
    let pool = worker::WorkerPool {
        redis: core.redis.clone(),
        cluster: core.cluster.clone(),
        settings: settings.runtime.queues.clone(),
        metrics: core.metrics.clone(),
        faults,
    };
    tracing::info!(
        ?streams,
        concurrency,
        consumer = settings.pod_name,
        "working"
    );
    pool.run(streams, concurrency, &settings.pod_name, shutdown.clone())
        .await;
    shutdown.cancel();
    let _ = metrics_task.await;
    let _ = heartbeat.await;
    Ok(())
}

/// The `migrate` mode: applies migrations to every shard primary.
pub async fn run_migrations(settings: Settings) -> Result<(), StartupError> {
    let core = Core::new(&settings)?;
    db::migrate_all(&core.cluster)
        .await
        .map_err(StartupError::Migrate)
}

/// Creates `count` users with `concurrency` inserts in flight and returns their ids (benchmark
/// data; emails are random so the command can run twice).
pub async fn seed_users(
    settings: Settings,
    count: usize,
    concurrency: usize,
) -> Result<Vec<i64>, StartupError> {
    use futures::StreamExt;
    let core = Core::new(&settings)?;
    let run = hex::encode(rand::random::<[u8; 4]>());
    let cluster = &core.cluster;
    let results: Vec<Result<Option<i64>, DbError>> = futures::stream::iter(0..count)
        .map(|index| {
            let email = format!("seed-{run}-{index}@bench.invalid");
            async move {
                match db::users::create(cluster, &format!("Seed user {index}"), &email, None)
                    .await?
                {
                    db::users::Created::User(user, _) => Ok(Some(user.id)),
                    db::users::Created::EmailTaken => Ok(None),
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut ids = Vec::with_capacity(count);
    for result in results {
        if let Some(id) = result.map_err(StartupError::Seed)? {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Why benchmark sessions were not opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenSessionsError {
    /// A line of the ids file is not a user id.
    #[error("line {line} of the ids file is not a user id")]
    BadId {
        /// 1-based line number.
        line: usize,
    },
    /// A user could not be looked up.
    #[error("failed to look up user {user_id}")]
    Lookup {
        /// The user.
        user_id: i64,
        /// Why.
        #[source]
        source: DbError,
    },
    /// An id names no user (ids written for another database).
    #[error("there is no user {0}")]
    NoSuchUser(i64),
    /// The session store refused a session.
    #[error("failed to open a session of user {user_id}")]
    Store {
        /// The user.
        user_id: i64,
        /// Why.
        #[source]
        source: SessionError,
    },
}

/// The hidden `open-sessions` command: signs in the users of `ids` (one id a line, as `seed`
/// writes them) for benchmarks, without their passwords, and returns lines
/// `<user id>\t<cookie name>=<session id>` in the order of `ids`: the `Cookie` pair each user
/// sends.
///
/// Per user it does what the sign-in handler does once the password matched: reads the account
/// from its primary, then opens a session under the user's current generation through the store
/// `serve` uses (same secret, same lifetime), ending the user's session listed in `previous` (what
/// this command returned last time, if anything), so running it before every benchmark leaves one
/// live session per user. `concurrency` users are in flight.
pub async fn open_sessions(
    settings: Settings,
    ids: &str,
    previous: &str,
    concurrency: usize,
) -> Result<String, StartupError> {
    use futures::{StreamExt, TryStreamExt};
    let users = parse_ids(ids).map_err(StartupError::OpenSessions)?;
    let cookie_name = &settings.runtime.sessions.cookie_name;
    let previous = previous_sessions(previous, cookie_name);
    let core = Core::new(&settings)?;
    let store = session_store(&settings, core.redis.clone());
    let cluster = &core.cluster;
    let store = &store;
    let previous = &previous;
    let lines: String = futures::stream::iter(users)
        .map(|user_id| async move {
            db::users::credentials_by_id(cluster, user_id)
                .await
                .map_err(|source| OpenSessionsError::Lookup { user_id, source })?
                .ok_or(OpenSessionsError::NoSuchUser(user_id))?;
            let replaces = previous.get(&user_id).map(String::as_str);
            let (session, _) = store
                .open(user_id, replaces)
                .await
                .map_err(|source| OpenSessionsError::Store { user_id, source })?;
            Ok::<_, OpenSessionsError>(format!(
                "{user_id}\t{}\n",
                crate::sessions::cookie_pair(cookie_name, &session)
            ))
        })
        // In order, and the first failure stops the run (a stale ids file fails at once).
        .buffered(concurrency.max(1))
        .try_collect()
        .await
        .map_err(StartupError::OpenSessions)?;
    tracing::info!(
        sessions = lines.lines().count(),
        ttl_seconds = store.ttl().as_secs(),
        "opened benchmark sessions"
    );
    Ok(lines)
}

/// User ids, one a line (blank lines skipped).
fn parse_ids(text: &str) -> Result<Vec<i64>, OpenSessionsError> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index, line.trim()))
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| {
            line.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or(OpenSessionsError::BadId { line: index + 1 })
        })
        .collect()
}

/// Session ids by user from an earlier [`open_sessions`] output; lines for another cookie name or
/// without a well-formed id are skipped (those sessions simply expire).
fn previous_sessions(text: &str, cookie_name: &str) -> HashMap<i64, String> {
    text.lines()
        .filter_map(|line| {
            let (user, pair) = line.split_once('\t')?;
            let (name, session) = pair.split_once('=')?;
            let well_formed = name == cookie_name && crate::sessions::is_well_formed(session);
            Some((user.parse().ok()?, session.to_string())).filter(|_| well_formed)
        })
        .collect()
}

/// Re-reads the config file every few seconds and puts a changed shard map and changed rate-limit
/// settings in force without a restart; every other setting is read once at start-up (the
/// operator replaces the pods when the document changes). The file's values are compared with
/// the ones in force (not with the file's previous text), so a change made between start-up and
/// the first poll is not missed. An invalid document is reported and ignored (what runs stays).
async fn watch_config(
    path: PathBuf,
    cluster: Arc<Cluster>,
    limiter: RateLimiter,
    shutdown: CancellationToken,
) {
    let mut last: Option<String> = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && last.as_deref() != Some(text.as_str())
        {
            last = Some(text);
            match load_runtime_config(&path) {
                Ok(config) => {
                    if config.shard_map != *cluster.topology().map() {
                        cluster.replace_map(&config.shard_map);
                        tracing::info!(
                            shards = config.shard_map.shards.len(),
                            "shard map reloaded"
                        );
                    }
                    if config.rate_limit != limiter.settings() {
                        tracing::info!(
                            limit = config.rate_limit.limit,
                            window_seconds = config.rate_limit.window_seconds,
                            trusted_proxy_hops = config.rate_limit.trusted_proxy_hops,
                            "rate-limit settings reloaded"
                        );
                        limiter.replace_settings(config.rate_limit);
                    }
                }
                Err(error) => tracing::error!(error = %error, "ignoring an invalid config update"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CONFIG_POLL) => {}
        }
    }
}

/// Why a password-set token was not issued.
#[derive(Debug, thiserror::Error)]
pub enum PasswordTokenError {
    /// The user could not be looked up.
    #[error("failed to look up user {user_id}")]
    Lookup {
        /// The user.
        user_id: i64,
        /// Why.
        #[source]
        source: DbError,
    },
    /// There is no such user.
    #[error("there is no user {0}")]
    NoSuchUser(i64),
    /// Redis refused the token.
    #[error("failed to store the token")]
    Store(#[source] RedisCallError),
}

/// The `password-token` command: a one-time token with which user `user_id` sets a new password
/// (`PUT /api/users/{id}/password {"token": .., "password": ..}`), for accounts created before
/// passwords existed and for users who lost theirs. Whoever can run this command in the cluster
/// is trusted to hand the token to the right person.
pub async fn issue_password_token(
    settings: Settings,
    user_id: i64,
) -> Result<String, StartupError> {
    let core = Core::new(&settings)?;
    let found = db::users::credentials_by_id(&core.cluster, user_id)
        .await
        .map_err(|source| PasswordTokenError::Lookup { user_id, source })
        .map_err(StartupError::PasswordToken)?;
    if found.is_none() {
        return Err(StartupError::PasswordToken(PasswordTokenError::NoSuchUser(
            user_id,
        )));
    }
    PasswordTokens::new(
        core.redis.clone(),
        settings.session_secret.clone(),
        settings.session_secret_previous.clone(),
        decision_budget(&settings),
    )
    .issue(user_id)
    .await
    .map_err(|source| StartupError::PasswordToken(PasswordTokenError::Store(source)))
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
        tracing::info!("shutdown requested; draining");
        trigger.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_one_a_line_and_junk_names_its_line() {
        assert_eq!(parse_ids("7\n\n 12 \n").ok(), Some(vec![7, 12]));
        assert!(matches!(
            parse_ids("7\nseven\n"),
            Err(OpenSessionsError::BadId { line: 2 })
        ));
        assert!(matches!(
            parse_ids("0"),
            Err(OpenSessionsError::BadId { line: 1 })
        ));
    }

    #[test]
    fn the_sessions_a_run_wrote_are_found_again_by_user() {
        let session = "ab".repeat(32);
        let line = format!("42\t{}\n", crate::sessions::cookie_pair("sid", &session));
        let other_name = format!("43\t{}\n", crate::sessions::cookie_pair("other", &session));
        let text = format!("{line}{other_name}44\tsid=not-an-id\njunk\n");
        let found = previous_sessions(&text, "sid");
        assert_eq!(found.len(), 1);
        assert_eq!(found.get(&42), Some(&session));
    }
}
