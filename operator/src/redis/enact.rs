//! Sends the Redis decision's commands to the servers: the one place the operator writes to
//! Redis. Part of the apply step; a command that fails is reported and sent again next pass,
//! since the decision is made afresh from what the servers say.

use std::time::Duration;

use crate::names::REDIS_PORT;

use super::decide::{Action, Command};

/// How long one command may take, connection included.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a primary told to hand over waits, writes paused, for the replica to catch up
/// before it aborts and takes writes again (the `TIMEOUT` of `FAILOVER`).
pub const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(5);

/// A command a server did not carry out.
#[derive(Debug, thiserror::Error)]
#[error("failed to {what} on Redis pod {pod}: {cause}")]
pub struct CommandError {
    /// The pod.
    pub pod: String,
    /// What it was told.
    pub what: &'static str,
    /// Why it did not.
    pub cause: String,
}

/// Sends `commands` in order (a promotion comes first, so the replicas find a primary to
/// follow). Returns what was done and what failed.
pub async fn enact(
    commands: &[Command],
    password: Option<&scaled_contract::Secret>,
) -> (Vec<String>, Vec<CommandError>) {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let Some(password) = password else {
        return (done, failed);
    };
    for command in commands {
        let what = match command.action {
            Action::Promote => "promote",
            Action::Follow { .. } => "follow the primary",
            Action::HandOver { .. } => "hand over to a replica",
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, send(command, password.expose())).await {
            Ok(Ok(())) => done.push(match &command.action {
                Action::Promote => format!("Redis {} (promoted)", command.pod),
                Action::Follow { primary_ip, .. } => {
                    format!("Redis {} (replica of {primary_ip})", command.pod)
                }
                Action::HandOver { to_ip } => {
                    format!("Redis {} (handing over to {to_ip})", command.pod)
                }
            }),
            Ok(Err(error)) => failed.push(CommandError {
                pod: command.pod.clone(),
                what,
                cause: error.to_string(),
            }),
            Err(_) => failed.push(CommandError {
                pod: command.pod.clone(),
                what,
                cause: format!("no answer within {COMMAND_TIMEOUT:?}"),
            }),
        }
    }
    (done, failed)
}

async fn send(command: &Command, password: &str) -> redis::RedisResult<()> {
    let mut connection = super::observe::connect(&command.ip, password, COMMAND_TIMEOUT).await?;
    match &command.action {
        Action::Promote => {
            redis::cmd("REPLICAOF")
                .arg("NO")
                .arg("ONE")
                .query_async::<()>(&mut connection)
                .await
        }
        Action::Follow {
            primary_ip,
            disconnect_clients,
        } => {
            redis::cmd("REPLICAOF")
                .arg(primary_ip)
                .arg(REDIS_PORT)
                .query_async::<()>(&mut connection)
                .await?;
            if *disconnect_clients {
                // Our own connection is of the same type; Redis answers before it closes it.
                let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .arg("SKIPME")
                    .arg("yes")
                    .query_async(&mut connection)
                    .await;
            }
            Ok(())
        }
        Action::HandOver { to_ip } => {
            // Answers at once; the hand-over goes on in the server (`INFO` shows it), and the
            // next passes follow it through the replica's role.
            redis::cmd("FAILOVER")
                .arg("TO")
                .arg(to_ip)
                .arg(REDIS_PORT)
                .arg("TIMEOUT")
                .arg(HAND_OVER_TIMEOUT.as_millis() as u64)
                .query_async::<()>(&mut connection)
                .await
        }
    }
}
