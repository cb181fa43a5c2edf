//! Sign-in with a password (failure limits per client and account, a per-client limit), sessions
//! in Redis (sliding and absolute lifetimes, written through to a replica), password changes and
//! password-set tokens.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use reqwest::{StatusCode, header};
use scaled_app::config::{AttemptPolicy, RoutePolicy};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{
    PASSWORD, RedisPair, SESSION_SECRET, TestApp, eventually, hex_token, session_cookie,
    session_key,
};

fn set_cookie(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("sid="))
        .expect("a session cookie")
        .to_string()
}

async fn sign_in(app: &TestApp, email: &Value, password: &str) -> reqwest::Response {
    sign_in_replacing(app, email, password, None).await
}

async fn sign_in_replacing(
    app: &TestApp,
    email: &Value,
    password: &str,
    cookie: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/api/sessions", app.address))
        .json(&json!({ "email": email, "password": password }));
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

async fn set_password(
    app: &TestApp,
    user_id: &Value,
    cookie: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = app
        .client
        .put(format!("{}/api/users/{user_id}/password", app.address))
        .json(body);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, format!("sid={cookie}"));
    }
    request.send().await.expect("sent")
}

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.expect("a JSON error"))
}

#[tokio::test]
async fn signing_in_with_the_password_opens_a_session_with_safe_cookie_and_cache_headers() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let created = sign_in(&app, &user["email"], PASSWORD).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        created.headers()[header::CACHE_CONTROL],
        "private, no-store"
    );
    let cookie = set_cookie(&created);
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "cookieSecure is off in the test config"
    );
    let token = session_cookie(&created).expect("a token");
    let fields: Vec<&str> = token.split('.').collect();
    assert_eq!(
        fields.len(),
        6,
        "v3.<id>.<user>.<generation>.<signed in>.<mac>: {token}"
    );
    assert_eq!(fields[0], "v3");
    let id = fields[1].to_string();
    assert_eq!(id.len(), 64, "256 random bits, hex");
    assert_eq!(fields[5].len(), 64, "an HMAC-SHA256");
    let body = created.text().await.expect("body");
    assert!(
        !body.contains(PASSWORD) && !body.contains("argon2"),
        "{body}"
    );

    let read = current(&app, reqwest::Method::GET, &token).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()[header::CACHE_CONTROL], "private, no-store");
    let body: Value = read.json().await.expect("json");
    assert_eq!(body["session"]["user_id"], user["id"]);

    // Signing out deletes the session: the cookie is worthless afterwards.
    assert_eq!(
        current(&app, reqwest::Method::DELETE, &token)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        current(&app, reqwest::Method::GET, &token).await.status(),
        StatusCode::NOT_FOUND
    );
    let after = app
        .client
        .get(format!("{}/api/me", app.address))
        .header(header::COOKIE, format!("sid={token}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_user_id_alone_no_longer_opens_a_session() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let response = app
        .post("/api/sessions", &json!({ "user_id": user["id"] }))
        .await;
    assert!(session_cookie(&response).is_none());
    let (status, body) = error_of(response).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("email")),
        "{body}"
    );
}

#[tokio::test]
async fn a_wrong_password_an_unknown_email_and_an_account_without_password_fail_alike() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let legacy_email = format!("legacy-{}@example.org", hex_token());
    scaled_app::db::users::create(&app.state.cluster, "Legacy", &legacy_email, None)
        .await
        .expect("a user created before passwords existed");
    let attempts = [
        (json!(user["email"]), "not the password at all"),
        (
            json!(format!("nobody-{}@example.org", hex_token())),
            PASSWORD,
        ),
        (json!(legacy_email), PASSWORD),
        (json!(legacy_email), ""),
    ];
    let mut bodies = Vec::new();
    for (email, password) in attempts {
        let before = app.state.passwords.verifications();
        let response = sign_in(&app, &email, password).await;
        assert!(session_cookie(&response).is_none());
        let (status, body) = error_of(response).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{email}: {body}");
        assert_eq!(
            app.state.passwords.verifications(),
            before + 1,
            "{email}: one full argon2 verification, like a wrong password"
        );
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "one answer for all: {bodies:?}"
    );
    assert_eq!(bodies[0]["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn passwords_are_stored_as_argon2id_hashes_and_never_returned() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let text = user.to_string();
    assert!(
        !text.contains(PASSWORD) && !text.contains("password"),
        "{text}"
    );
    let id = user["id"].as_i64().expect("id");
    let pool = app.primary(app.shard_of(id)).await;
    let stored: Option<String> =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("row");
    let stored = stored.expect("a hash is set at sign-up");
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    assert!(!stored.contains(PASSWORD));
    for path in [format!("/api/users/{id}"), format!("/api/users?ids={id}")] {
        let body = app.get_consistent(&path).await.text().await.expect("body");
        assert!(
            !body.contains("argon2") && !body.contains("password"),
            "{body}"
        );
    }
    let me = app
        .get_as(&user, "/api/me")
        .await
        .text()
        .await
        .expect("body");
    assert!(!me.contains("argon2") && !me.contains("password"), "{me}");
}

#[tokio::test]
async fn sign_up_refuses_passwords_that_are_too_short_or_too_long_saying_why() {
    let app = TestApp::spawn().await;
    for password in ["short".to_string(), "x".repeat(129)] {
        let response = app
            .post(
                "/api/users",
                &json!({ "name": "A", "email": format!("p-{}@example.org", hex_token()), "password": password }),
            )
            .await;
        let (status, body) = error_of(response).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["field"], "password");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("12 to 128 characters")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn signing_in_again_rotates_the_id_and_ends_the_old_session() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let first = session_cookie(&sign_in(&app, &user["email"], PASSWORD).await).expect("first");
    let second =
        session_cookie(&sign_in_replacing(&app, &user["email"], PASSWORD, Some(&first)).await)
            .expect("second");
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
async fn the_cookie_is_secure_when_configured_and_junk_cookies_are_no_session() {
    let app = TestApp::spawn_with(|config| config.sessions.cookie_secure = true).await;
    let user = app.create_user().await;
    let created = sign_in(&app, &user["email"], PASSWORD).await;
    assert!(set_cookie(&created).contains("; Secure"));
    assert_eq!(
        current(&app, reqwest::Method::GET, "not-a-session")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn sessions_opened_without_a_password_before_the_upgrade_are_not_honoured() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    // What the old `POST /api/sessions {user_id}` stored: `session:<SHA-256(secret || id)>`.
    let id = hex_token().repeat(4);
    let mut hasher = Sha256::new();
    hasher.update(SESSION_SECRET.as_bytes());
    hasher.update(id.as_bytes());
    let key = format!("session:{}", hex::encode(hasher.finalize()));
    let mut redis = app.redis().await;
    let data = json!({ "user_id": user["id"], "created_at": "2026-01-01T00:00:00Z" });
    let _: () = redis
        .set_ex(&key, data.to_string(), 3600)
        .await
        .expect("set");
    assert_eq!(
        current(&app, reqwest::Method::GET, &id).await.status(),
        StatusCode::NOT_FOUND
    );
    let rename = app
        .client
        .put(format!("{}/api/users/{}", app.address, user["id"]))
        .header(header::COOKIE, format!("sid={id}"))
        .json(&json!({ "name": "Hijacked" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(rename.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn repeated_failures_for_one_account_are_slowed_and_the_owner_gets_back_in_after_the_window()
{
    let app = TestApp::spawn_tuned(
        |_| {},
        |settings| {
            settings.sign_in = AttemptPolicy {
                failures: 3,
                account_failures: 100,
                // Long enough that the failures are still in the window on a loaded machine.
                window: Duration::from_secs(10),
            };
        },
    )
    .await;
    let user = app.create_user().await;
    let other = app.create_user().await;
    // A success does not count: the owner can sign in any number of times.
    for _ in 0..4 {
        assert_eq!(
            sign_in(&app, &user["email"], PASSWORD).await.status(),
            StatusCode::CREATED
        );
    }
    for _ in 0..3 {
        assert_eq!(
            sign_in(&app, &user["email"], "a wrong guess here")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // The fourth attempt in the window is refused before any password check, even the right one,
    // for the email in any case; other accounts are unaffected.
    let before = app.state.passwords.verifications();
    for email in [
        json!(user["email"]),
        json!(user["email"].as_str().map(str::to_uppercase)),
    ] {
        let response = sign_in(&app, &email, PASSWORD).await;
        assert!(response.headers().contains_key("retry-after"));
        let (status, body) = error_of(response).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["code"], "too_many_attempts");
    }
    assert_eq!(app.state.passwords.verifications(), before);
    assert_eq!(
        sign_in(&app, &other["email"], PASSWORD).await.status(),
        StatusCode::CREATED
    );
    // Not locked out for good: once the failures leave the window, the password works again.
    eventually(
        "the owner to sign in again",
        Duration::from_secs(60),
        || async {
            (sign_in(&app, &user["email"], PASSWORD).await.status() == StatusCode::CREATED)
                .then_some(())
        },
    )
    .await;
}

/// A sign-in from `address` (behind one trusted proxy, the address it appended).
async fn sign_in_from(
    app: &TestApp,
    address: &str,
    email: &Value,
    password: &str,
) -> reqwest::Response {
    app.client
        .post(format!("{}/api/sessions", app.address))
        .header("x-forwarded-for", address)
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn failures_from_an_attackers_client_lock_out_that_client_but_not_the_owner_on_another() {
    // The production policy: 5 failures per account and client, 100 per account.
    let app = TestApp::spawn_with(|config| config.rate_limit.trusted_proxy_hops = 1).await;
    let victim = app.create_user().await;
    let email = &victim["email"];
    let attacker = "203.0.113.66";
    let failures = AttemptPolicy::default().failures;
    for _ in 0..failures {
        assert_eq!(
            sign_in_from(&app, attacker, email, "a wrong guess here")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // The attacker's client is refused now, even with the right password...
    let refused = sign_in_from(&app, attacker, email, PASSWORD).await;
    let retry_after: u64 = refused.headers()[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after > 0);
    let (status, body) = error_of(refused).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "too_many_attempts");
    // ...while the owner, from another client, signs in...
    let owner = sign_in_from(&app, "198.51.100.7", email, PASSWORD).await;
    assert_eq!(owner.status(), StatusCode::CREATED);
    let session = session_cookie(&owner).expect("a session");
    // ...and can still change the password (the owner's session is the client there).
    let changed = set_password(
        &app,
        &victim["id"],
        Some(&session),
        &json!({ "password": "a brand new passphrase", "current_password": PASSWORD }),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn the_per_account_backstop_refuses_every_client_once_many_clients_failed_together() {
    let app = TestApp::spawn_tuned(
        |config| config.rate_limit.trusted_proxy_hops = 1,
        |settings| {
            settings.sign_in = AttemptPolicy {
                failures: 2,
                account_failures: 3,
                window: Duration::from_secs(60),
            };
        },
    )
    .await;
    let user = app.create_user().await;
    let email = &user["email"];
    for address in ["203.0.113.1", "203.0.113.1", "203.0.113.2"] {
        assert_eq!(
            sign_in_from(&app, address, email, "a wrong guess here")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // A client refused by its own window takes no place in the account's.
    assert_eq!(
        sign_in_from(&app, "203.0.113.1", email, "a wrong guess here")
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let (status, body) = error_of(sign_in_from(&app, "198.51.100.7", email, PASSWORD).await).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "too_many_attempts");
}

#[tokio::test]
async fn one_client_signing_in_to_many_accounts_is_rate_limited_and_others_are_not() {
    let app = TestApp::spawn_tuned(
        |config| config.rate_limit.trusted_proxy_hops = 1,
        |settings| {
            settings.limits.sign_in = RoutePolicy {
                requests: 3,
                window: Duration::from_secs(60),
            };
        },
    )
    .await;
    let user = app.create_user().await;
    let sprayer = "203.0.113.66";
    for _ in 0..3 {
        let email = json!(format!("spray-{}@example.org", hex_token()));
        assert_eq!(
            sign_in_from(&app, sprayer, &email, "a common password")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let refused = sign_in_from(&app, sprayer, &user["email"], PASSWORD).await;
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    let (status, body) = error_of(refused).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        sign_in_from(&app, "198.51.100.7", &user["email"], PASSWORD)
            .await
            .status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn an_active_session_is_refused_once_its_absolute_lifetime_has_passed() {
    let lifetime = Duration::from_secs(3);
    let app = TestApp::spawn_tuned(|_| {}, |settings| settings.session_lifetime = lifetime).await;
    assert_eq!(
        app.config.sessions.ttl_seconds, 3600,
        "the sliding TTL is long"
    );
    let user = app.create_user().await;
    let before_sign_in = Instant::now();
    let signed_in = sign_in(&app, &user["email"], PASSWORD).await;
    let cookie = session_cookie(&signed_in).expect("a session");
    let me = || {
        let app = &app;
        let cookie = &cookie;
        async move {
            app.client
                .get(format!("{}/api/me", app.address))
                .header(header::COOKIE, format!("sid={cookie}"))
                .send()
                .await
                .expect("sent")
                .status()
        }
    };
    // Used every 100 ms, so its sliding TTL never runs out.
    let mut uses = 0;
    loop {
        let status = me().await;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        uses += 1;
        assert!(
            before_sign_in.elapsed() < lifetime + Duration::from_secs(20),
            "still accepted long after its lifetime"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        before_sign_in.elapsed() >= lifetime,
        "refused before its lifetime was over"
    );
    assert!(uses >= 5, "it was used within its lifetime, {uses} times");
    let mut redis = app.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("session:v2:*")
        .query_async(&mut redis)
        .await
        .expect("keys");
    assert!(keys.is_empty(), "the refused session is deleted: {keys:?}");
    assert_eq!(
        current(&app, reqwest::Method::GET, &cookie).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_password_change_needs_the_owners_session_and_current_password() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let intruder = app.create_user().await;
    let new_password = "a brand new passphrase";
    let change = json!({ "password": new_password, "current_password": PASSWORD });

    let (status, _) = error_of(set_password(&app, &user["id"], None, &change).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no session");
    let intruders = app.session_of(&intruder).await;
    let (status, _) =
        error_of(set_password(&app, &user["id"], Some(&intruders), &change).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another user's session");

    let session = app.session_of(&user).await;
    let (status, body) = error_of(
        set_password(
            &app,
            &user["id"],
            Some(&session),
            &json!({ "password": new_password }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "current_password");
    let (status, _) = error_of(
        set_password(
            &app,
            &user["id"],
            Some(&session),
            &json!({ "password": new_password, "current_password": "not the password" }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "wrong current password");
    let (status, body) = error_of(
        set_password(
            &app,
            &user["id"],
            Some(&session),
            &json!({ "password": "short", "current_password": PASSWORD }),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["field"], "password");

    // A session on another device, opened with the old password.
    let elsewhere =
        session_cookie(&sign_in(&app, &user["email"], PASSWORD).await).expect("a second session");
    let changed = set_password(&app, &user["id"], Some(&session), &change).await;
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    let rotated = session_cookie(&changed).expect("the caller gets a new session id");
    assert_eq!(
        sign_in(&app, &user["email"], PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        sign_in(&app, &user["email"], new_password).await.status(),
        StatusCode::CREATED
    );
    // Every session opened before the change is over; the caller's new one works.
    let me = |cookie: String| {
        let app = &app;
        async move {
            app.client
                .get(format!("{}/api/me", app.address))
                .header(header::COOKIE, format!("sid={cookie}"))
                .send()
                .await
                .expect("sent")
                .status()
        }
    };
    assert_eq!(me(elsewhere).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(session).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me(rotated).await, StatusCode::OK);
}

#[tokio::test]
async fn setting_a_password_with_a_token_ends_every_session_of_the_user() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let stolen = app.session_of(&user).await;
    let token = app
        .state
        .password_tokens
        .issue(user["id"].as_i64().expect("id"))
        .await
        .expect("a token");
    let reset = set_password(
        &app,
        &user["id"],
        None,
        &json!({ "token": token, "password": "after the compromise" }),
    )
    .await;
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    assert!(session_cookie(&reset).is_none(), "a token opens no session");
    assert_eq!(
        current(&app, reqwest::Method::GET, &stolen).await.status(),
        StatusCode::NOT_FOUND
    );
    let use_it = app
        .client
        .put(format!("{}/api/users/{}", app.address, user["id"]))
        .header(header::COOKIE, format!("sid={stolen}"))
        .json(&json!({ "name": "Still mine" }))
        .send()
        .await
        .expect("sent");
    assert_eq!(use_it.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_account_without_a_password_gets_one_with_a_one_time_token_from_the_cli() {
    let app = TestApp::spawn().await;
    let email = format!("legacy-{}@example.org", hex_token());
    let created = scaled_app::db::users::create(&app.state.cluster, "Legacy", &email, None)
        .await
        .expect("a user created before passwords existed");
    let scaled_app::db::users::Created::User(user, _) = created else {
        panic!("created");
    };
    assert_eq!(
        sign_in(&app, &json!(email), PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let no_credential = set_password(
        &app,
        &json!(user.id),
        None,
        &json!({ "password": PASSWORD }),
    )
    .await;
    assert_eq!(no_credential.status(), StatusCode::UNAUTHORIZED);

    // The operator's command, run as in a pod.
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("config.json");
    std::fs::write(&path, app.config.to_json()).expect("write config");
    let password_token = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_scaled-app"))
            .args(["password-token", "--user-id", &user.id.to_string()])
            .env("SCALED_CONFIG", &path)
            .env("SCALED_SESSION_SECRET", SESSION_SECRET)
            .env("SCALED_DATABASE_PASSWORD", crate::support::APP_PASSWORD)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run password-token")
    };
    let output = password_token();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert_eq!(token.len(), 64, "{token}");

    // Bound to its user...
    let other = app.create_user().await;
    let wrong_user = set_password(
        &app,
        &other["id"],
        None,
        &json!({ "token": token, "password": PASSWORD }),
    )
    .await;
    assert_eq!(wrong_user.status(), StatusCode::UNAUTHORIZED);
    // ...which used it up: tokens are single-use, whatever happened.
    let token = String::from_utf8(password_token().stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let body = json!({ "token": token, "password": "the legacy user's own" });
    assert_eq!(
        set_password(&app, &json!(user.id), None, &body)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        set_password(&app, &json!(user.id), None, &body)
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "a token works once"
    );
    assert_eq!(
        sign_in(&app, &json!(email), "the legacy user's own")
            .await
            .status(),
        StatusCode::CREATED
    );
    // An unknown user gets no token.
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_scaled-app"))
        .args(["password-token", "--user-id", "424242"])
        .env("SCALED_CONFIG", &path)
        .env("SCALED_SESSION_SECRET", SESSION_SECRET)
        .env("SCALED_DATABASE_PASSWORD", crate::support::APP_PASSWORD)
        .output()
        .expect("run password-token");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no user 424242"));
}

#[tokio::test]
async fn benchmark_sessions_from_the_cli_sign_seeded_users_in_and_a_second_run_replaces_them() {
    use std::os::unix::fs::PermissionsExt;

    let app = TestApp::spawn().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let config = directory.path().join("config.json");
    std::fs::write(&config, app.config.to_json()).expect("write config");
    let ids_path = directory.path().join("ids.txt");
    let sessions_path = directory.path().join("sessions.txt");
    let cli = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_scaled-app"))
            .args(args)
            .env("SCALED_CONFIG", &config)
            .env("SCALED_SESSION_SECRET", SESSION_SECRET)
            .env("SCALED_DATABASE_PASSWORD", crate::support::APP_PASSWORD)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run scaled-app")
    };
    let open_sessions = |ids: &std::path::Path| {
        let output = cli(&[
            "open-sessions".as_ref(),
            "--ids".as_ref(),
            ids.as_os_str(),
            "--concurrency".as_ref(),
            "2".as_ref(),
            "--output".as_ref(),
            sessions_path.as_os_str(),
        ]);
        assert!(output.status.success(), "{output:?}");
        std::fs::read_to_string(&sessions_path)
            .expect("the sessions file")
            .lines()
            .map(|line| {
                let (user, cookie) = line.split_once('\t').expect("<id>\\t<cookie>");
                (user.parse::<i64>().expect("a user id"), cookie.to_string())
            })
            .collect::<Vec<_>>()
    };
    let order_as = |cookie: String| {
        let request = app
            .client
            .post(format!("{}/api/orders", app.address))
            .header(header::COOKIE, cookie)
            .json(&json!({ "items": [{ "sku": "bench", "quantity": 1 }], "total": 9.99 }));
        async move { request.send().await.expect("sent") }
    };

    // Users as the benchmark seeds them: without passwords.
    let seeded = cli(&[
        "seed".as_ref(),
        "--users".as_ref(),
        "3".as_ref(),
        "--output".as_ref(),
        ids_path.as_os_str(),
    ]);
    assert!(seeded.status.success(), "{seeded:?}");
    let ids: Vec<i64> = std::fs::read_to_string(&ids_path)
        .expect("the ids file")
        .lines()
        .map(|line| line.parse().expect("an id"))
        .collect();
    assert_eq!(ids.len(), 3);
    // A user whose password changed since: the session must be opened under the new generation.
    app.state.sessions.end_all(ids[0]).await.expect("bump");

    let first = open_sessions(&ids_path);
    assert_eq!(
        first.iter().map(|(user, _)| *user).collect::<Vec<_>>(),
        ids,
        "one line per user, in the order of the ids"
    );
    let mode = std::fs::metadata(&sessions_path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "sessions sign users in");
    let mut redis = app.redis().await;
    for (user, cookie) in &first {
        let session = cookie
            .strip_prefix("sid=")
            .expect("the configured cookie name");
        // Stored like a sign-in's, with the configured lifetime.
        let ttl: i64 = redis.ttl(session_key(session)).await.expect("ttl");
        let configured = app.config.sessions.ttl_seconds as i64;
        assert!(
            ttl > configured - 60 && ttl <= configured,
            "{ttl} vs {configured}"
        );
        let placed = order_as(cookie.clone()).await;
        assert_eq!(placed.status(), StatusCode::CREATED);
        let order: Value = placed.json().await.expect("an order");
        assert_eq!(order["user_id"], json!(user), "the session's user buys");
    }

    // Every run signs in again: new ids, and the previous run's sessions end.
    let second = open_sessions(&ids_path);
    assert_eq!(second.len(), 3);
    for ((_, old), (_, new)) in first.iter().zip(&second) {
        assert_ne!(old, new);
        assert_eq!(
            order_as(old.clone()).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(order_as(new.clone()).await.status(), StatusCode::CREATED);
    }

    // Ids of another database open nothing.
    let stale = directory.path().join("stale.txt");
    std::fs::write(&stale, "987654321\n").expect("write ids");
    let refused = cli(&[
        "open-sessions".as_ref(),
        "--ids".as_ref(),
        stale.as_os_str(),
        "--output".as_ref(),
        directory.path().join("none.txt").as_os_str(),
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no user 987654321"),
        "{refused:?}"
    );
    assert!(!directory.path().join("none.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_replica_required_sign_ins_and_sign_outs_reach_it_before_the_answer_and_succeed_without_it()
 {
    let pair = RedisPair::start();
    let app = TestApp::spawn_with(|config| {
        config.redis.url = pair.primary.url(1);
        config.redis.confirm_replicas = 1;
    })
    .await;
    let waits = |operation: &'static str, result: &'static str| {
        let app = &app;
        async move {
            app.metric(
                "redis_replication_waits_total",
                &[
                    &format!(r#"operation="{operation}""#),
                    &format!(r#"result="{result}""#),
                ],
            )
            .await
        }
    };
    let mut replica = redis::Client::open(pair.replica.url(1))
        .expect("a redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the replica");
    let user = app.create_user().await;

    // An answer after a confirmed wait comes once the replica holds the session, and once it
    // holds its end. On a loaded machine a 100 ms `WAIT` can time out with the replica up (the
    // sign-in succeeds all the same, and waits are skipped for a second after): the claim is
    // about confirmed answers, so each step is tried until one is confirmed.
    let mut kept = None;
    for _ in 0..10 {
        let before = waits("session_create", "confirmed").await;
        let response = sign_in(&app, &user["email"], PASSWORD).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let session = session_cookie(&response).expect("a session");
        if waits("session_create", "confirmed").await > before {
            kept = Some(session);
            break;
        }
        tokio::time::sleep(scaled_app::sessions::SKIP_WAITS_FOR).await;
    }
    let kept = kept.expect("a sign-in confirmed by the replica in 10 tries");
    let on_replica: bool = replica.exists(session_key(&kept)).await.expect("exists");
    assert!(on_replica, "the replica holds the session at the answer");
    let mut ended = None;
    for _ in 0..10 {
        let response = sign_in(&app, &user["email"], PASSWORD).await;
        let session = session_cookie(&response).expect("a second session");
        tokio::time::sleep(scaled_app::sessions::SKIP_WAITS_FOR).await;
        let before = waits("session_revoke", "confirmed").await;
        assert_eq!(
            current(&app, reqwest::Method::DELETE, &session)
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        if waits("session_revoke", "confirmed").await > before {
            ended = Some(session);
            break;
        }
    }
    let ended = ended.expect("a sign-out confirmed by the replica in 10 tries");
    let on_replica: bool = replica.exists(session_key(&ended)).await.expect("exists");
    assert!(!on_replica, "the replica holds the sign-out at the answer");

    // A failover: the replica takes over, and a pod on it honours the one and not the other.
    pair.replica.promote();
    let mut config = app.config.clone();
    config.redis.url = pair.replica.url(1);
    let after = TestApp::spawn_config(config).await;
    assert_eq!(
        current(&after, reqwest::Method::GET, &kept).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        current(&after, reqwest::Method::GET, &ended).await.status(),
        StatusCode::NOT_FOUND
    );

    // The old primary has no replica now: sign-ins and sign-outs on it still succeed, after at
    // most one short wait (counted, not timed: the sign-in's password hash takes longer than
    // the wait on a loaded machine), and the next ones do not wait at all.
    tokio::time::sleep(scaled_app::sessions::SKIP_WAITS_FOR).await;
    let (unconfirmed_before, skipped_before) = (
        waits("session_create", "unconfirmed").await,
        waits("session_revoke", "skipped").await,
    );
    let unconfirmed = sign_in(&app, &user["email"], PASSWORD).await;
    assert_eq!(unconfirmed.status(), StatusCode::CREATED);
    let unconfirmed = session_cookie(&unconfirmed).expect("a session");
    assert_eq!(
        waits("session_create", "unconfirmed").await - unconfirmed_before,
        1.0
    );
    assert_eq!(
        current(&app, reqwest::Method::DELETE, &unconfirmed)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        waits("session_revoke", "skipped").await - skipped_before,
        1.0
    );
}

/// The session secret before a rotation in the rotation tests, and the one after it.
const OLD_SECRET: &str = "the session secret before the rotation";
const NEW_SECRET: &str = "the session secret after the rotation";

/// Process settings with `current` as the session secret and `previous` as the one before it.
fn secrets(
    current: &'static str,
    previous: Option<&'static str>,
) -> impl FnOnce(&mut scaled_app::config::Settings) {
    move |settings| {
        settings.session_secret = scaled_contract::Secret::new(current);
        settings.session_secret_previous = previous.map(scaled_contract::Secret::new);
    }
}

/// Another pod on `app`'s database and Redis, with the given secrets.
async fn pod_with(app: &TestApp, current: &'static str, previous: Option<&'static str>) -> TestApp {
    TestApp::spawn_settings(app.config.clone(), secrets(current, previous)).await
}

/// The Redis key of the session `cookie` names if it was stored under `secret`.
fn key_under(secret: &str, cookie: &str) -> String {
    let id = cookie
        .strip_prefix("v3.")
        .and_then(|rest| rest.split('.').next())
        .expect("a token");
    let mut hasher = Sha256::new();
    hasher.update(secret.as_bytes());
    hasher.update(id.as_bytes());
    format!("session:v2:{}", hex::encode(hasher.finalize()))
}

/// The status of `GET /api/me` with the session cookie `cookie`.
async fn me_with(app: &TestApp, cookie: &str) -> StatusCode {
    app.client
        .get(format!("{}/api/me", app.address))
        .header(header::COOKIE, format!("sid={cookie}"))
        .send()
        .await
        .expect("sent")
        .status()
}

async fn stored(app: &TestApp, key: &str) -> bool {
    let mut redis = app.redis().await;
    redis.exists(key).await.expect("exists")
}

#[tokio::test]
async fn a_session_from_before_a_rotation_works_after_it_and_signing_out_deletes_it_under_the_old_key()
 {
    let before = TestApp::spawn_tuned(|_| {}, secrets(OLD_SECRET, None)).await;
    let user = before.create_user().await;
    let token = session_cookie(&sign_in(&before, &user["email"], PASSWORD).await).expect("token");
    let rotated = pod_with(&before, NEW_SECRET, Some(OLD_SECRET)).await;
    let retired = pod_with(&before, NEW_SECRET, None).await;

    assert_eq!(me_with(&rotated, &token).await, StatusCode::OK);
    let read = current(&rotated, reqwest::Method::GET, &token).await;
    assert_eq!(read.status(), StatusCode::OK);
    let body: Value = read.json().await.expect("json");
    assert_eq!(body["session"]["user_id"], user["id"]);
    assert!(stored(&rotated, &key_under(OLD_SECRET, &token)).await);
    assert!(!stored(&rotated, &key_under(NEW_SECRET, &token)).await);

    // Without the previous secret the token is refused although well-formed and its session is
    // still in Redis.
    assert_eq!(token.split('.').count(), 6, "{token}");
    assert_eq!(me_with(&retired, &token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        current(&retired, reqwest::Method::GET, &token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(me_with(&rotated, &token).await, StatusCode::OK);

    // Signing out on the rotated pod ends it everywhere.
    assert_eq!(
        current(&rotated, reqwest::Method::DELETE, &token)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert!(!stored(&rotated, &key_under(OLD_SECRET, &token)).await);
    assert_eq!(me_with(&rotated, &token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me_with(&before, &token).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn after_a_rotation_sign_ins_carry_tokens_of_the_new_secret_and_replace_a_session_of_the_old()
{
    let before = TestApp::spawn_tuned(|_| {}, secrets(OLD_SECRET, None)).await;
    let user = before.create_user().await;
    let old = session_cookie(&sign_in(&before, &user["email"], PASSWORD).await).expect("token");
    let rotated = pod_with(&before, NEW_SECRET, Some(OLD_SECRET)).await;
    let retired = pod_with(&before, NEW_SECRET, None).await;

    let new =
        session_cookie(&sign_in_replacing(&rotated, &user["email"], PASSWORD, Some(&old)).await)
            .expect("a new token");
    assert!(stored(&rotated, &key_under(NEW_SECRET, &new)).await);
    assert_eq!(me_with(&retired, &new).await, StatusCode::OK);
    assert_eq!(me_with(&rotated, &new).await, StatusCode::OK);
    // A pod that knows only the old secret cannot verify it.
    assert_eq!(me_with(&before, &new).await, StatusCode::UNAUTHORIZED);
    // The session it replaced is gone, from Redis too.
    assert!(!stored(&rotated, &key_under(OLD_SECRET, &old)).await);
    assert_eq!(me_with(&rotated, &old).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_password_change_with_a_session_of_the_old_secret_moves_it_to_the_new_one() {
    let before = TestApp::spawn_tuned(|_| {}, secrets(OLD_SECRET, None)).await;
    let user = before.create_user().await;
    let old = session_cookie(&sign_in(&before, &user["email"], PASSWORD).await).expect("token");
    let rotated = pod_with(&before, NEW_SECRET, Some(OLD_SECRET)).await;
    let retired = pod_with(&before, NEW_SECRET, None).await;

    let changed = set_password(
        &rotated,
        &user["id"],
        Some(&old),
        &json!({ "password": "a passphrase after the rotation", "current_password": PASSWORD }),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    let new = session_cookie(&changed).expect("the caller's session, under a new id");
    assert_eq!(me_with(&retired, &new).await, StatusCode::OK);
    assert!(!stored(&rotated, &key_under(OLD_SECRET, &old)).await);
    assert_eq!(me_with(&rotated, &old).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_password_set_token_issued_before_a_rotation_is_redeemed_after_it_until_the_old_secret_goes()
 {
    let before = TestApp::spawn_tuned(|_| {}, secrets(OLD_SECRET, None)).await;
    let user = before.create_user().await;
    let user_id = user["id"].as_i64().expect("id");
    let rotated = pod_with(&before, NEW_SECRET, Some(OLD_SECRET)).await;
    let retired = pod_with(&before, NEW_SECRET, None).await;
    let issue = || async {
        before
            .state
            .password_tokens
            .issue(user_id)
            .await
            .expect("a token")
    };
    let redeem = |app, token| redeem_password_token(app, &user["id"], token);
    assert_eq!(
        redeem(&retired, issue().await).await,
        StatusCode::UNAUTHORIZED
    );
    let token = issue().await;
    assert_eq!(
        redeem(&rotated, token.clone()).await,
        StatusCode::NO_CONTENT
    );
    // Used up: once only.
    assert_eq!(redeem(&rotated, token).await, StatusCode::UNAUTHORIZED);
}

/// The status of setting `user_id`'s password with the password-set token `token`.
async fn redeem_password_token(app: &TestApp, user_id: &Value, token: String) -> StatusCode {
    set_password(
        app,
        user_id,
        None,
        &json!({ "token": token, "password": "set with a password-set token" }),
    )
    .await
    .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_away_a_session_from_before_a_rotation_is_honoured_on_its_token_until_the_old_secret_goes()
 {
    // A Redis of this test's own: it is stopped.
    let dir = tempfile::Builder::new()
        .prefix("scaled-app-redis-")
        .tempdir()
        .expect("create a temporary directory");
    let redis = crate::support::RedisServer::stopped(dir.path());
    redis.start();
    let stack = crate::support::Stack::shared();
    let database = stack.create_database().await;
    let mut config = crate::support::test_config(stack, &database, 0);
    config.redis.url = redis.url(0);
    let before = TestApp::spawn_settings(config, secrets(OLD_SECRET, None)).await;
    let user = before.create_user().await;
    let old = session_cookie(&sign_in(&before, &user["email"], PASSWORD).await).expect("token");
    let rotated = pod_with(&before, NEW_SECRET, Some(OLD_SECRET)).await;
    let retired = pod_with(&before, NEW_SECRET, None).await;
    let new = session_cookie(&sign_in(&rotated, &user["email"], PASSWORD).await).expect("token");
    let forged = old.replacen(
        &format!(".{}.", user["id"]),
        &format!(".{}.", user["id"].as_i64().expect("id") + 1),
        1,
    );
    assert_ne!(forged, old);

    redis.stop();
    let offline_before = rotated.metric("sessions_verified_offline_total", &[]).await;
    assert_eq!(me_with(&rotated, &old).await, StatusCode::OK);
    assert_eq!(
        rotated.metric("sessions_verified_offline_total", &[]).await - offline_before,
        1.0,
        "signed in on the token alone"
    );
    assert_eq!(me_with(&rotated, &new).await, StatusCode::OK);
    assert_eq!(me_with(&rotated, &forged).await, StatusCode::UNAUTHORIZED);
    // Without the previous secret: the new secret's token is honoured, the old one's is not.
    assert_eq!(me_with(&retired, &new).await, StatusCode::OK);
    assert_eq!(me_with(&retired, &old).await, StatusCode::UNAUTHORIZED);
}
