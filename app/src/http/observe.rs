//! Request metrics, the panic guard, and the metrics endpoint (served on its own port).
//!
//! [`ObserveLayer`] wraps every route and the fallback in one plain tower service (no boxed
//! middleware, nothing cloned per request but one reference count): it counts and times each
//! request and turns a panic into a 500. Every label value comes from a fixed set: the method from
//! [`METHODS`] (anything else is `other`), the status from [`STATUSES`] (else `other`), and the
//! route from the router's own templates (`/api/users/{id}`, never the raw path), `unmatched`
//! when no route matched. So no request, however odd its method or path, adds a series. The
//! series of each (route, method, status) are resolved the first time they are used and kept, so
//! a request costs a few array reads and atomic adds instead of label hashing under a lock.

use std::{
    convert::Infallible,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use axum::{
    BoxError, Router,
    body::{Body, Bytes, HttpBody},
    extract::{MatchedPath, Request, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::{FutureExt, future::CatchUnwind};
use prometheus::{Histogram, IntCounter};
use tower::{Layer, Service};

use super::error::{AppError, FailedDependency};
use crate::{db::Cluster, metrics::Metrics, queue, redis_client::RedisClient};

/// Requests slower than this are logged as warnings.
const SLOW_REQUEST: Duration = Duration::from_secs(1);

/// Methods with a label of their own; any other method is counted as `other`.
pub const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

/// Status codes with a label of their own; any other code is counted as `other`.
pub const STATUSES: [(u16, &str); 22] = [
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (301, "301"),
    (302, "302"),
    (304, "304"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
];

/// Label of methods and statuses outside the fixed sets, and of routes past [`MAX_ROUTES`].
const OTHER: &str = "other";
/// Route label of requests no route matched (404 fallback).
const UNMATCHED: &str = "unmatched";
/// Route templates with a label of their own. The router has far fewer; this only bounds the
/// table should that ever change.
const MAX_ROUTES: usize = 62;
/// Table index of [`UNMATCHED`]; templates follow, then [`OTHER`].
const UNMATCHED_INDEX: usize = 0;
const OTHER_ROUTE_INDEX: usize = MAX_ROUTES + 1;
const METHOD_LABELS: usize = METHODS.len() + 1;
const STATUS_LABELS: usize = STATUSES.len() + 1;

fn method_index(method: &Method) -> usize {
    METHODS
        .iter()
        .position(|known| known == method)
        .unwrap_or(METHODS.len())
}

fn method_label(index: usize) -> &'static str {
    METHODS.get(index).map_or(OTHER, Method::as_str)
}

fn status_index(status: StatusCode) -> usize {
    let code = status.as_u16();
    STATUSES
        .iter()
        .position(|(known, _)| *known == code)
        .unwrap_or(STATUSES.len())
}

fn status_label(index: usize) -> &'static str {
    STATUSES.get(index).map_or(OTHER, |(_, label)| label)
}

/// The series of one route label, each created on first use.
struct RouteSeries {
    template: OnceLock<Box<str>>,
    duration: OnceLock<Histogram>,
    /// `http_requests_total` by method and status: `METHOD_LABELS x STATUS_LABELS`.
    requests: OnceLock<Box<[OnceLock<IntCounter>]>>,
}

impl RouteSeries {
    fn new(template: Option<&str>) -> Self {
        let slot = OnceLock::new();
        if let Some(template) = template {
            let _ = slot.set(template.into());
        }
        RouteSeries {
            template: slot,
            duration: OnceLock::new(),
            requests: OnceLock::new(),
        }
    }
}

/// Resolved series of the HTTP metrics, shared by every route's service.
struct RequestSeries {
    metrics: Metrics,
    routes: Box<[RouteSeries]>,
    database_failures: IntCounter,
    redis_failures: IntCounter,
}

impl RequestSeries {
    fn new(metrics: &Metrics) -> Self {
        let routes = (0..=OTHER_ROUTE_INDEX)
            .map(|index| match index {
                UNMATCHED_INDEX => RouteSeries::new(Some(UNMATCHED)),
                OTHER_ROUTE_INDEX => RouteSeries::new(Some(OTHER)),
                _ => RouteSeries::new(None),
            })
            .collect();
        RequestSeries {
            database_failures: metrics.dependency_failures.with_label_values(&["database"]),
            redis_failures: metrics.dependency_failures.with_label_values(&["redis"]),
            metrics: metrics.clone(),
            routes,
        }
    }

    /// The table index of a request's route: its template's slot (taken on first sight, so the
    /// set is the router's templates), `unmatched` without one.
    fn route_index(&self, matched: Option<&str>) -> usize {
        let Some(path) = matched else {
            return UNMATCHED_INDEX;
        };
        for index in 1..OTHER_ROUTE_INDEX {
            let slot = &self.routes[index].template;
            // A racing request may take an empty slot for another template first; then the
            // comparison fails and the search goes on.
            let template = slot.get_or_init(|| path.into());
            if **template == *path {
                return index;
            }
        }
        OTHER_ROUTE_INDEX
    }

    fn record(&self, route: usize, method: usize, status: StatusCode, elapsed: Duration) {
        let series = &self.routes[route];
        let route_label = series.template.get().map_or(OTHER, |template| template);
        let status = status_index(status);
        let requests = series.requests.get_or_init(|| {
            (0..METHOD_LABELS * STATUS_LABELS)
                .map(|_| OnceLock::new())
                .collect()
        });
        requests[method * STATUS_LABELS + status]
            .get_or_init(|| {
                self.metrics.http_requests.with_label_values(&[
                    method_label(method),
                    route_label,
                    status_label(status),
                ])
            })
            .inc();
        series
            .duration
            .get_or_init(|| self.metrics.http_duration.with_label_values(&[route_label]))
            .observe(elapsed.as_secs_f64());
    }
}

/// Counts, times and guards every request of the router it is applied to.
#[derive(Clone)]
pub struct ObserveLayer {
    series: Arc<RequestSeries>,
}

impl ObserveLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        ObserveLayer {
            series: Arc::new(RequestSeries::new(metrics)),
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            series: self.series.clone(),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    series: Arc<RequestSeries>,
}

impl<S, B> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response<B>, Error = Infallible>,
    S::Future: Unpin,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = method_index(request.method());
        let route = self.series.route_index(
            request
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str),
        );
        let inner = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)))
            .ok()
            .map(|future| AssertUnwindSafe(future).catch_unwind());
        ObserveFuture {
            inner,
            started,
            method,
            route,
            series: self.series.clone(),
        }
    }
}

/// The future of [`Observe`].
pub struct ObserveFuture<F> {
    /// `None` when calling the inner service panicked.
    inner: Option<CatchUnwind<AssertUnwindSafe<F>>>,
    started: Instant,
    method: usize,
    route: usize,
    series: Arc<RequestSeries>,
}

impl<F, B> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let response = match this.inner.as_mut() {
            Some(inner) => match ready!(Pin::new(inner).poll(context)) {
                Ok(Ok(response)) => response.map(Body::new),
                Ok(Err(never)) => match never {},
                Err(_panic) => panic_response(),
            },
            None => panic_response(),
        };
        let elapsed = this.started.elapsed();
        let status = response.status();
        this.series.record(this.route, this.method, status, elapsed);
        if let Some(FailedDependency(what)) = response.extensions().get::<FailedDependency>() {
            // Every dependency a request can find down is the database or, for sessions and rate
            // limits, Redis.
            match *what {
                "database" => this.series.database_failures.inc(),
                _ => this.series.redis_failures.inc(),
            }
        }
        if elapsed >= SLOW_REQUEST {
            let series = &this.series.routes[this.route];
            tracing::warn!(
                method = method_label(this.method),
                route = series.template.get().map_or(OTHER, |template| template),
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "slow request"
            );
        }
        Poll::Ready(Ok(response))
    }
}

fn panic_response() -> Response {
    tracing::error!("a request handler panicked");
    AppError::Internal("handler panicked".into()).into_response()
}

/// What the metrics endpoint reads at scrape time.
#[derive(Clone)]
pub struct MetricsSources {
    /// The registry.
    pub metrics: Metrics,
    /// Pools to report.
    pub cluster: Arc<Cluster>,
    /// Streams to measure.
    pub redis: RedisClient,
}

/// `/metrics` (and a liveness `/health`) for the metrics port, used by servers and workers.
pub fn metrics_router(sources: MetricsSources) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/health", get(|| async { "ok" }))
        .with_state(sources)
}

async fn render(State(sources): State<MetricsSources>) -> impl IntoResponse {
    sources.cluster.record_pool_metrics();
    for (stream, length, pending) in queue::depths(&sources.redis).await {
        sources
            .metrics
            .queue_depth
            .with_label_values(&[stream, "length"])
            .set(length as i64);
        sources
            .metrics
            .queue_depth
            .with_label_values(&[stream, "pending"])
            .set(pending as i64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        sources.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_statuses_outside_the_fixed_sets_share_the_label_other() {
        assert_eq!(method_label(method_index(&Method::GET)), "GET");
        let odd = Method::from_bytes(b"BREW").expect("a valid method token");
        assert_eq!(method_label(method_index(&odd)), "other");
        assert_eq!(status_label(status_index(StatusCode::NOT_FOUND)), "404");
        assert_eq!(status_label(status_index(StatusCode::IM_A_TEAPOT)), "other");
        for (code, label) in STATUSES {
            assert_eq!(code.to_string(), label);
        }
    }

    #[test]
    fn each_template_keeps_one_slot_and_the_table_overflows_into_other() {
        let series = RequestSeries::new(&Metrics::new());
        let first = series.route_index(Some("/api/users/{id}"));
        assert_eq!(series.route_index(Some("/api/orders")), first + 1);
        assert_eq!(series.route_index(Some("/api/users/{id}")), first);
        assert_eq!(series.route_index(None), UNMATCHED_INDEX);
        let templates: Vec<String> = (0..MAX_ROUTES).map(|index| format!("/t/{index}")).collect();
        let indexes: Vec<usize> = templates
            .iter()
            .map(|template| series.route_index(Some(template)))
            .collect();
        assert_eq!(
            indexes
                .iter()
                .filter(|index| **index == OTHER_ROUTE_INDEX)
                .count(),
            2
        );
        assert_eq!(series.route_index(Some("/api/orders")), first + 1);
    }
}
