//! Rotation of the app's session secret on request (`scaledapp-operator rotate-session-secret`,
//! which writes the [`ROTATE_SESSION_SECRET_ANNOTATION`]), in two rolls of the app pods so that
//! no pod ever refuses a token another pod signed. The app signs with `SCALED_SESSION_SECRET`
//! and also accepts tokens signed under `SCALED_SESSION_SECRET_PREVIOUS` (`app/src/sessions.rs`
//! says how), both read from the `<name>-app` Secret when a container starts:
//!
//! 1. `Accepting`: `session-secret-previous` := a new value N, `session-secret` stays A; the app
//!    pod template's marker becomes `<id>/accepting`, so the pods roll. Every pod signs with A;
//!    the new ones also accept N, which nobody signs with yet.
//! 2. Once the app Deployment has rolled that out completely, `Signing`: the values are swapped
//!    (`session-secret` := N, `session-secret-previous` := A) and the marker becomes
//!    `<id>/signing`: the pods roll again, each signing with N and accepting A. Pods still in
//!    phase 1 accept N, so every pod accepts every token any pod signs.
//! 3. Once that is rolled out, the rotation is complete. A stays accepted until the next
//!    rotation's phase 1 replaces it, which voids the sessions signed under A (those signed in
//!    before this rotation's phase 2).
//!
//! The stage is observe (the app Deployment's rollout, from the pass's inventory; the live
//! Secret, read by the applier) -> [`decide`] (pure) -> act (the applier writes the Secret's
//! step, [`rotated`], before it applies the Deployment, so pods of the new template start with
//! the new values). State between passes is in `status.sessionSecretRotation`; the values are
//! only ever in the Secret.
//!
//! Worker pods are not rolled: they get the session secret only because the app's settings
//! loader requires it, and neither sign nor verify anything with it.

mod decide;
mod request;
mod secret_data;

#[cfg(test)]
mod tests;

pub use decide::{
    ACCEPTING_REASON, COMPLETED_REASON, Inputs, REFUSED_REASON, Rollout, RotationDecision,
    SIGNING_REASON, SecretStep, SessionSecretPlan, decide, marker,
};
pub use request::{
    ROTATE_SESSION_SECRET_ANNOTATION, SessionSecretRotationRequest, pending_rotation,
};
pub use secret_data::{OutOfStep, Rotated, rotated};
