//! Bad requests: every one is a 4xx with the JSON error body, never a 5xx.

use proptest::{prelude::*, test_runner::TestRunner};
use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::support::TestApp;

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON error body");
    (
        status,
        body["error"]["code"]
            .as_str()
            .expect("error.code")
            .to_string(),
    )
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(format!("{}/api/users", app.address))
        .header(header::CONTENT_TYPE, "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        error_code(response).await,
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(format!("{}/api/users", app.address))
        .header(header::CONTENT_TYPE, "text/plain")
        .body("hello")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        error_code(response).await,
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type".into()
        )
    );
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = TestApp::spawn().await;
    let huge = format!(
        "{{\"name\": \"{}\", \"email\": \"a@b.org\"}}",
        "x".repeat(200 * 1024)
    );
    let response = app
        .client
        .post(format!("{}/api/users", app.address))
        .header(header::CONTENT_TYPE, "application/json")
        .body(huge)
        .send()
        .await
        .expect("sent");
    assert_eq!(
        error_code(response).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into())
    );
}

#[tokio::test]
async fn invalid_fields_are_422_and_name_the_field_and_the_reason() {
    let app = TestApp::spawn().await;
    let password = crate::support::PASSWORD;
    let cases = [
        (
            serde_json::json!({ "name": "", "email": "a@b.org", "password": password }),
            "name",
        ),
        (
            serde_json::json!({ "name": "A", "email": "not-an-email", "password": password }),
            "email",
        ),
        (
            serde_json::json!({ "name": "A", "email": "a@b.org", "password": "too short" }),
            "password",
        ),
        (serde_json::json!({ "name": "A" }), "body"),
        (
            serde_json::json!({ "name": 5, "email": "a@b.org", "password": password }),
            "body",
        ),
    ];
    for (body, field) in cases {
        let response = app.post("/api/users", &body).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["field"], field, "{error}");
    }
    let missing: Value = app
        .post("/api/users", &serde_json::json!({ "name": "A" }))
        .await
        .json()
        .await
        .expect("json");
    assert!(
        missing["error"]["message"]
            .as_str()
            .expect("message")
            .contains("email"),
        "{missing}"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = TestApp::spawn().await;
    assert_eq!(
        error_code(app.get("/nope").await).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let response = app
        .client
        .delete(format!("{}/api/orders", app.address))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        error_code(response).await,
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );
}

#[test]
fn random_bodies_never_cause_a_server_error() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let app = runtime.block_on(TestApp::spawn());
    // Signed in, so order bodies get past the session check to the validation they exercise.
    let session = runtime.block_on(async {
        let user = app.create_user().await;
        app.session_of(&user).await
    });
    let paths = ["/api/users", "/api/orders", "/api/sessions"];
    let json_like = prop_oneof![
        any::<Vec<u8>>(),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        (any::<i64>(), "[ -~]{0,40}", any::<f64>()).prop_map(|(id, text, number)| {
            format!(r#"{{"user_id": {id}, "name": {text:?}, "email": {text:?}, "password": {text:?}, "items": [{{"sku": {text:?}, "quantity": {id}}}], "total": {number}}}"#)
                .into_bytes()
        }),
    ];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    runner
        .run(&(0..paths.len(), json_like), |(path, body)| {
            let (status, content_type) = runtime.block_on(async {
                let response = app
                    .client
                    .post(format!("{}{}", app.address, paths[path]))
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::COOKIE, format!("sid={session}"))
                    .body(body.clone())
                    .send()
                    .await
                    .expect("sent");
                let content_type = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|value| value.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                (response.status(), content_type)
            });
            prop_assert!(
                !status.is_server_error(),
                "{status} for {:?}",
                String::from_utf8_lossy(&body)
            );
            prop_assert!(
                content_type.starts_with("application/json"),
                "{status} with {content_type}"
            );
            Ok(())
        })
        .expect("no body causes a 5xx");
    drop(app);
}
