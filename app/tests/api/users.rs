//! Users: sign-up (neutral answers, notices to the owner, rate limits), uniqueness across shards,
//! reads with HTTP caching, updates, batches, pages.

use std::{collections::HashSet, time::Duration};

use redis::AsyncCommands;
use reqwest::{StatusCode, header};
use scaled_app::{config::RoutePolicy, queue::EMAIL_STREAM};
use serde_json::{Value, json};

use crate::support::{PASSWORD, TestApp, eventually, hex_token, public};

/// The sign-up answer: status, `Cache-Control`, and the body.
async fn answer(response: reqwest::Response) -> (StatusCode, String, Value) {
    let status = response.status();
    let cache_control = response.headers()[header::CACHE_CONTROL]
        .to_str()
        .expect("ascii")
        .to_string();
    (status, cache_control, response.json().await.expect("json"))
}

fn keys(body: &Value) -> Vec<String> {
    let mut keys: Vec<String> = body
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn creating_a_user_answers_202_with_its_id_and_a_location() {
    let app = TestApp::spawn().await;
    let email = format!("new-{}@example.org", hex_token());
    let response = app
        .post(
            "/api/users",
            &json!({ "name": " Ada ", "email": email.to_uppercase(), "password": PASSWORD }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(response.headers().contains_key("x-consistency-token"));
    let user: Value = response.json().await.expect("json");
    assert_eq!(location, format!("/api/users/{}", user["id"]));
    assert_eq!(user["name"], "Ada");
    assert_eq!(user["email"], email, "emails are stored normalised");
    assert!(user["id"].as_i64().expect("id") > 0);
    assert!(user["message"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_up_with_a_registered_address_answers_like_a_new_one_costs_no_hash_and_tells_the_owner()
 {
    let app = TestApp::spawn().await;
    let owner = app.create_user().await;
    let owner_id = owner["id"].as_i64().expect("id");
    let address = owner["email"].as_str().expect("email").to_string();
    let sign_up = |name: &'static str, email: String| {
        let app = &app;
        async move {
            app.post(
                "/api/users",
                &json!({ "name": name, "email": email, "password": PASSWORD }),
            )
            .await
        }
    };
    let fresh = sign_up("Bob", format!("bob-{}@example.org", hex_token())).await;
    let hashes = app.state.passwords.hashes();
    // In any case: the address is normalised before the check.
    let duplicate = sign_up("Mallory", address.to_uppercase()).await;
    assert_eq!(
        app.state.passwords.hashes(),
        hashes,
        "a registered address costs no password hash"
    );
    let (fresh_status, fresh_cache, fresh) = answer(fresh).await;
    let (status, cache, body) = answer(duplicate).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(status, fresh_status);
    assert_eq!(cache, fresh_cache);
    assert_eq!(keys(&body), keys(&fresh), "{body} vs {fresh}");
    assert_eq!(body["message"], fresh["message"]);
    assert!(fresh["id"].is_i64());
    assert!(body["id"].is_null() && body["email"].is_null(), "{body}");

    // The owner hears of it through the email queue: the outbox row is relayed to the stream,
    // and the email worker writes the notice to the owner's address.
    let mut redis = app.redis().await;
    eventually(
        "the notice to reach the email stream",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move {
                let length: u64 = redis.xlen(EMAIL_STREAM).await.ok()?;
                (length == 1).then_some(())
            }
        },
    )
    .await;
    let mut worker = crate::worker::worker(&app, EMAIL_STREAM, "test-notices").await;
    assert_eq!(crate::worker::step_until_idle(&mut worker).await, 1);
    let pool = app.primary(app.shard_of(owner_id)).await;
    let (recipient, order_id, subject): (String, Option<i64>, String) =
        sqlx::query_as("SELECT recipient, order_id, subject FROM sent_emails WHERE user_id = $1")
            .bind(owner_id)
            .fetch_one(&pool)
            .await
            .expect("the notice was written");
    assert_eq!(recipient, address);
    assert_eq!(order_id, None);
    assert!(subject.contains("sign up"), "{subject}");

    // Within the notice interval a second attempt answers alike and sends nothing more: the
    // notice would be in the outbox or the stream now (no worker runs).
    assert_eq!(app.sign_up("Mallory", &address).await, None);
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE stream = $1")
        .bind(EMAIL_STREAM)
        .fetch_one(&pool)
        .await
        .expect("count");
    let length: u64 = redis.xlen(EMAIL_STREAM).await.expect("xlen");
    assert_eq!((queued, length), (0, 0));
}

#[tokio::test]
async fn hammering_sign_up_from_one_client_gets_429_and_other_clients_still_sign_up() {
    let app = TestApp::spawn_tuned(
        |config| config.rate_limit.trusted_proxy_hops = 1,
        |settings| {
            settings.limits.sign_up = RoutePolicy {
                requests: 3,
                window: Duration::from_secs(60),
            };
        },
    )
    .await;
    let sign_up = |address: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/api/users", app.address))
                .header("x-forwarded-for", address)
                .json(&json!({
                    "name": "Hammer",
                    "email": format!("h-{}@example.org", hex_token()),
                    "password": PASSWORD,
                }))
                .send()
                .await
                .expect("sent")
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(sign_up("203.0.113.66").await);
    }
    let refused = statuses.split_off(3);
    assert!(
        statuses
            .iter()
            .all(|response| response.status() == StatusCode::ACCEPTED)
    );
    for response in refused {
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        let body: Value = response.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    assert_eq!(sign_up("198.51.100.7").await.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_signups_with_one_email_create_exactly_one_user_and_answer_alike() {
    let app = TestApp::spawn().await;
    let email = format!("race-{}@example.org", hex_token());
    let attempts = (0..20).map(|index| {
        let app = &app;
        let email = email.clone();
        async move {
            let response = app
                .post(
                    "/api/users",
                    &json!({ "name": format!("racer {index}"), "email": email, "password": PASSWORD }),
                )
                .await;
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            (status, body["id"].as_i64())
        }
    });
    let answers = futures::future::join_all(attempts).await;
    assert!(
        answers
            .iter()
            .all(|(status, _)| *status == StatusCode::ACCEPTED),
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|(_, id)| id.is_some()).count(),
        1,
        "{answers:?}"
    );
}

#[tokio::test]
async fn user_ids_spread_over_both_shards_and_each_row_lives_on_its_owning_shard() {
    let app = TestApp::spawn().await;
    let mut shards = HashSet::new();
    for _ in 0..12 {
        let user = app.create_user().await;
        let id = user["id"].as_i64().expect("id");
        let shard = app.shard_of(id);
        shards.insert(shard);
        let pool = app.primary(shard).await;
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM users WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(count, 1);
        let claimed: (i64,) = sqlx::query_as("SELECT user_id FROM email_claims WHERE email = $1")
            .bind(user["email"].as_str().expect("email"))
            .fetch_one(&pool)
            .await
            .expect("the claim is on the user's shard");
        assert_eq!(claimed.0, id);
    }
    assert_eq!(shards.len(), 2, "twelve users should land on both shards");
}

#[tokio::test]
async fn reading_a_user_gives_the_public_representation_with_cdn_headers_and_a_matching_etag_gives_304()
 {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let path = format!("/api/users/{}", user["id"]);
    let response = app.get(&path).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=3600");
    let vary: Vec<String> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_lowercase())
        .collect();
    for depends_on in ["accept-encoding", "cookie", "x-consistency-token"] {
        assert!(vary.iter().any(|name| name == depends_on), "{vary:?}");
    }
    let etag = headers[header::ETAG].to_str().expect("etag").to_string();
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, public(&user), "id, name and created_at only");

    let revalidated = app
        .client
        .get(format!("{}{path}", app.address))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("sent");
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.headers()[header::ETAG], etag.as_str());
    assert!(revalidated.bytes().await.expect("body").is_empty());
}

#[tokio::test]
async fn lists_and_batches_carry_no_emails() {
    let app = TestApp::spawn().await;
    let first = app.create_user().await;
    let second = app.create_user().await;
    let ids = format!("{},{}", first["id"], second["id"]);
    for path in [
        format!("/api/users?ids={ids}"),
        "/api/users?limit=10".to_string(),
        "/api/users?page=1&page_size=10".to_string(),
    ] {
        for response in [app.get(&path).await, app.get_consistent(&path).await] {
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.expect("json");
            for user in body["users"].as_array().expect("users") {
                assert_eq!(
                    user.as_object().map(|fields| fields.len()),
                    Some(3),
                    "{user}"
                );
                assert!(user.get("email").is_none(), "{user}");
            }
        }
    }
    let body: Value = app
        .get_consistent(&format!("/api/users?ids={ids}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["users"], json!([public(&first), public(&second)]));
}

#[tokio::test]
async fn only_the_signed_in_owner_reads_the_private_representation_and_nothing_stores_it() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let created_headers = {
        let email = format!("fresh-{}@example.org", hex_token());
        let response = app
            .post(
                "/api/users",
                &json!({ "name": "Fresh", "email": email, "password": PASSWORD }),
            )
            .await;
        response.headers().clone()
    };
    assert_eq!(
        created_headers[header::CACHE_CONTROL],
        "private, no-store",
        "the sign-up response carries the email"
    );
    let me = app.get_as(&user, "/api/me").await;
    assert_eq!(me.status(), StatusCode::OK);
    assert_eq!(me.headers()[header::CACHE_CONTROL], "private, no-store");
    assert!(
        me.headers()[header::VARY]
            .to_str()
            .is_ok_and(|vary| vary.contains("cookie"))
    );
    let body: Value = me.json().await.expect("json");
    assert_eq!(body["email"], user["email"]);
    assert_eq!(body["id"], user["id"]);

    let anonymous = app.get("/api/me").await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()[header::CACHE_CONTROL], "no-store");
    let error: Value = anonymous.json().await.expect("json");
    assert_eq!(error["error"]["code"], "unauthorized");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("POST /api/sessions")),
        "{error}"
    );
}

#[tokio::test]
async fn changing_a_user_needs_that_users_session() {
    let app = TestApp::spawn().await;
    let owner = app.create_user().await;
    let other = app.create_user().await;
    let path = format!("/api/users/{}", owner["id"]);
    let anonymous = app.put(&path, &json!({ "name": "Anonymous" })).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    for change in [
        json!({ "name": "Not yours" }),
        json!({ "email": format!("taken-over-{}@example.org", hex_token()) }),
    ] {
        let response = app.put_as(&other, &path, &change).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{change}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"]["code"], "forbidden");
    }
    let mine: Value = app
        .get_as(&owner, "/api/me")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        (&mine["name"], &mine["email"]),
        (&owner["name"], &owner["email"])
    );
    let renamed = app.put_as(&owner, &path, &json!({ "name": "Mine" })).await;
    assert_eq!(renamed.status(), StatusCode::OK);
    assert_eq!(
        renamed.headers()[header::CACHE_CONTROL],
        "private, no-store"
    );
}

#[tokio::test]
async fn the_etag_changes_with_every_edit_even_one_the_public_body_does_not_show() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let path = format!("/api/users/{}", user["id"]);
    let read = || async {
        let response = app.get_consistent(&path).await;
        let etag = response.headers()[header::ETAG]
            .to_str()
            .expect("etag")
            .to_string();
        (etag, response.json::<Value>().await.expect("json"))
    };
    let (first, first_body) = read().await;
    let email = format!("changed-{}@example.org", hex_token());
    assert_eq!(
        app.put_as(&user, &path, &json!({ "email": email }))
            .await
            .status(),
        StatusCode::OK
    );
    let (second, second_body) = read().await;
    assert_eq!(first_body, second_body, "the email is not public");
    assert_ne!(first, second, "but the edit changes the ETag");
    assert_eq!(
        app.put_as(&user, &path, &json!({ "name": "Renamed" }))
            .await
            .status(),
        StatusCode::OK
    );
    let (third, third_body) = read().await;
    assert_eq!(third_body["name"], "Renamed");
    assert!(third != second && third != first);
}

#[tokio::test]
async fn an_unknown_user_is_404_and_a_malformed_id_is_422_both_as_json_errors() {
    let app = TestApp::spawn().await;
    let missing = app.get("/api/users/999999999").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found");
    let malformed = app.get("/api/users/abc").await;
    assert_eq!(malformed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = malformed.json().await.expect("json");
    assert_eq!(body["error"]["field"], "id");
}

#[tokio::test]
async fn an_update_is_visible_to_the_next_read_even_when_the_old_value_was_cached() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let path = format!("/api/users/{}", user["id"]);
    // Fill L1 and L2.
    for _ in 0..2 {
        assert_eq!(app.get(&path).await.status(), StatusCode::OK);
    }
    let updated = app
        .put_as(&user, &path, &json!({ "name": "Renamed" }))
        .await;
    assert_eq!(updated.status(), StatusCode::OK);
    let read: Value = app.get(&path).await.json().await.expect("json");
    assert_eq!(read["name"], "Renamed");
}

#[tokio::test]
async fn an_email_change_frees_the_old_address_and_claims_the_new_one() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let old = user["email"].as_str().expect("email").to_string();
    let new = format!("moved-{}@example.org", hex_token());
    let path = format!("/api/users/{}", user["id"]);
    let response = app
        .put_as(&user, &path, &json!({ "email": new, "name": "Moved" }))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        (body["email"].as_str(), body["name"].as_str()),
        (Some(new.as_str()), Some("Moved"))
    );
    // The old address is free again, the new one is taken.
    assert!(app.sign_up("X", &old).await.is_some());
    assert_eq!(app.sign_up("Y", &new).await, None);
}

#[tokio::test]
async fn an_email_change_to_a_taken_address_is_409_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let first = app.create_user().await;
    let second = app.create_user().await;
    let path = format!("/api/users/{}", second["id"]);
    let response = app
        .put_as(
            &second,
            &path,
            &json!({ "email": first["email"], "name": "Thief" }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let read: Value = app
        .get_as(&second, "/api/me")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(read["email"], second["email"]);
    assert_eq!(
        read["name"], second["name"],
        "the name in the same request is not applied either"
    );
    // No intent is left behind: a later valid change goes through.
    let fresh = format!("fresh-{}@example.org", hex_token());
    assert_eq!(
        app.put_as(&second, &path, &json!({ "email": fresh }))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_interrupted_email_change_is_finished_by_driving_its_intent() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let id = user["id"].as_i64().expect("id");
    let old = user["email"].as_str().expect("email").to_string();
    let new = format!("resumed-{}@example.org", hex_token());
    // A request that died right after recording its intent.
    let pool = app.primary(app.shard_of(id)).await;
    sqlx::query("INSERT INTO email_changes (user_id, old_email, new_email) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(&old)
        .bind(&new)
        .execute(&pool)
        .await
        .expect("intent");
    // While it is pending, another change of this user is refused rather than interleaved.
    let path = format!("/api/users/{id}");
    assert_eq!(
        app.put_as(&user, &path, &json!({ "email": "other@example.org" }))
            .await
            .status(),
        StatusCode::CONFLICT
    );
    let topology = app.state.cluster.topology();
    let outcome = scaled_app::db::users::drive_email_change(&topology, id)
        .await
        .expect("driven");
    assert_eq!(outcome, Some(scaled_app::db::users::EmailChange::Changed));
    // Driven outside a request, so no token: the change shows once replicas and the relayed
    // cache invalidation have caught up.
    crate::support::eventually(
        "the new email to be served",
        std::time::Duration::from_secs(10),
        || async {
            let read: Value = app.get_as(&user, "/api/me").await.json().await.ok()?;
            (read["email"] == new.as_str()).then_some(())
        },
    )
    .await;
    assert!(app.sign_up("X", &old).await.is_some());
    // Driving again finds nothing to do.
    assert_eq!(
        scaled_app::db::users::drive_email_change(&topology, id)
            .await
            .expect("driven"),
        None
    );
}

#[tokio::test]
async fn a_batch_read_returns_users_in_order_with_one_query_per_shard() {
    let app = TestApp::spawn().await;
    let first = app.create_user_on(0).await;
    let second = app.create_user_on(1).await;
    let third = app.create_user_on(0).await;
    let before = app
        .metric("db_queries_total", &[r#"query="users_by_ids""#])
        .await;
    let ids = format!("{},{},{},424242", third["id"], first["id"], second["id"]);
    let response = app.get_consistent(&format!("/api/users?ids={ids}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    let returned: Vec<&Value> = body["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|user| &user["id"])
        .collect();
    assert_eq!(returned, vec![&third["id"], &first["id"], &second["id"]]);
    assert_eq!(body["missing"], json!([424242]));
    let after = app
        .metric("db_queries_total", &[r#"query="users_by_ids""#])
        .await;
    assert_eq!(
        after - before,
        2.0,
        "one statement per shard, not one per id"
    );
}

#[tokio::test]
async fn keyset_pages_walk_every_user_in_id_order_without_repeats() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(app.create_user().await["id"].as_i64().expect("id"));
    }
    created.sort_unstable();
    let mut seen: Vec<i64> = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = app
            .get_consistent(&format!("/api/users?after={after}&limit=3"))
            .await
            .json()
            .await
            .expect("json");
        let ids: Vec<i64> = page["users"]
            .as_array()
            .expect("users")
            .iter()
            .map(|user| user["id"].as_i64().expect("id"))
            .collect();
        seen.extend(&ids);
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, created);
}

#[tokio::test]
async fn offset_pages_work_for_old_clients_but_are_capped() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        app.create_user().await;
    }
    let page: Value = app
        .get_consistent("/api/users?page=1&page_size=2")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["users"].as_array().expect("users").len(), 2);
    let capped: Value = app
        .get("/api/users?page=1&page_size=100000")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(capped["page_size"], 100);
    let deep = app.get("/api/users?page=1000&page_size=100").await;
    assert_eq!(deep.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let bad = app.get("/api/users?limit=zero").await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn responses_are_gzip_compressed_when_the_client_accepts_it() {
    let app = TestApp::spawn().await;
    for _ in 0..3 {
        app.create_user().await;
    }
    // Wait for the replicas, so the page is big enough to be worth compressing.
    crate::support::eventually(
        "the users to reach the replicas",
        std::time::Duration::from_secs(10),
        || async {
            let page: Value = app.get("/api/users?limit=3").await.json().await.ok()?;
            (page["users"].as_array()?.len() == 3).then_some(())
        },
    )
    .await;
    let response = app
        .client
        .get(format!("{}/api/users?limit=3", app.address))
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_ENCODING], "gzip");
    // Without asking, no compression.
    assert!(
        app.get("/api/users?limit=3")
            .await
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_none()
    );
}
