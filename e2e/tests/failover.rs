//! Operator crashes and leader election, with operator processes the tests start and kill
//! themselves. Run alone (`--test-threads=1`) while no other operator runs: `e2e/run.sh` does.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::ResourceExt;
use kube::api::{ListParams, PostParams};
use scaled_e2e::*;

const READY_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn an_operator_killed_mid_reconcile_and_restarted_converges_without_duplicates() {
    let client = client().await;
    let namespace = TestNamespace::create(&client, "crash").await;
    let first = OperatorProcess::start("crash-first", 18181);
    eventually("first operator leads", Duration::from_secs(60), || async {
        Ok((lease_holder(&client).await.as_deref() == Some("crash-first")).then_some(()))
    })
    .await;
    namespace
        .apps()
        .create(&PostParams::default(), &example("shop"))
        .await
        .expect("create");
    // Kill it as soon as it has written part of the stack.
    let deployments = namespace.api::<Deployment>();
    let statefulsets = namespace.api::<StatefulSet>();
    eventually("a first child exists", Duration::from_secs(60), || async {
        Ok((!statefulsets
            .list(&ListParams::default())
            .await?
            .items
            .is_empty())
        .then_some(()))
    })
    .await;
    first.kill();
    let secrets_before: Vec<_> = namespace
        .api::<Secret>()
        .list(&ListParams::default())
        .await
        .expect("secrets")
        .items
        .into_iter()
        .map(|s| (s.name_any(), s.data))
        .collect();

    let second = OperatorProcess::start("crash-second", 18182);
    wait_ready(
        &namespace.apps(),
        "shop",
        READY_TIMEOUT + Duration::from_secs(30),
    )
    .await;
    let all = ListParams::default();
    let names = |items: Vec<String>| items.into_iter().collect::<BTreeSet<_>>();
    let deployment_names = names(
        deployments
            .list(&all)
            .await
            .expect("list")
            .items
            .iter()
            .map(|d| d.name_any())
            .collect(),
    );
    assert_eq!(deployment_names.len(), 3, "{deployment_names:?}");
    // Redis and one per shard (2).
    assert_eq!(statefulsets.list(&all).await.expect("list").items.len(), 3);
    // app, Redis's headless and -primary Services, and per shard its peers, -primary and
    // -replica Services.
    assert_eq!(
        namespace
            .api::<Service>()
            .list(&all)
            .await
            .expect("list")
            .items
            .len(),
        9
    );
    let secrets_after = namespace
        .api::<Secret>()
        .list(&all)
        .await
        .expect("secrets")
        .items;
    assert_eq!(secrets_after.len(), 3, "one of each generated Secret");
    for (name, data) in secrets_before {
        let after = secrets_after
            .iter()
            .find(|s| s.name_any() == name)
            .expect("still there");
        assert_eq!(
            after.data, data,
            "Secret {name} was overwritten after the restart"
        );
    }
    second.stop();
    namespace.delete().await;
}

#[tokio::test]
async fn with_two_operators_only_the_leader_writes() {
    let client = client().await;
    let namespace = TestNamespace::create(&client, "leader").await;
    let one = OperatorProcess::start("pair-one", 18183);
    let two = OperatorProcess::start("pair-two", 18184);
    let leader = eventually("one of them leads", Duration::from_secs(60), || async {
        Ok(lease_holder(&client)
            .await
            .filter(|holder| holder.starts_with("pair-")))
    })
    .await;
    namespace
        .apps()
        .create(&PostParams::default(), &example("shop"))
        .await
        .expect("create");
    wait_ready(&namespace.apps(), "shop", READY_TIMEOUT).await;
    let (leading, standby) = if leader == one.identity {
        (&one, &two)
    } else {
        (&two, &one)
    };
    let writes = |text: String| counter_total(&text, "scaledapp_operator_api_writes_total");
    let leader_writes = writes(leading.metrics().await.expect("leader metrics"));
    let standby_writes = writes(standby.metrics().await.expect("standby metrics"));
    assert!(leader_writes > 0, "the leader applied the stack");
    assert_eq!(standby_writes, 0, "the standby must not write");

    // Hand over: stop the leader cleanly, the standby takes the lease and keeps things in line.
    let standby_identity = standby.identity.clone();
    if leader == one.identity {
        one.stop();
    } else {
        two.stop();
    }
    eventually("standby takes over", Duration::from_secs(60), || async {
        Ok(
            (lease_holder(&client).await.as_deref() == Some(standby_identity.as_str()))
                .then_some(()),
        )
    })
    .await;
    namespace.delete().await;
}
