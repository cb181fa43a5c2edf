//! Sessions in Redis.

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::support::TestApp;

fn session_cookie(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("sid="))
        .expect("a session cookie")
        .to_string()
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, value)| value.to_string())
        .expect("name=value")
}

async fn login(app: &TestApp, user_id: &Value, cookie: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/api/sessions", app.address))
        .json(&json!({ "user_id": user_id }));
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, format!("sid={cookie}"));
    }
    request.send().await.expect("sent")
}

async fn current(app: &TestApp, method: reqwest::Method, cookie: &str) -> reqwest::Response {
    app.client
        .request(method, format!("{}/api/sessions/current", app.address))
        .header(header::COOKIE, format!("sid={cookie}"))
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn a_session_is_created_read_and_deleted_with_safe_cookie_and_cache_headers() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let created = login(&app, &user["id"], None).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        created.headers()[header::CACHE_CONTROL],
        "private, no-store"
    );
    let set_cookie = session_cookie(&created);
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    assert!(
        !set_cookie.contains("Secure"),
        "cookieSecure is off in the test config"
    );
    let id = cookie_value(&set_cookie);
    assert_eq!(id.len(), 64, "256 random bits, hex");

    let read = current(&app, reqwest::Method::GET, &id).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()[header::CACHE_CONTROL], "private, no-store");
    let body: Value = read.json().await.expect("json");
    assert_eq!(body["session"]["user_id"], user["id"]);

    assert_eq!(
        current(&app, reqwest::Method::DELETE, &id).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        current(&app, reqwest::Method::GET, &id).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn logging_in_again_rotates_the_id_and_ends_the_old_session() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let first = cookie_value(&session_cookie(&login(&app, &user["id"], None).await));
    let second = cookie_value(&session_cookie(
        &login(&app, &user["id"], Some(&first)).await,
    ));
    assert_ne!(first, second);
    assert_eq!(
        current(&app, reqwest::Method::GET, &first).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        current(&app, reqwest::Method::GET, &second).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_cookie_is_secure_when_configured_and_unknown_users_cannot_log_in() {
    let app = TestApp::spawn_with(|config| config.sessions.cookie_secure = true).await;
    let user = app.create_user().await;
    let created = login(&app, &user["id"], None).await;
    assert!(session_cookie(&created).contains("; Secure"));
    assert_eq!(
        login(&app, &json!(123456789), None).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        current(&app, reqwest::Method::GET, "not-a-session")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}
