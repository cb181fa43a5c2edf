//! The rotation decision, pure: from the request not acted on yet, what status recorded, and
//! how far the app Deployment has rolled out, the phase this pass, what the pod template and the
//! Secret must carry, and what deserves an Event. One step per pass: a rotation that completes
//! does not start the next request in the same pass.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{SessionSecretRotation, SessionSecretRotationPhase, SessionSecretRotationStatus};
use crate::names::SESSION_SECRET_ROTATION_ANNOTATION;
use crate::postgres::News;

use super::request::SessionSecretRotationRequest;

/// Event reason of phase 1 starting. Each phase has a reason of its own: Events of the same
/// reason are folded into one series, whose note stays the first one's.
pub const ACCEPTING_REASON: &str = "SessionSecretRotationAccepting";
/// Event reason of phase 2 starting.
pub const SIGNING_REASON: &str = "SessionSecretRotationSigning";
/// Event reason of a rotation completed.
pub const COMPLETED_REASON: &str = "SessionSecretRotationCompleted";
/// Event reason of a request refused.
pub const REFUSED_REASON: &str = "SessionSecretRotationRefused";

/// What the session secret's two keys must hold after this pass's apply. The applier reads the
/// live Secret and writes the result ([`super::rotated`]): the new value is generated there,
/// never here, and each step is written once (the Secret carries the step it is at, so a pass
/// repeated after a failure writes nothing again).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SecretStep {
    /// No rotation in progress: whatever the Secret holds stays.
    #[default]
    Keep,
    /// Rotation `id`'s first step: `session-secret-previous` holds a value generated for it,
    /// `session-secret` is unchanged.
    Accept(String),
    /// Its second step: the two values of the first step, swapped.
    Sign(String),
}

/// The marker of rotation `id` at `phase`, on the app pod template and on the Secret
/// (`<id>/accepting`, `<id>/signing`; a completed rotation stays at `<id>/signing`).
pub fn marker(id: &str, phase: SessionSecretRotationPhase) -> String {
    match phase {
        SessionSecretRotationPhase::Accepting => format!("{id}/accepting"),
        SessionSecretRotationPhase::Signing | SessionSecretRotationPhase::Completed => {
            format!("{id}/signing")
        }
    }
}

/// What rendering and apply take from the rotation this pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionSecretPlan {
    /// Value of the app pod template's [`SESSION_SECRET_ROTATION_ANNOTATION`]: the marker of
    /// the rotation in progress, else of the last one completed. `None` until a first rotation
    /// starts, so a ScaledApp never rotated renders exactly as before rotations existed.
    pub template: Option<String>,
    /// What the Secret must hold.
    pub secret: SecretStep,
}

impl SessionSecretPlan {
    /// The plan status describes, with no step taken this pass.
    pub fn of(status: Option<&SessionSecretRotationStatus>) -> Self {
        let Some(status) = status else {
            return SessionSecretPlan::default();
        };
        match (&status.in_progress, &status.last_completed) {
            (Some(rotation), _) => SessionSecretPlan {
                template: Some(marker(&rotation.id, rotation.phase)),
                secret: match rotation.phase {
                    SessionSecretRotationPhase::Accepting => {
                        SecretStep::Accept(rotation.id.clone())
                    }
                    SessionSecretRotationPhase::Signing => SecretStep::Sign(rotation.id.clone()),
                    SessionSecretRotationPhase::Completed => SecretStep::Keep,
                },
            },
            (None, Some(done)) => SessionSecretPlan {
                template: Some(marker(&done.id, SessionSecretRotationPhase::Completed)),
                secret: SecretStep::Keep,
            },
            (None, None) => SessionSecretPlan::default(),
        }
    }
}

/// The app Deployment as observed at the start of the pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// The rotation marker on its pod template.
    pub template: Option<String>,
    /// Whether that template is rolled out completely: the Deployment controller has seen the
    /// latest spec, every replica runs it and is available, and no pod of an older template is
    /// left (none counted, none terminating).
    pub complete: bool,
}

impl Rollout {
    /// How far `deployment` (absent: not created yet) has rolled out.
    pub fn of(deployment: Option<&Deployment>) -> Self {
        let Some(deployment) = deployment else {
            return Rollout::default();
        };
        let spec = deployment.spec.as_ref();
        let template = spec
            .and_then(|spec| spec.template.metadata.as_ref())
            .and_then(|meta| meta.annotations.as_ref())
            .and_then(|annotations| annotations.get(SESSION_SECRET_ROTATION_ANNOTATION))
            .cloned();
        // The API server defaults replicas to 1; an HPA sets it from then on.
        let wanted = spec.and_then(|spec| spec.replicas).unwrap_or(1);
        let complete = deployment.status.as_ref().is_some_and(|status| {
            let seen = matches!(
                (status.observed_generation, deployment.metadata.generation),
                (Some(observed), Some(generation)) if observed >= generation
            );
            seen && status.updated_replicas.unwrap_or(0) == wanted
                && status.available_replicas.unwrap_or(0) == wanted
                && status.replicas.unwrap_or(0) == wanted
                && status.terminating_replicas.unwrap_or(0) == 0
        });
        Rollout { template, complete }
    }

    /// Whether every app pod runs the template carrying `marker`.
    fn done(&self, marker: &str) -> bool {
        self.complete && self.template.as_deref() == Some(marker)
    }
}

/// What the rotation stage takes.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// What status recorded before this pass.
    pub current: Option<&'a SessionSecretRotationStatus>,
    /// A request not acted on yet (see [`super::pending_rotation`]).
    pub request: Option<&'a Result<SessionSecretRotationRequest, (String, String)>>,
    /// The app Deployment as observed.
    pub rollout: &'a Rollout,
    /// While paused nothing moves.
    pub paused: bool,
    /// Now.
    pub now: &'a Time,
}

/// What the rotation stage decided this pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RotationDecision {
    /// What goes into `status.sessionSecretRotation`.
    pub status: Option<SessionSecretRotationStatus>,
    /// What the pod template and the Secret carry.
    pub plan: SessionSecretPlan,
    /// What deserves an Event.
    pub news: Vec<News>,
    /// A rotation is in progress or a request waits for one: look again soon, since a
    /// Deployment that finishes rolling out may report it to no watch in time.
    pub busy: bool,
}

/// The rotation's next step, if any.
pub fn decide(inputs: Inputs<'_>) -> RotationDecision {
    let current = inputs.current.cloned();
    if inputs.paused {
        return RotationDecision {
            plan: SessionSecretPlan::of(current.as_ref()),
            status: current,
            ..RotationDecision::default()
        };
    }
    let mut status = current.clone().unwrap_or_default();
    let mut news = Vec::new();
    let mut waiting = false;
    match (status.in_progress.clone(), inputs.request) {
        (_, Some(Err((id, why)))) => {
            // Refused at once, even during a rotation: it asks for nothing that could wait.
            status.last_request = Some(id.clone());
            news.push(News {
                warning: true,
                reason: REFUSED_REASON,
                note: format!("session-secret rotation request {id:?} refused: {why}"),
            });
        }
        (None, Some(Ok(request))) => {
            status.last_request = Some(request.id.clone());
            status.in_progress = Some(SessionSecretRotation {
                id: request.id.clone(),
                phase: SessionSecretRotationPhase::Accepting,
                started_at: inputs.now.clone(),
                completed_at: None,
            });
            news.push(News {
                warning: false,
                reason: ACCEPTING_REASON,
                note: format!(
                    "rotation {}: phase 1 of 2 (Accepting): session-secret-previous holds a new value; the app pods roll, each signing with the current value and accepting the new one",
                    request.id
                ),
            });
        }
        (Some(_), Some(Ok(_))) => waiting = true,
        (None, None) => {}
        (Some(_), None) => {}
    }
    // A rotation started before this pass moves on once its step is rolled out.
    if let Some(rotation) = current.as_ref().and_then(|c| c.in_progress.clone())
        && inputs.rollout.done(&marker(&rotation.id, rotation.phase))
    {
        match rotation.phase {
            SessionSecretRotationPhase::Accepting => {
                status.in_progress = Some(SessionSecretRotation {
                    phase: SessionSecretRotationPhase::Signing,
                    ..rotation.clone()
                });
                news.push(News {
                    warning: false,
                    reason: SIGNING_REASON,
                    note: format!(
                        "rotation {}: phase 2 of 2 (Signing): every app pod accepts the new value; the values are swapped and the app pods roll again, each signing with the new value and accepting the old one",
                        rotation.id
                    ),
                });
            }
            SessionSecretRotationPhase::Signing | SessionSecretRotationPhase::Completed => {
                status.in_progress = None;
                status.last_completed = Some(SessionSecretRotation {
                    phase: SessionSecretRotationPhase::Completed,
                    completed_at: Some(inputs.now.clone()),
                    ..rotation.clone()
                });
                news.push(News {
                    warning: false,
                    reason: COMPLETED_REASON,
                    note: format!(
                        "rotation {}: completed: every app pod signs with the new value and accepts the old one until the next rotation",
                        rotation.id
                    ),
                });
            }
        }
    }
    let status =
        (current.is_some() || status != SessionSecretRotationStatus::default()).then_some(status);
    RotationDecision {
        plan: SessionSecretPlan::of(status.as_ref()),
        busy: waiting || status.as_ref().is_some_and(|s| s.in_progress.is_some()),
        status,
        news,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid"))
    }

    fn request(id: &str) -> Result<SessionSecretRotationRequest, (String, String)> {
        Ok(SessionSecretRotationRequest { id: id.into() })
    }

    fn garbage(text: &str) -> Result<SessionSecretRotationRequest, (String, String)> {
        Err((text.into(), "not a request".into()))
    }

    fn rolled(marker: &str) -> Rollout {
        Rollout {
            template: Some(marker.into()),
            complete: true,
        }
    }

    fn rolling(marker: &str) -> Rollout {
        Rollout {
            template: Some(marker.into()),
            complete: false,
        }
    }

    /// One pass: the decision from what the previous pass recorded.
    fn pass(
        current: Option<&SessionSecretRotationStatus>,
        request: Option<&Result<SessionSecretRotationRequest, (String, String)>>,
        rollout: &Rollout,
        now: i64,
    ) -> RotationDecision {
        decide(Inputs {
            current,
            request,
            rollout,
            paused: false,
            now: &at(now),
        })
    }

    fn phase(decision: &RotationDecision) -> Option<(String, SessionSecretRotationPhase)> {
        let rotation = decision.status.as_ref()?.in_progress.as_ref()?;
        Some((rotation.id.clone(), rotation.phase))
    }

    fn reasons(decision: &RotationDecision) -> Vec<(&'static str, bool)> {
        decision
            .news
            .iter()
            .map(|news| (news.reason, news.warning))
            .collect()
    }

    /// A pass of the table: the rollout observed, the phase after, the template marker, the
    /// Secret step and the Event's reason.
    type Row = (
        Rollout,
        Option<SessionSecretRotationPhase>,
        &'static str,
        SecretStep,
        Option<&'static str>,
    );

    /// The table: each row is one pass, fed what the row before recorded and the annotation
    /// as written (the driver's `pending` drops it once `lastRequest` names it).
    #[test]
    fn a_rotation_goes_accepting_then_signing_then_completed_each_after_its_rollout() {
        use SessionSecretRotationPhase::{Accepting, Signing};
        let untouched = Rollout::default();
        let r1 = request("r1");
        let start = pass(None, Some(&r1), &untouched, 100);
        assert_eq!(phase(&start), Some(("r1".into(), Accepting)));
        assert_eq!(start.plan.template.as_deref(), Some("r1/accepting"));
        assert_eq!(start.plan.secret, SecretStep::Accept("r1".into()));
        assert_eq!(reasons(&start), vec![(ACCEPTING_REASON, false)]);
        assert!(start.busy);
        let recorded = start.status.clone().expect("recorded");
        assert_eq!(recorded.last_request.as_deref(), Some("r1"));
        assert_eq!(
            recorded.in_progress.as_ref().map(|r| r.started_at.clone()),
            Some(at(100))
        );

        // Rows: (rollout observed, phase after, template, secret step, the Event's reason).
        let accept = || SecretStep::Accept("r1".into());
        let sign = || SecretStep::Sign("r1".into());
        let keep = || SecretStep::Keep;
        #[rustfmt::skip] // one pass per line
        let rows: [Row; 6] = [
            // The Deployment has not taken the new template yet (the last rotation's, none).
            (untouched.clone(), Some(Accepting), "r1/accepting", accept(), None),
            (rolling("r1/accepting"), Some(Accepting), "r1/accepting", accept(), None),
            (rolled("r1/accepting"), Some(Signing), "r1/signing", sign(), Some(SIGNING_REASON)),
            // Still the first template, fully rolled: phase 2 was taken already, no second Event.
            (rolled("r1/accepting"), Some(Signing), "r1/signing", sign(), None),
            (rolling("r1/signing"), Some(Signing), "r1/signing", sign(), None),
            (rolled("r1/signing"), None, "r1/signing", keep(), Some(COMPLETED_REASON)),
        ];
        let mut current = recorded;
        for (row, (rollout, after, template, secret, event)) in rows.into_iter().enumerate() {
            let decision = pass(Some(&current), None, &rollout, 200 + row as i64);
            assert_eq!(phase(&decision).map(|(_, phase)| phase), after, "row {row}");
            assert_eq!(
                decision.plan.template.as_deref(),
                Some(template),
                "row {row}"
            );
            assert_eq!(decision.plan.secret, secret, "row {row}");
            assert_eq!(
                reasons(&decision),
                event
                    .map(|reason| (reason, false))
                    .into_iter()
                    .collect::<Vec<_>>(),
                "row {row}"
            );
            current = decision.status.expect("kept");
        }
        let done = current.last_completed.clone().expect("completed");
        assert_eq!(done.id, "r1");
        assert_eq!(done.phase, SessionSecretRotationPhase::Completed);
        assert_eq!(done.started_at, at(100));
        assert_eq!(done.completed_at, Some(at(205)));
        assert_eq!(current.in_progress, None);

        // Done: nothing moves any more, and the template keeps the last marker (no third roll).
        let after = pass(Some(&current), None, &rolled("r1/signing"), 300);
        assert_eq!(after.status.as_ref(), Some(&current));
        assert_eq!(after.plan.template.as_deref(), Some("r1/signing"));
        assert_eq!(after.plan.secret, SecretStep::Keep);
        assert!(after.news.is_empty());
        assert!(!after.busy);
    }

    #[test]
    fn with_no_request_ever_there_is_no_status_no_template_marker_and_no_secret_step() {
        let decision = pass(None, None, &Rollout::default(), 100);
        assert_eq!(decision, RotationDecision::default());
        assert_eq!(decision.plan.template, None);
    }

    #[test]
    fn a_request_that_cannot_be_read_is_refused_once_with_a_warning_and_changes_nothing_else() {
        let text = garbage("now please");
        let refused = pass(None, Some(&text), &Rollout::default(), 100);
        assert_eq!(reasons(&refused), vec![(REFUSED_REASON, true)]);
        let status = refused.status.clone().expect("the refusal is recorded");
        assert_eq!(status.last_request.as_deref(), Some("now please"));
        assert_eq!(status.in_progress, None);
        assert_eq!(refused.plan, SessionSecretPlan::default(), "nothing rolls");
        // The driver no longer hands it over (its id is recorded): nothing more happens.
        let next = pass(Some(&status), None, &Rollout::default(), 101);
        assert!(next.news.is_empty());
        assert_eq!(next.status, Some(status));
    }

    #[test]
    fn a_request_during_a_rotation_waits_for_it_and_starts_in_the_pass_after_it_completes() {
        let first = pass(None, Some(&request("r1")), &Rollout::default(), 100);
        let accepting = first.status.expect("started");
        let r2 = request("r2");
        let waits = pass(Some(&accepting), Some(&r2), &rolling("r1/accepting"), 110);
        assert_eq!(
            waits.status.as_ref(),
            Some(&accepting),
            "r2 is not acted on"
        );
        assert!(waits.news.is_empty());
        assert!(waits.busy);
        let signing = pass(Some(&accepting), Some(&r2), &rolled("r1/accepting"), 120)
            .status
            .expect("kept");
        assert_eq!(signing.last_request.as_deref(), Some("r1"));
        let completes = pass(Some(&signing), Some(&r2), &rolled("r1/signing"), 130);
        assert_eq!(phase(&completes), None, "r1 completes, r2 not started yet");
        assert!(completes.busy, "r2 waits: look again soon");
        let done = completes.status.expect("kept");
        let starts = pass(Some(&done), Some(&r2), &rolled("r1/signing"), 140);
        assert_eq!(
            phase(&starts),
            Some(("r2".into(), SessionSecretRotationPhase::Accepting))
        );
        assert_eq!(starts.plan.template.as_deref(), Some("r2/accepting"));
        assert_eq!(starts.plan.secret, SecretStep::Accept("r2".into()));
        let status = starts.status.expect("kept");
        assert_eq!(
            status.last_completed.map(|done| done.id),
            Some("r1".into()),
            "the last completed one is kept until r2 completes"
        );
    }

    #[test]
    fn garbage_during_a_rotation_is_refused_and_the_rotation_goes_on() {
        let accepting = pass(None, Some(&request("r1")), &Rollout::default(), 100)
            .status
            .expect("started");
        let text = garbage("{oops");
        let decision = pass(Some(&accepting), Some(&text), &rolled("r1/accepting"), 110);
        assert_eq!(
            reasons(&decision),
            vec![(REFUSED_REASON, true), (SIGNING_REASON, false)]
        );
        assert_eq!(
            phase(&decision),
            Some(("r1".into(), SessionSecretRotationPhase::Signing))
        );
    }

    #[test]
    fn while_paused_no_request_is_acted_on_and_no_rotation_moves() {
        let r1 = request("r1");
        let paused = |current, request, rollout: &Rollout| {
            decide(Inputs {
                current,
                request,
                rollout,
                paused: true,
                now: &at(100),
            })
        };
        assert_eq!(
            paused(None, Some(&r1), &Rollout::default()),
            RotationDecision::default()
        );
        let accepting = pass(None, Some(&r1), &Rollout::default(), 100)
            .status
            .expect("started");
        let held = paused(Some(&accepting), None, &rolled("r1/accepting"));
        assert_eq!(held.status.as_ref(), Some(&accepting));
        assert_eq!(held.plan.template.as_deref(), Some("r1/accepting"));
        assert!(held.news.is_empty());
    }

    fn deployment(generation: i64, status: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-app", "generation": generation},
            "spec": {"replicas": 3, "selector": {}, "template": {"metadata": {"annotations": {
                SESSION_SECRET_ROTATION_ANNOTATION: "r1/accepting"}}}},
            "status": status,
        }))
        .expect("a Deployment")
    }

    #[test]
    fn a_rollout_is_complete_only_when_seen_updated_available_and_without_old_pods() {
        let done = serde_json::json!({"observedGeneration": 2, "replicas": 3,
            "updatedReplicas": 3, "availableReplicas": 3, "readyReplicas": 3});
        let complete = Rollout::of(Some(&deployment(2, done.clone())));
        assert_eq!(complete, rolled("r1/accepting"));
        let mut not_yet = Vec::new();
        for (field, value) in [
            ("observedGeneration", 1),
            ("updatedReplicas", 2),
            ("availableReplicas", 2),
            ("replicas", 4),
            ("terminatingReplicas", 1),
        ] {
            let mut status = done.clone();
            status[field] = value.into();
            not_yet.push((field, Rollout::of(Some(&deployment(2, status))).complete));
        }
        assert!(not_yet.iter().all(|(_, complete)| !complete), "{not_yet:?}");
        assert_eq!(Rollout::of(None), Rollout::default());
    }
}
