//! Integration tests of `scaled-instance`: the real binary managing real Postgres 15 servers as
//! host processes (see `support`). One binary, so the crate and the harness compile once.

mod clone;
mod failover;
mod lifecycle;
mod replication;
mod security;
mod support;
