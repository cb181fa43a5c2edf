//! Integration tests of the app against real Postgres and Redis (see `support`). One binary, so
//! the shared stack starts once.

mod cache;
mod errors;
mod faults;
mod health;
mod orders;
mod ratelimit;
mod relay;
mod sessions;
mod support;
mod users;
mod worker;
