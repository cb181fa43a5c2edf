//! NetworkPolicies: Postgres answers only this ScaledApp's app, worker and Postgres (replica)
//! pods; Redis answers only its app, worker and Redis (replica) pods, and the operator's pods,
//! which read the queue backlog for the worker autoscalers (`metrics_api::queues`) and run
//! Redis failover (`redis`). The app itself stays reachable from
//! anywhere, since it is what users talk to. The Postgres instance managers' status port is open
//! to any client: the operator (wherever it runs), the kubelet's probes and Prometheus read it,
//! and it serves only read-only role, replication and health figures, never data or secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::names::{COMPONENT_LABEL, POSTGRES_PORT, REDIS_PORT, SCALEDAPP_NAME_LABEL};

use super::{child_name, object_meta, selector_labels};
use crate::validate::ValidatedApp;
use scaled_contract::instance::INSTANCE_STATUS_PORT;

/// The policies of one ScaledApp.
pub fn policies(app: &ValidatedApp) -> Vec<NetworkPolicy> {
    let mut policies = vec![policy(
        app,
        "postgres",
        &["app", "worker", "postgres"],
        POSTGRES_PORT,
        &[i32::from(INSTANCE_STATUS_PORT)],
    )];
    if app.spec.cache.external_redis.is_none() {
        // Redis replicas follow the primary over the Redis port too.
        let mut redis = policy(app, "redis", &["app", "worker", "redis"], REDIS_PORT, &[]);
        if let Some(rule) = redis
            .spec
            .as_mut()
            .and_then(|spec| spec.ingress.as_mut())
            .and_then(|rules| rules.first_mut())
        {
            rule.from
                .get_or_insert_with(Vec::new)
                .push(operator_peer(&app.operator_namespace));
        }
        policies.push(redis);
    }
    policies
}

/// The label the API server puts on every namespace, naming it.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Label of the operator's pods (the chart's `app.kubernetes.io/name`).
pub const OPERATOR_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "scaledapp-operator");

/// The operator's pods, in the namespace they run in: a pod labelled as the operator in any
/// other namespace (where anyone allowed to create pods can label them so) is not admitted.
/// `kubernetes.io/metadata.name` is set by the API server itself, so it cannot be forged.
fn operator_peer(namespace: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                namespace.to_string(),
            )])),
            match_expressions: None,
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                OPERATOR_POD_LABEL.0.to_string(),
                OPERATOR_POD_LABEL.1.to_string(),
            )])),
            match_expressions: None,
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn policy(
    app: &ValidatedApp,
    component: &str,
    clients: &[&str],
    port: i32,
    open_ports: &[i32],
) -> NetworkPolicy {
    let from = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                SCALEDAPP_NAME_LABEL.to_string(),
                app.name.clone(),
            )])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: COMPONENT_LABEL.into(),
                operator: "In".into(),
                values: Some(clients.iter().map(|client| client.to_string()).collect()),
            }]),
        }),
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicy {
        metadata: object_meta(app, child_name(app, component), component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(app, component)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(
                std::iter::once(NetworkPolicyIngressRule {
                    from: Some(vec![from]),
                    ports: Some(vec![tcp(port)]),
                })
                .chain((!open_ports.is_empty()).then(|| NetworkPolicyIngressRule {
                    // No `from`: any source.
                    from: None,
                    ports: Some(open_ports.iter().copied().map(tcp).collect()),
                }))
                .collect(),
            ),
            egress: None,
        }),
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::validated_example;

    fn allowed(policy: &NetworkPolicy) -> Vec<String> {
        let spec = policy.spec.as_ref().expect("spec");
        let ingress = &spec.ingress.as_ref().expect("ingress")[0];
        let peer = &ingress.from.as_ref().expect("from")[0];
        let selector = peer.pod_selector.as_ref().expect("selector");
        selector.match_expressions.as_ref().expect("expressions")[0]
            .values
            .clone()
            .expect("values")
    }

    #[test]
    fn postgres_and_redis_admit_app_workers_and_their_own_replicas_only() {
        let app = validated_example("shop");
        let policies = policies(&app);
        assert_eq!(allowed(&policies[0]), vec!["app", "worker", "postgres"]);
        assert_eq!(allowed(&policies[1]), vec!["app", "worker", "redis"]);
        let peer_labels = policies[0]
            .spec
            .as_ref()
            .and_then(|s| s.ingress.as_ref())
            .expect("ingress")[0]
            .from
            .as_ref()
            .expect("from")[0]
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .expect("labels");
        assert_eq!(
            peer_labels[SCALEDAPP_NAME_LABEL], "shop",
            "only this ScaledApp's pods"
        );
    }

    #[test]
    fn redis_admits_the_operators_pods_from_the_operators_namespace_only_and_postgres_does_not() {
        let app = validated_example("shop");
        let policies = policies(&app);
        let peers = |policy: &NetworkPolicy| {
            policy
                .spec
                .as_ref()
                .and_then(|s| s.ingress.as_ref())
                .expect("ingress")[0]
                .from
                .clone()
                .expect("from")
        };
        let redis = peers(&policies[1]);
        assert_eq!(redis.len(), 2);
        assert_eq!(redis[1], operator_peer(&app.operator_namespace));
        assert_eq!(app.operator_namespace, "scaledapp-system");
        let namespaces = redis[1]
            .namespace_selector
            .as_ref()
            .and_then(|selector| selector.match_labels.clone())
            .expect("a namespace selector with labels");
        assert_eq!(
            namespaces,
            BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "scaledapp-system".to_string()
            )]),
            "the operator's namespace, by the name the API server sets"
        );
        assert_eq!(
            peers(&policies[0]).len(),
            1,
            "Postgres: this app's pods only"
        );
    }

    #[test]
    fn only_the_instance_status_port_is_open_to_any_client() {
        let app = validated_example("shop");
        let rules = policies(&app)[0]
            .spec
            .clone()
            .and_then(|spec| spec.ingress)
            .expect("ingress");
        assert_eq!(rules.len(), 2);
        assert!(
            rules[0].from.is_some(),
            "Postgres itself is for listed clients only"
        );
        assert_eq!(rules[1].from, None);
        assert_eq!(
            rules[1].ports,
            Some(vec![tcp(i32::from(INSTANCE_STATUS_PORT))])
        );
    }
}
