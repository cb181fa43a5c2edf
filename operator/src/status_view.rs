//! `scaledapp-operator status NAME`: a component tree of one ScaledApp (app, Redis, each
//! shard's primary and replicas, each worker pool, their HPAs), the shard map, the conditions
//! and recent Events. Coloured on a terminal, plain otherwise, JSON with `-o json`.
//!
//! Fetching is separate from formatting so the format is unit-tested without a cluster.

use std::fmt::Write as _;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::crd::{ScaledApp, WorkloadStatus};
use crate::names::SCALEDAPP_NAME_LABEL;

/// Failures of the status command.
#[derive(Debug, thiserror::Error)]
pub enum StatusViewError {
    /// The ScaledApp could not be read.
    #[error("failed to get ScaledApp {namespace}/{name}: {source}")]
    Get {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// A list of related objects failed.
    #[error("failed to list {what} of ScaledApp {namespace}/{name}: {source}")]
    List {
        /// What was listed.
        what: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// Everything the view shows.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    /// The ScaledApp, status included.
    pub app: ScaledApp,
    /// HPAs by name: (min, max, current replicas).
    pub autoscalers: Vec<AutoscalerView>,
    /// Recent Events about the ScaledApp, oldest first.
    pub events: Vec<EventView>,
}

/// One HPA.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerView {
    /// HPA name (same as its Deployment).
    pub name: String,
    /// minReplicas.
    pub min: i32,
    /// maxReplicas.
    pub max: i32,
    /// Current replicas as the HPA sees them.
    pub current: i32,
}

/// One Event.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// Normal or Warning.
    pub type_: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// How many times it happened.
    pub count: i32,
}

/// Reads the ScaledApp, its HPAs and its Events.
pub async fn fetch(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<StatusView, StatusViewError> {
    let apps: Api<ScaledApp> = Api::namespaced(client.clone(), namespace);
    let app = apps
        .get(name)
        .await
        .map_err(|source| StatusViewError::Get {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    let list_error = |what| {
        move |source| StatusViewError::List {
            what,
            namespace: namespace.into(),
            name: name.into(),
            source,
        }
    };
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let autoscalers = hpas
        .list(&ListParams::default().labels(&format!("{SCALEDAPP_NAME_LABEL}={name}")))
        .await
        .map_err(list_error("HorizontalPodAutoscalers"))?
        .items
        .into_iter()
        .map(|hpa| AutoscalerView {
            name: hpa.name_any(),
            min: hpa.spec.as_ref().and_then(|s| s.min_replicas).unwrap_or(1),
            max: hpa
                .spec
                .as_ref()
                .map(|s| s.max_replicas)
                .unwrap_or_default(),
            current: hpa
                .status
                .as_ref()
                .and_then(|s| s.current_replicas)
                .unwrap_or_default(),
        })
        .collect();
    let events: Api<Event> = Api::namespaced(client, namespace);
    let mut events: Vec<Event> = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=ScaledApp,involvedObject.name={name}"
        )))
        .await
        .map_err(list_error("Events"))?
        .items;
    events.sort_by_key(|event| {
        event.last_timestamp.clone().or(event
            .event_time
            .as_ref()
            .map(|t| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.0)))
    });
    let events = events
        .into_iter()
        .rev()
        .take(10)
        .rev()
        .map(|event| EventView {
            type_: event.type_.unwrap_or_default(),
            reason: event.reason.unwrap_or_default(),
            message: event.message.unwrap_or_default(),
            count: event.count.unwrap_or(1),
        })
        .collect();
    Ok(StatusView {
        app,
        autoscalers,
        events,
    })
}

/// Width of the component label column (fits `worker <15-character pool name>`).
const LABEL: usize = 22;

struct Paint {
    colour: bool,
}

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn state(&self, ok: bool, text: &str) -> String {
        self.wrap(if ok { "32" } else { "33" }, text)
    }

    fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }
}

fn workload_line(
    paint: &Paint,
    view: &StatusView,
    (label, width): (&str, usize),
    workload: &WorkloadStatus,
) -> String {
    let ready = workload.desired > 0 && workload.ready >= workload.desired;
    let mut line = format!(
        "{label:<width$} {:<30} {}",
        workload.name,
        paint.state(ready, &workload.summary)
    );
    if let Some(hpa) = view
        .autoscalers
        .iter()
        .find(|hpa| hpa.name == workload.name)
    {
        let _ = write!(line, "  HPA {}..{} (now {})", hpa.min, hpa.max, hpa.current);
    }
    line
}

/// The human-readable view.
pub fn format_tree(view: &StatusView, colour: bool) -> String {
    let paint = Paint { colour };
    let app = &view.app;
    let status = app.status.clone().unwrap_or_default();
    let mut out = String::new();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let headline = match ready {
        Some(c) => paint.state(
            c.status == "True",
            &format!("Ready={} ({})", c.status, c.reason),
        ),
        None => paint.state(false, "no status yet"),
    };
    let _ = writeln!(
        out,
        "{} {}/{}  {headline}  generation {} (observed {})",
        paint.bold("ScaledApp"),
        app.namespace().unwrap_or_default(),
        app.name_any(),
        app.metadata.generation.unwrap_or_default(),
        status
            .observed_generation
            .map(|g| g.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    if app.spec.paused {
        let _ = writeln!(
            out,
            "{}",
            paint.wrap("33", "paused: the operator makes no changes")
        );
    }
    // (node, children) pairs, drawn as a two-level tree.
    let mut nodes: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(workload) = &status.app {
        nodes.push((
            workload_line(&paint, view, ("app", LABEL), workload),
            Vec::new(),
        ));
    }
    match (&status.redis, &app.spec.cache.external_redis) {
        (Some(workload), _) => nodes.push((
            workload_line(&paint, view, ("redis", LABEL), workload),
            Vec::new(),
        )),
        (None, Some(external)) => nodes.push((
            format!("{:<LABEL$} {} (external)", "redis", external.url),
            Vec::new(),
        )),
        (None, None) => {}
    }
    for shard in &status.shards {
        let mut children = Vec::new();
        for instance in &shard.instances {
            let is_primary = shard.primary_pod.as_deref() == Some(instance.pod.as_str());
            let mut line = format!(
                "{:<LABEL$} {:<30} {}",
                if is_primary { "primary" } else { "replica" },
                instance.pod,
                paint.state(instance.ready, &instance.role)
            );
            if let Some(lag) = instance.lag_mib {
                let _ = write!(line, "  lag {lag} MiB");
            }
            if instance.reclones > 0 {
                let _ = write!(line, "  re-cloned {}x", instance.reclones);
            }
            if let Some(problem) = &instance.problem {
                let _ = write!(line, "  {problem}");
            }
            children.push(line);
        }
        if let Some(waiting) = &shard.waiting {
            children.push(format!("primary not chosen: {waiting}"));
        }
        if let Some(health) = &shard.primary_health {
            children.push(paint.state(false, &format!("primary: {health}")));
        }
        if let Some(progress) = &shard.failover {
            children.push(paint.state(
                false,
                &format!(
                    "{} in progress: {} -> {} ({})",
                    progress.kind, progress.from, progress.to, progress.reason
                ),
            ));
        }
        if let Some(done) = &shard.last_failover {
            children.push(format!(
                "last {}: {} -> {} at {} ({})",
                done.kind.to_lowercase(),
                done.from,
                done.to,
                done.completed_at
                    .as_ref()
                    .map_or("?".to_string(), |time| time.0.to_string()),
                done.reason
            ));
        }
        let label = format!("shard {}", shard.index);
        let timeline = shard
            .timeline
            .map(|timeline| format!("  timeline {timeline}"))
            .unwrap_or_default();
        nodes.push((
            format!(
                "{}  slots {} ({} slots){timeline}",
                workload_line(&paint, view, (&label, LABEL), &shard.stateful_set),
                shard.slot_ranges,
                shard.slots
            ),
            children,
        ));
    }
    for pool in &status.workers {
        let line = workload_line(
            &paint,
            view,
            (&format!("worker {}", pool.pool), LABEL),
            &pool.workload,
        );
        nodes.push((
            format!("{line}  queues {}", pool.queues.join(",")),
            Vec::new(),
        ));
    }
    for (index, (node, children)) in nodes.iter().enumerate() {
        let last = index + 1 == nodes.len();
        let _ = writeln!(out, "{} {node}", if last { "└─" } else { "├─" });
        for (child_index, child) in children.iter().enumerate() {
            let trunk = if last { "  " } else { "│ " };
            let branch = if child_index + 1 == children.len() {
                "└─"
            } else {
                "├─"
            };
            let _ = writeln!(out, "{trunk} {branch} {child}");
        }
    }
    if let Some(endpoints) = &status.endpoints {
        let _ = writeln!(out, "\n{}", paint.bold("Endpoints"));
        let _ = writeln!(out, "  app     {}", endpoints.app);
        let _ = writeln!(out, "  redis   {}", endpoints.redis);
        for (index, primary) in endpoints.primaries.iter().enumerate() {
            let _ = writeln!(out, "  shard {index} {primary}");
        }
        let _ = writeln!(out, "  config  ConfigMap {}", endpoints.config_map);
    }
    let _ = writeln!(out, "\n{}", paint.bold("Conditions"));
    for condition in &status.conditions {
        let good = match condition.type_.as_str() {
            "Degraded" | "Paused" | "Progressing" => condition.status == "False",
            _ => condition.status == "True",
        };
        let _ = writeln!(
            out,
            "  {:<12} {:<6} {:<24} {}",
            condition.type_,
            paint.state(good, &condition.status),
            condition.reason,
            condition.message
        );
    }
    if !view.events.is_empty() {
        let _ = writeln!(out, "\n{}", paint.bold("Recent events"));
        for event in &view.events {
            let times = if event.count > 1 {
                format!(" (x{})", event.count)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {:<8} {:<24} {}{times}",
                paint.state(event.type_ != "Warning", &event.type_),
                event.reason,
                event.message
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::render;
    use crate::status::{Observed, compute};
    use crate::test_support::{applied, example, nothing_yet, validated_example};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn view() -> StatusView {
        let validated = validated_example("shop");
        let report = applied(
            &validated,
            Observed::Live(Box::new(nothing_yet(&render(&validated)))),
        );
        let mut app = example("shop");
        app.status = Some(compute(
            None,
            1,
            false,
            &report,
            &Time(Timestamp::UNIX_EPOCH),
        ));
        StatusView {
            app,
            autoscalers: vec![AutoscalerView {
                name: "shop-app".into(),
                min: 3,
                max: 50,
                current: 3,
            }],
            events: vec![EventView {
                type_: "Normal".into(),
                reason: "Created".into(),
                message: "Deployment/shop-app".into(),
                count: 1,
            }],
        }
    }

    #[test]
    fn the_tree_names_every_component_shard_and_condition() {
        let text = format_tree(&view(), false);
        for expected in [
            "ScaledApp default/shop",
            "Ready=False (ComponentsNotReady)",
            "app                    shop-app",
            "HPA 3..50",
            "redis                  shop-redis",
            "shard 0                shop-shard-0",
            "slots 0-511 (512 slots)",
            "shard 1                shop-shard-1",
            "worker email",
            "queues email:send",
            "Progressing",
            "Created",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(!text.contains('\x1b'), "plain output has no colour codes");
    }

    #[test]
    fn colour_is_only_added_when_asked() {
        assert!(format_tree(&view(), true).contains("\x1b[33m"));
    }

    #[test]
    fn the_json_view_carries_status_and_events() {
        let json = serde_json::to_value(view()).expect("serialises");
        assert_eq!(json["app"]["status"]["shardsSummary"], "0/2");
        assert_eq!(json["events"][0]["reason"], "Created");
    }
}
