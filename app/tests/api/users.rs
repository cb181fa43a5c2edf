//! Users: creation, uniqueness across shards, reads with HTTP caching, updates, batches, pages.

use std::collections::HashSet;

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::support::{PASSWORD, TestApp, hex_token, public};

#[tokio::test]
async fn creating_a_user_returns_201_with_an_id_and_a_location() {
    let app = TestApp::spawn().await;
    let email = format!("new-{}@example.org", hex_token());
    let response = app
        .post(
            "/api/users",
            &json!({ "name": " Ada ", "email": email.to_uppercase(), "password": PASSWORD }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
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
}

#[tokio::test]
async fn a_duplicate_email_is_refused_with_409_whatever_its_case() {
    let app = TestApp::spawn().await;
    let email = format!("dup-{}@example.org", hex_token());
    assert_eq!(
        app.post(
            "/api/users",
            &json!({ "name": "A", "email": email, "password": PASSWORD })
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    let response = app
        .post(
            "/api/users",
            &json!({ "name": "B", "email": email.to_uppercase(), "password": PASSWORD }),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_signups_with_one_email_create_exactly_one_user() {
    let app = TestApp::spawn().await;
    let email = format!("race-{}@example.org", hex_token());
    let attempts = (0..20).map(|index| {
        let app = &app;
        let email = email.clone();
        async move {
            app.post(
                "/api/users",
                &json!({ "name": format!("racer {index}"), "email": email, "password": PASSWORD }),
            )
            .await
            .status()
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|status| **status == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|status| *status == StatusCode::CREATED || *status == StatusCode::CONFLICT)
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
    assert_eq!(
        app.post(
            "/api/users",
            &json!({ "name": "X", "email": old, "password": PASSWORD })
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        app.post(
            "/api/users",
            &json!({ "name": "Y", "email": new, "password": PASSWORD })
        )
        .await
        .status(),
        StatusCode::CONFLICT
    );
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
    assert_eq!(
        app.post(
            "/api/users",
            &json!({ "name": "X", "email": old, "password": PASSWORD })
        )
        .await
        .status(),
        StatusCode::CREATED
    );
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
