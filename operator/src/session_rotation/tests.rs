//! A rotation driven through whole reconciles against the fake API server: what the Secret
//! holds at each step, that the pod template follows, that each step waits for its rollout, and
//! that the values appear nowhere but in the Secret.

use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};

use crate::context::Context;
use crate::crd::{ScaledApp, SessionSecretRotationPhase};
use crate::fake_api::FakeApi;
use crate::metrics::Metrics;
use crate::names::{
    SESSION_SECRET_KEY, SESSION_SECRET_PREVIOUS_KEY, SESSION_SECRET_ROTATION_ANNOTATION,
};
use crate::reconcile::reconcile;
use crate::test_support::example;
use crate::validate::Defaults;

use super::ROTATE_SESSION_SECRET_ANNOTATION;

const APPS: &str = "/apis/scaled.dev/v1alpha1/namespaces/default/scaledapps";
const SECRETS: &str = "/api/v1/namespaces/default/secrets";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn setup(paused: bool) -> (FakeApi, Arc<Context>) {
    let fake = FakeApi::default();
    let mut app = example("shop");
    app.spec.paused = paused;
    fake.insert(APPS, "shop", serde_json::to_value(&app).expect("json"));
    let context = Arc::new(Context::new(
        fake.client(),
        Metrics::new(),
        Some("test".into()),
        Defaults::default(),
    ));
    (fake, context)
}

fn stored(fake: &FakeApi) -> ScaledApp {
    serde_json::from_value(fake.get(APPS, "shop").expect("stored")).expect("ScaledApp")
}

async fn pass(fake: &FakeApi, context: &Arc<Context>) {
    // Boxed: a reconcile's future is large, and a test of many passes would hold each one on
    // the test thread's stack.
    Box::pin(reconcile(Arc::new(stored(fake)), context.clone()))
        .await
        .expect("reconcile");
}

/// Writes the rotation request, as `scaledapp-operator rotate-session-secret` does.
fn request(fake: &FakeApi, id: &str) {
    let mut app = stored(fake);
    app.metadata.annotations.get_or_insert_default().insert(
        ROTATE_SESSION_SECRET_ANNOTATION.into(),
        json!({"id": id}).to_string(),
    );
    fake.insert(APPS, "shop", serde_json::to_value(&app).expect("json"));
}

/// The app Secret: its marker, `session-secret` and `session-secret-previous`.
fn app_secret(fake: &FakeApi) -> (Option<String>, Vec<u8>, Option<Vec<u8>>) {
    let secret: Secret =
        serde_json::from_value(fake.get(SECRETS, "shop-app").expect("the app Secret"))
            .expect("a Secret");
    let data = secret.data.clone().unwrap_or_default();
    (
        secret
            .metadata
            .annotations
            .and_then(|annotations| annotations.get(SESSION_SECRET_ROTATION_ANNOTATION).cloned()),
        data.get(SESSION_SECRET_KEY)
            .expect("session-secret")
            .0
            .clone(),
        data.get(SESSION_SECRET_PREVIOUS_KEY)
            .map(|value| value.0.clone()),
    )
}

fn template_marker(fake: &FakeApi, deployment: &str) -> Value {
    fake.get(DEPLOYMENTS, deployment).expect("deployment")["spec"]["template"]["metadata"]
        ["annotations"][SESSION_SECRET_ROTATION_ANNOTATION]
        .clone()
}

/// The Deployment controller's work: every replica of the current template up and available.
fn roll_out(fake: &FakeApi) {
    let mut deployment = fake.get(DEPLOYMENTS, "shop-app").expect("deployment");
    let generation = deployment["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
    deployment["metadata"]["generation"] = generation.into();
    deployment["spec"]["replicas"] = 3.into();
    deployment["status"] = json!({"observedGeneration": generation, "replicas": 3,
        "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3});
    fake.insert(DEPLOYMENTS, "shop-app", deployment);
}

fn phase(fake: &FakeApi) -> Option<SessionSecretRotationPhase> {
    let status = stored(fake).status?.session_secret_rotation?;
    status.in_progress.map(|rotation| rotation.phase)
}

/// Rotation Events published so far, by reason and note.
fn rotation_events(fake: &FakeApi) -> Vec<(String, String)> {
    fake.list(EVENTS)
        .into_iter()
        .filter(|event| event["action"] == "SessionSecretRotation")
        .map(|event| {
            (
                event["reason"].as_str().unwrap_or_default().to_string(),
                event["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Neither the raw value nor its base64 form appears in `text`.
fn assert_absent(text: &str, value: &[u8], what: &str) {
    let raw = String::from_utf8(value.to_vec()).expect("generated values are text");
    let encoded = serde_json::to_value(ByteString(value.to_vec())).expect("json");
    let encoded = encoded.as_str().expect("base64 text");
    assert!(
        !text.contains(&raw) && !text.contains(encoded),
        "a secret value is in {what}"
    );
}

#[tokio::test]
async fn a_rotation_stages_a_new_value_then_swaps_each_after_a_full_rollout_and_keeps_values_out_of_status()
 {
    let (fake, context) = setup(false);
    pass(&fake, &context).await;
    let (marker, original, previous) = app_secret(&fake);
    assert_eq!((marker, previous), (None, None), "never rotated");
    assert!(template_marker(&fake, "shop-app").is_null());
    fake.take_writes();

    // Phase 1: a new previous value, the current one kept, the app pods told to roll.
    request(&fake, "r1");
    pass(&fake, &context).await;
    let (marker, current, staged) = app_secret(&fake);
    let staged = staged.expect("phase 1 writes session-secret-previous");
    assert_eq!(marker.as_deref(), Some("r1/accepting"));
    assert_eq!(current, original, "still signing with the old value");
    assert_ne!(staged, original);
    assert_eq!(staged.len(), 32, "the generated secrets' length");
    assert_eq!(template_marker(&fake, "shop-app"), "r1/accepting");
    assert!(
        template_marker(&fake, "shop-worker-email").is_null(),
        "workers do not roll"
    );
    let env = fake.get(DEPLOYMENTS, "shop-app").expect("deployment")["spec"]["template"]["spec"]
        ["containers"][0]["env"]
        .clone();
    assert!(
        env.as_array()
            .expect("env")
            .iter()
            .any(|variable| variable["valueFrom"]["secretKeyRef"]
                == json!({"name": "shop-app", "key": "session-secret-previous", "optional": true})),
        "{env}"
    );
    assert_eq!(phase(&fake), Some(SessionSecretRotationPhase::Accepting));

    // Rolling: nothing moves, nothing is written, no new value is generated.
    fake.take_writes();
    pass(&fake, &context).await;
    assert_eq!(fake.take_writes(), Vec::<String>::new());
    assert_eq!(app_secret(&fake).2.as_ref(), Some(&staged));

    // Phase 2 once every pod runs the phase-1 template: the two values swapped.
    roll_out(&fake);
    pass(&fake, &context).await;
    let (marker, current, previous) = app_secret(&fake);
    assert_eq!(marker.as_deref(), Some("r1/signing"));
    assert_eq!(current, staged, "signing with the new value");
    assert_eq!(previous.as_ref(), Some(&original), "accepting the old one");
    assert_eq!(template_marker(&fake, "shop-app"), "r1/signing");
    assert_eq!(phase(&fake), Some(SessionSecretRotationPhase::Signing));
    fake.take_writes();
    pass(&fake, &context).await;
    assert_eq!(
        fake.take_writes(),
        Vec::<String>::new(),
        "waits for the rollout"
    );
    assert_eq!(app_secret(&fake).1, staged, "swapped once");

    // Done once that is rolled out: recorded, the Secret and the template left as they are.
    roll_out(&fake);
    pass(&fake, &context).await;
    let writes = fake.take_writes();
    assert!(
        writes
            .iter()
            .all(|w| w.ends_with("/scaledapps/shop/status") || w.contains("events")),
        "{writes:#?}"
    );
    let rotation = stored(&fake)
        .status
        .and_then(|status| status.session_secret_rotation)
        .expect("recorded");
    assert_eq!(rotation.in_progress, None);
    let done = rotation.last_completed.expect("completed");
    assert_eq!(
        (done.id.as_str(), done.phase),
        ("r1", SessionSecretRotationPhase::Completed)
    );
    assert!(done.completed_at.is_some());
    assert_eq!(rotation.last_request.as_deref(), Some("r1"));
    assert_eq!(app_secret(&fake).1, staged);
    pass(&fake, &context).await;
    assert_eq!(fake.take_writes(), Vec::<String>::new(), "acted on once");

    let reasons: Vec<String> = rotation_events(&fake)
        .into_iter()
        .map(|(reason, _)| reason)
        .collect();
    assert_eq!(
        reasons,
        vec![
            "SessionSecretRotationAccepting",
            "SessionSecretRotationSigning",
            "SessionSecretRotationCompleted"
        ],
        "one per phase"
    );
    let status = serde_json::to_string(&stored(&fake).status).expect("json");
    let events = serde_json::to_string(&fake.list(EVENTS)).expect("json");
    for value in [&original, &staged] {
        assert_absent(&status, value, "status");
        assert_absent(&events, value, "an Event");
    }
}

#[tokio::test]
async fn a_paused_scaledapp_does_not_act_on_a_rotation_request() {
    let (fake, context) = setup(false);
    pass(&fake, &context).await;
    let before = app_secret(&fake);
    let mut app = stored(&fake);
    app.spec.paused = true;
    fake.insert(APPS, "shop", serde_json::to_value(&app).expect("json"));
    request(&fake, "r1");
    pass(&fake, &context).await;
    assert_eq!(app_secret(&fake), before);
    assert_eq!(
        stored(&fake)
            .status
            .and_then(|status| status.session_secret_rotation),
        None
    );
    assert!(rotation_events(&fake).is_empty());
}

#[tokio::test]
async fn a_secret_replaced_during_a_rotation_is_not_swapped_and_a_person_is_asked_to_decide() {
    let (fake, context) = setup(false);
    request(&fake, "r1");
    pass(&fake, &context).await;
    assert_eq!(phase(&fake), Some(SessionSecretRotationPhase::Accepting));
    roll_out(&fake);
    // Someone deletes the Secret: the next pass creates it afresh, with no staged value.
    fake.remove(SECRETS, "shop-app");
    reconcile(Arc::new(stored(&fake)), context.clone())
        .await
        .expect_err("out of step");
    let (marker, _, previous) = app_secret(&fake);
    assert_eq!((marker, previous), (None, None), "nothing swapped");
    let status = stored(&fake).status.expect("status");
    let ready = status
        .conditions
        .iter()
        .find(|condition| condition.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "SessionSecretOutOfStep")
    );
    assert!(ready.message.contains("r1/signing"), "{}", ready.message);
    assert_eq!(
        phase(&fake),
        Some(SessionSecretRotationPhase::Accepting),
        "not recorded as swapped"
    );
}
