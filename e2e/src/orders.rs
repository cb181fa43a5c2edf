//! A load of signed-in users placing orders through the app's Service, recording every attempt:
//! which succeeded, when, and the id of every order the app acknowledged, so a test can check
//! afterwards that each acknowledged order is stored exactly once and confirmed by exactly one
//! e-mail, and measure how long orders (and reads) failed around a fault.
//!
//! Each client signs up and signs in once, on the first try (a ScaledApp that reports Ready must
//! serve that), then places an order (`POST /api/orders`) and reads its own account
//! (`GET /api/me`) every [`PACE`] until stopped. The pace keeps each user under the app's order
//! limit (120 a minute per user): a client ordering as fast as it can spends the minute's budget
//! in a few seconds and is refused (429) for the rest of the minute, which a fault's outage
//! would be measured in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

/// What a client attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `POST /api/orders`.
    Order,
    /// `GET /api/me`.
    Read,
}

/// One request and how it ended.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// What it was.
    pub kind: Kind,
    /// When it was sent.
    pub sent: Instant,
    /// Whether it succeeded (2xx).
    pub ok: bool,
    /// The HTTP status, or 0 when no answer came.
    pub status: u16,
}

/// Everything the load saw.
#[derive(Debug, Default)]
pub struct LoadRecord {
    /// Every attempt of every client.
    pub attempts: Vec<Attempt>,
    /// Ids of every order the app acknowledged (201).
    pub acknowledged: Vec<i64>,
    /// A few failure answers, for the report.
    pub sample_failures: Vec<String>,
}

/// A failure window: from the first failed attempt of a run of failures to the next success.
#[derive(Clone, Copy, Debug)]
pub struct Outage {
    /// When the first failed attempt was sent.
    pub from: Instant,
    /// How long until an attempt sent later succeeded.
    pub length: Duration,
    /// Failed attempts in it.
    pub failures: usize,
}

impl LoadRecord {
    /// The longest failure window of `kind` among attempts sent in `[from, to)`, if any failed.
    /// Attempts are ordered by when they were sent across all clients, so a window ends at the
    /// first success of any client.
    pub fn longest_outage(&self, kind: Kind, from: Instant, to: Instant) -> Option<Outage> {
        let mut attempts: Vec<&Attempt> = self
            .attempts
            .iter()
            .filter(|attempt| attempt.kind == kind && attempt.sent >= from && attempt.sent < to)
            .collect();
        attempts.sort_by_key(|attempt| attempt.sent);
        let mut longest: Option<Outage> = None;
        let mut open: Option<Outage> = None;
        for attempt in attempts {
            match (&mut open, attempt.ok) {
                (None, false) => {
                    open = Some(Outage {
                        from: attempt.sent,
                        length: Duration::ZERO,
                        failures: 1,
                    })
                }
                (Some(window), false) => window.failures += 1,
                (Some(window), true) => {
                    window.length = attempt.sent.duration_since(window.from);
                    if longest.is_none_or(|l| window.length > l.length) {
                        longest = Some(*window);
                    }
                    open = None;
                }
                (None, true) => {}
            }
        }
        if let Some(mut window) = open {
            // Never recovered within the range: the window lasts to its end.
            window.length = to.duration_since(window.from);
            if longest.is_none_or(|l| window.length > l.length) {
                longest = Some(window);
            }
        }
        longest
    }

    /// Successful and failed attempts of `kind`.
    pub fn counts(&self, kind: Kind) -> (usize, usize) {
        let of_kind = self.attempts.iter().filter(|a| a.kind == kind);
        let ok = of_kind.clone().filter(|a| a.ok).count();
        (ok, of_kind.count() - ok)
    }
}

/// How often each client orders (and reads): 100 orders a minute, under the app's limit of 120
/// a minute per user.
pub const PACE: Duration = Duration::from_millis(600);

/// Failed attempts by kind and status: how many, and the first one's answer.
type Failures = BTreeMap<String, (usize, String)>;

/// A running load.
pub struct OrderLoad {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicUsize>,
    /// Failures of every client so far: per kind and status, how many and the first one's
    /// answer, for a timeout's message.
    recent_failures: Arc<Mutex<Failures>>,
    clients: Vec<tokio::task::JoinHandle<LoadRecord>>,
}

const PASSWORD: &str = "load-test-password-1";

impl OrderLoad {
    /// Signs `clients` users up and in through `base` (`http://<app Service IP>`), each on the
    /// first try, then starts them ordering. Fails if a sign-up or sign-in does.
    pub async fn start(base: &str, clients: usize, tag: &str) -> Result<OrderLoad> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(clients * 2)
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let recent_failures = Arc::new(Mutex::new(Failures::default()));
        let mut handles = Vec::new();
        for client in 0..clients {
            let email = format!("load-{tag}-{client}@example.test");
            let cookie = sign_up_and_in(&http, base, &email)
                .await
                .with_context(|| format!("client {client} ({email}) right after Ready"))?;
            let (http, base) = (http.clone(), base.to_string());
            let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
            let recent = recent_failures.clone();
            handles.push(tokio::spawn(async move {
                run_client(&http, &base, &cookie, &stop, &acknowledged, &recent).await
            }));
        }
        Ok(OrderLoad {
            stop,
            acknowledged,
            recent_failures,
            clients: handles,
        })
    }

    /// Orders acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Waits until `more` orders beyond `since` were acknowledged, failing after `timeout`.
    pub async fn wait_for_orders(
        &self,
        since: usize,
        more: usize,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.acknowledged() < since + more {
            if Instant::now() > deadline {
                let failures = self.recent_failures.lock().expect("failures lock").clone();
                bail!(
                    "only {} of {more} orders acknowledged within {timeout:?}; failures so far \
                     (kind and status: count, first answer): {failures:?}",
                    self.acknowledged() - since
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Stops every client and returns what they saw.
    pub async fn stop(self) -> LoadRecord {
        self.stop.store(true, Ordering::Relaxed);
        let mut record = LoadRecord::default();
        for handle in self.clients {
            let client = handle.await.expect("load client");
            record.attempts.extend(client.attempts);
            record.acknowledged.extend(client.acknowledged);
            if record.sample_failures.len() < 10 {
                record.sample_failures.extend(client.sample_failures);
            }
        }
        record
    }
}

async fn sign_up_and_in(http: &reqwest::Client, base: &str, email: &str) -> Result<String> {
    let response = http
        .post(format!("{base}/api/users"))
        .json(&json!({"name": "Load", "email": email, "password": PASSWORD}))
        .send()
        .await
        .context("sign-up")?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "sign-up: {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    let response = http
        .post(format!("{base}/api/sessions"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .context("sign-in")?;
    let status = response.status();
    let cookie = response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.split(';').next())
        .next()
        .map(String::from);
    match cookie {
        Some(cookie) if status.is_success() => Ok(cookie),
        _ => bail!(
            "sign-in: {status}, no session cookie: {}",
            response.text().await.unwrap_or_default()
        ),
    }
}

async fn run_client(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    stop: &AtomicBool,
    acknowledged: &AtomicUsize,
    failures: &Mutex<Failures>,
) -> LoadRecord {
    let note = |what: String, answer: String| {
        let mut failures = failures.lock().expect("failures lock");
        let entry = failures.entry(what).or_insert((0, answer));
        entry.0 += 1;
    };
    let mut record = LoadRecord::default();
    let order = json!({"items": [{"sku": "book", "quantity": 1}], "total": 12.5});
    let mut pace = tokio::time::interval(PACE);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        for kind in [Kind::Order, Kind::Read] {
            let sent = Instant::now();
            let request = match kind {
                Kind::Order => http.post(format!("{base}/api/orders")).json(&order),
                Kind::Read => http.get(format!("{base}/api/me")),
            };
            let outcome = request.header(reqwest::header::COOKIE, cookie).send().await;
            let (ok, status) = match outcome {
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    if status.is_success() && kind == Kind::Order {
                        match serde_json::from_str::<Value>(&body)
                            .ok()
                            .and_then(|value| value["id"].as_i64())
                        {
                            Some(id) => {
                                record.acknowledged.push(id);
                                acknowledged.fetch_add(1, Ordering::Relaxed);
                            }
                            None => panic!("an acknowledged order without an id: {body}"),
                        }
                    }
                    if !status.is_success() {
                        note(
                            format!("{kind:?} {status}"),
                            body.chars().take(200).collect(),
                        );
                    }
                    if !status.is_success() && record.sample_failures.len() < 3 {
                        record
                            .sample_failures
                            .push(format!("{kind:?}: {status}: {body}"));
                    }
                    (status.is_success(), status.as_u16())
                }
                Err(error) => {
                    note(format!("{kind:?} error"), error.to_string());
                    if record.sample_failures.len() < 3 {
                        record.sample_failures.push(format!("{kind:?}: {error}"));
                    }
                    (false, 0)
                }
            };
            record.attempts.push(Attempt {
                kind,
                sent,
                ok,
                status,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_outage_runs_from_the_first_failure_to_the_next_success_of_any_client() {
        let start = Instant::now();
        let at = |ms: u64, ok: bool| Attempt {
            kind: Kind::Order,
            sent: start + Duration::from_millis(ms),
            ok,
            status: if ok { 201 } else { 503 },
        };
        let record = LoadRecord {
            attempts: vec![
                at(0, true),
                at(100, false),
                at(150, false),
                at(400, true),
                at(500, false),
                at(550, true),
                at(900, false),
            ],
            ..LoadRecord::default()
        };
        let end = start + Duration::from_millis(1000);
        let longest = record
            .longest_outage(Kind::Order, start, end)
            .expect("failures");
        assert_eq!(longest.length, Duration::from_millis(300));
        assert_eq!(longest.failures, 2);
        // A window still open at the end of the range lasts to the end.
        let tail = record
            .longest_outage(Kind::Order, start + Duration::from_millis(560), end)
            .expect("failure");
        assert_eq!(tail.length, Duration::from_millis(100));
        assert!(record.longest_outage(Kind::Read, start, end).is_none());
        assert_eq!(record.counts(Kind::Order), (3, 4));
    }
}
