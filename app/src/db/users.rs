//! Users across shards: creation with a globally unique email, point and batch reads, keyset
//! pages merged over shards, and updates (an email change is a small saga, see
//! [`drive_email_change`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgPool};

use super::{Cluster, DbError, WriteToken, cluster::Topology, ids, is_unique_violation, outbox};

/// The columns of [`User`], as a literal so statements can be `concat!`-ed at compile time.
macro_rules! user_columns {
    () => {
        "id, name, email, created_at, updated_at"
    };
}
/// Pending email changes older than this are finished by the sweeper (the request that started
/// one normally finishes it within milliseconds).
const SWEEP_AFTER_SECONDS: f64 = 10.0;

/// A user as stored and as served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    /// Globally unique id (see [`ids`]).
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Normalised (trimmed, lower-case) email.
    pub email: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last update time.
    pub updated_at: DateTime<Utc>,
}

/// What anyone may see of a user, and a CDN may cache: no email, nothing only its owner should
/// know. [`User`] itself (with the email) is served only to its owner.
#[derive(Debug, Serialize)]
pub struct PublicUser<'a> {
    /// Id.
    pub id: i64,
    /// Display name.
    pub name: &'a str,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl User {
    /// The public representation.
    pub fn public(&self) -> PublicUser<'_> {
        PublicUser {
            id: self.id,
            name: &self.name,
            created_at: self.created_at,
        }
    }
}

/// Result of [`create`].
#[derive(Debug)]
pub enum Created {
    /// The user exists now.
    User(User, WriteToken),
    /// Another user holds the email.
    EmailTaken,
}

/// Result of [`update`].
#[derive(Debug)]
pub enum Updated {
    /// The update is committed.
    User(User, WriteToken),
    /// No such user.
    NotFound,
    /// Another user holds the new email; nothing was changed.
    EmailTaken,
    /// An earlier email change of this user is still being finished.
    ChangeInProgress,
}

/// Trimmed and lower-cased, so that `A@x.org` and `a@x.org ` are one address.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The smallest replay position a replica of `shard` needs for the caller to see its own writes.
pub fn min_lsn(tokens: &[WriteToken], shard: u32) -> u64 {
    tokens
        .iter()
        .filter(|token| token.shard == shard)
        .map(|token| token.lsn)
        .max()
        .unwrap_or(0)
}

/// Creates a user. The id is drawn in the slot of the email, so the email claim and the user row
/// are written by one transaction on one shard: there is no state in which one exists without
/// the other.
/// `password_hash` is the PHC string of the user's password (`None` only for benchmark seeds, which
/// cannot sign in).
pub async fn create(
    cluster: &Cluster,
    name: &str,
    email: &str,
    password_hash: Option<&str>,
) -> Result<Created, DbError> {
    const OPERATION: &str = "create a user";
    let topology = cluster.topology();
    let email = normalize_email(email);
    let slot = scaled_contract::slot_for_key(&email, topology.slots());
    let shard = topology.shard_for_key(&email);
    loop {
        let id = ids::new_id_in_slot(slot, topology.slots());
        let mut connection = shard.acquire_primary(OPERATION).await?;
        let mut transaction = connection
            .begin()
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
        let claimed = sqlx::query("INSERT INTO email_claims (email, user_id) VALUES ($1, $2) ON CONFLICT (email) DO NOTHING")
            .bind(&email)
            .bind(id)
            .execute(&mut *transaction)
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
        if claimed.rows_affected() == 0 {
            return Ok(Created::EmailTaken);
        }
        let inserted = sqlx::query_as::<_, User>(
            "INSERT INTO users (id, name, email, password_hash) VALUES ($1, $2, $3, $4) RETURNING id, name, email, created_at, updated_at",
        )
        .bind(id)
        .bind(name)
        .bind(&email)
        .bind(password_hash)
        .fetch_one(&mut *transaction)
        .await;
        let user = match inserted {
            Ok(user) => user,
            // Two pods drew the same id in the same millisecond: draw again.
            Err(error) if is_unique_violation(&error) => continue,
            Err(error) => return Err(shard.primary_error(OPERATION, error)),
        };
        transaction
            .commit()
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
        let token = shard.write_token(&mut connection).await?;
        return Ok(Created::User(user, token));
    }
}

/// The user holding `email`'s claim, from the claim's primary: what [`create`] would find taken.
/// Sign-up asks before hashing the password, so a registered address costs no hash.
pub async fn email_owner(cluster: &Cluster, email: &str) -> Result<Option<i64>, DbError> {
    const OPERATION: &str = "look up an email's owner";
    let email = normalize_email(email);
    let shard = cluster.topology().shard_for_key(&email);
    sqlx::query_scalar("SELECT user_id FROM email_claims WHERE email = $1")
        .bind(&email)
        .fetch_optional(&shard.primary)
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))
}

/// Queues a notice to `user_id` that someone tried to sign up with its address (through the
/// outbox on the user's shard, to `stream`, the email queue).
pub async fn queue_sign_up_notice(
    cluster: &Cluster,
    user_id: i64,
    stream: &str,
) -> Result<(), DbError> {
    const OPERATION: &str = "queue a sign-up notice";
    let shard = cluster.shard_for_user(user_id);
    let mut connection = shard.acquire_primary(OPERATION).await?;
    outbox::enqueue_sign_up_notice(&mut connection, stream, user_id)
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))
}

/// What sign-in and password changes need to know about an account. Never served.
#[derive(Clone)]
pub struct Credentials {
    /// The user.
    pub user_id: i64,
    /// The user's (normalised) email.
    pub email: String,
    /// PHC string of the password; `None` if none was ever set.
    pub password_hash: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Credentials")
            .field("user_id", &self.user_id)
            .field("password_set", &self.password_hash.is_some())
            .finish_non_exhaustive()
    }
}

/// The account holding `email`, read from primaries (a user who just signed up can sign in at
/// once). The email's claim names the user; the user's row must still carry that email (during
/// an email change only the address the row holds signs in).
pub async fn credentials_by_email(
    cluster: &Cluster,
    email: &str,
) -> Result<Option<Credentials>, DbError> {
    const OPERATION: &str = "look up an account by email";
    let topology = cluster.topology();
    let email = normalize_email(email);
    let claim_shard = topology.shard_for_key(&email);
    let owner: Option<i64> =
        sqlx::query_scalar("SELECT user_id FROM email_claims WHERE email = $1")
            .bind(&email)
            .fetch_optional(&claim_shard.primary)
            .await
            .map_err(|error| claim_shard.primary_error(OPERATION, error))?;
    let Some(user_id) = owner else {
        return Ok(None);
    };
    Ok(credentials_by_id(cluster, user_id)
        .await?
        .filter(|credentials| credentials.email == email))
}

/// The credentials of user `id`, from its primary.
pub async fn credentials_by_id(cluster: &Cluster, id: i64) -> Result<Option<Credentials>, DbError> {
    const OPERATION: &str = "read an account's credentials";
    let shard = cluster.shard_for_user(id);
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT email, password_hash FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&shard.primary)
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
    Ok(row.map(|(email, password_hash)| Credentials {
        user_id: id,
        email,
        password_hash,
    }))
}

/// Stores a new password hash for user `id`; false if there is no such user. The public and
/// private representations do not include the password, so `updated_at` and the cache stay as
/// they are.
pub async fn set_password(
    cluster: &Cluster,
    id: i64,
    password_hash: &str,
) -> Result<bool, DbError> {
    const OPERATION: &str = "set a password";
    let shard = cluster.shard_for_user(id);
    let updated = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(id)
        .bind(password_hash)
        .execute(&shard.primary)
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?;
    Ok(updated.rows_affected() == 1)
}

/// One user, from a replica that has replayed `min_lsn` or else the primary. A user the replica
/// does not have is looked up on the primary too (it may have been created a moment ago).
pub async fn find(cluster: &Cluster, id: i64, min_lsn: u64) -> Result<Option<User>, DbError> {
    let shard = cluster.shard_for_user(id);
    let query = |pool: PgPool| async move {
        sqlx::query_as::<_, User>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&pool)
        .await
    };
    cluster
        .read_accepting(&shard, min_lsn, "user_by_id", query, Option::is_some)
        .await
}

/// Many users by id: one `= ANY($1)` statement per shard involved, run concurrently. Users are
/// returned in the order asked for; unknown ids are left out.
pub async fn find_many(
    cluster: &Cluster,
    requested: &[i64],
    tokens: &[WriteToken],
) -> Result<Vec<User>, DbError> {
    let topology = cluster.topology();
    let mut by_shard: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for id in requested {
        by_shard
            .entry(topology.shard_for_key(&id.to_string()).index)
            .or_default()
            .push(*id);
    }
    let reads = by_shard.into_iter().map(|(index, ids)| {
        let shard = topology.shards[index as usize].clone();
        async move {
            cluster
                .read(
                    &shard,
                    min_lsn(tokens, index),
                    "users_by_ids",
                    |pool: PgPool| {
                        let ids = ids.clone();
                        async move {
                            sqlx::query_as::<_, User>(concat!(
                                "SELECT ",
                                user_columns!(),
                                " FROM users WHERE id = ANY($1)"
                            ))
                            .bind(ids)
                            .fetch_all(&pool)
                            .await
                        }
                    },
                )
                .await
        }
    });
    let mut found: BTreeMap<i64, User> = futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .flatten()
        .map(|user| (user.id, user))
        .collect();
    Ok(requested.iter().filter_map(|id| found.remove(id)).collect())
}

/// The first `limit` users with an id above `after`, over all shards: each shard returns its
/// first `limit` and the merge keeps the smallest.
pub async fn page_after(
    cluster: &Cluster,
    after: i64,
    limit: i64,
    tokens: &[WriteToken],
) -> Result<Vec<User>, DbError> {
    let mut users = per_shard(cluster, tokens, after, limit).await?;
    users.sort_by_key(|user| user.id);
    users.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(users)
}

/// Offset paging for older clients. Each shard must return `offset + limit` rows, so callers cap
/// the offset.
pub async fn page_offset(
    cluster: &Cluster,
    offset: i64,
    limit: i64,
    tokens: &[WriteToken],
) -> Result<Vec<User>, DbError> {
    let mut users = per_shard(cluster, tokens, i64::MIN, offset + limit).await?;
    users.sort_by_key(|user| user.id);
    Ok(users
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(0))
        .take(usize::try_from(limit).unwrap_or(0))
        .collect())
}

/// Each shard's first `limit` users above `after`, concatenated (unsorted).
async fn per_shard(
    cluster: &Cluster,
    tokens: &[WriteToken],
    after: i64,
    limit: i64,
) -> Result<Vec<User>, DbError> {
    let topology = cluster.topology();
    let reads = topology.shards.iter().map(|shard| async move {
        cluster
            .read(
                shard,
                min_lsn(tokens, shard.index),
                "users_page",
                |pool: PgPool| async move {
                    sqlx::query_as::<_, User>(concat!(
                        "SELECT ",
                        user_columns!(),
                        " FROM users WHERE id > $1 ORDER BY id LIMIT $2"
                    ))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&pool)
                    .await
                },
            )
            .await
    });
    Ok(futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// Updates name and/or email. A name-only change is one transaction. An email change records its
/// intent on the user's shard first and then runs [`drive_email_change`], which a crash at any
/// point leaves for the sweeper to finish; until it is finished the user keeps the old email.
pub async fn update(
    cluster: &Cluster,
    id: i64,
    name: Option<&str>,
    email: Option<&str>,
) -> Result<Updated, DbError> {
    const OPERATION: &str = "update a user";
    let topology = cluster.topology();
    let shard = topology.shard_for_key(&id.to_string());
    let mut connection = shard.acquire_primary(OPERATION).await?;
    let mut transaction = connection
        .begin()
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?;
    let current: Option<String> =
        sqlx::query_scalar("SELECT email FROM users WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *transaction)
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
    let Some(current) = current else {
        return Ok(Updated::NotFound);
    };
    let new_email = email.map(normalize_email).filter(|email| *email != current);
    match &new_email {
        None => {
            if let Some(name) = name {
                sqlx::query("UPDATE users SET name = $2, updated_at = now() WHERE id = $1")
                    .bind(id)
                    .bind(name)
                    .execute(&mut *transaction)
                    .await
                    .map_err(|error| shard.primary_error(OPERATION, error))?;
            }
            outbox::enqueue_invalidation(&mut transaction, id)
                .await
                .map_err(|error| shard.primary_error(OPERATION, error))?;
        }
        Some(new_email) => {
            // The name waits in the intent, so a refused email change changes nothing at all.
            let started = sqlx::query(
                "INSERT INTO email_changes (user_id, old_email, new_email, new_name) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id) DO NOTHING",
            )
            .bind(id)
            .bind(&current)
            .bind(new_email)
            .bind(name)
            .execute(&mut *transaction)
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
            if started.rows_affected() == 0 {
                return Ok(Updated::ChangeInProgress);
            }
        }
    }
    transaction
        .commit()
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?;
    drop(connection);

    if new_email.is_some() && drive_email_change(&topology, id).await? == Some(EmailChange::Taken) {
        return Ok(Updated::EmailTaken);
    }
    let mut connection = shard.acquire_primary(OPERATION).await?;
    let user = sqlx::query_as::<_, User>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *connection)
    .await
    .map_err(|error| shard.primary_error(OPERATION, error))?;
    let token = shard.write_token(&mut connection).await?;
    Ok(user.map_or(Updated::NotFound, |user| Updated::User(user, token)))
}

/// How an email change ended.
#[derive(Debug, PartialEq, Eq)]
pub enum EmailChange {
    /// The user has the new email and the old claim is released.
    Changed,
    /// Another user holds the new email; the intent is dropped.
    Taken,
}

/// Moves an email change of `user_id` forward from wherever it stopped. Every step is idempotent,
/// so the request that started the change and the sweeper may both run it:
/// 1. claim the new email on its shard (the claim's primary key refuses a second owner);
/// 2. on the user's shard, set the email and mark the intent `release` in one transaction;
/// 3. drop the old claim (only if this user still owns it), then the intent.
///
/// Returns `None` when there is no intent (already finished).
pub async fn drive_email_change(
    topology: &Topology,
    user_id: i64,
) -> Result<Option<EmailChange>, DbError> {
    const OPERATION: &str = "change an email";
    let shard = topology.shard_for_key(&user_id.to_string());
    let intent: Option<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT old_email, new_email, new_name, state FROM email_changes WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&shard.primary)
    .await
    .map_err(|error| shard.primary_error(OPERATION, error))?;
    let Some((old_email, new_email, new_name, state)) = intent else {
        return Ok(None);
    };
    if state == "claim" {
        let claim_shard = topology.shard_for_key(&new_email);
        let owner: i64 = sqlx::query_scalar(
            "WITH inserted AS (INSERT INTO email_claims (email, user_id) VALUES ($1, $2) \
             ON CONFLICT (email) DO NOTHING RETURNING user_id) \
             SELECT user_id FROM inserted UNION ALL SELECT user_id FROM email_claims WHERE email = $1 LIMIT 1",
        )
        .bind(&new_email)
        .bind(user_id)
        .fetch_one(&claim_shard.primary)
        .await
        .map_err(|error| claim_shard.primary_error(OPERATION, error))?;
        if owner != user_id {
            sqlx::query("DELETE FROM email_changes WHERE user_id = $1 AND state = 'claim'")
                .bind(user_id)
                .execute(&shard.primary)
                .await
                .map_err(|error| shard.primary_error(OPERATION, error))?;
            return Ok(Some(EmailChange::Taken));
        }
        let mut transaction = shard
            .primary
            .begin()
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
        sqlx::query(
            "UPDATE users SET email = $2, name = COALESCE($3, name), updated_at = now() WHERE id = $1",
        )
        .bind(user_id)
        .bind(&new_email)
        .bind(&new_name)
        .execute(&mut *transaction)
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?;
        sqlx::query("UPDATE email_changes SET state = 'release' WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *transaction)
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
        outbox::enqueue_invalidation(&mut transaction, user_id)
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
        transaction
            .commit()
            .await
            .map_err(|error| shard.primary_error(OPERATION, error))?;
    }
    let old_shard = topology.shard_for_key(&old_email);
    sqlx::query("DELETE FROM email_claims WHERE email = $1 AND user_id = $2")
        .bind(&old_email)
        .bind(user_id)
        .execute(&old_shard.primary)
        .await
        .map_err(|error| old_shard.primary_error(OPERATION, error))?;
    sqlx::query("DELETE FROM email_changes WHERE user_id = $1")
        .bind(user_id)
        .execute(&shard.primary)
        .await
        .map_err(|error| shard.primary_error(OPERATION, error))?;
    Ok(Some(EmailChange::Changed))
}

/// Finishes email changes whose request died part-way. Returns how many were moved on.
pub async fn sweep_email_changes(cluster: &Cluster) -> Result<usize, DbError> {
    let topology = cluster.topology();
    let mut finished = 0;
    for shard in &topology.shards {
        let stale: Vec<i64> = sqlx::query_scalar(
            "SELECT user_id FROM email_changes WHERE created_at < now() - make_interval(secs => $1) LIMIT 100",
        )
        .bind(SWEEP_AFTER_SECONDS)
        .fetch_all(&shard.primary)
        .await
        .map_err(|error| shard.primary_error("find stale email changes", error))?;
        for user_id in stale {
            if drive_email_change(&topology, user_id).await?.is_some() {
                finished += 1;
            }
        }
    }
    Ok(finished)
}
