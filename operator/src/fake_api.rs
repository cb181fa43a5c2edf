//! An in-memory stand-in for the API server, for unit tests of the reconcile driver. It keeps
//! objects per path, answers list/get/create/apply/delete, stamps uids and our manager's
//! `managedFields` on apply, and records every request. The e2e suite repeats the same checks
//! against a real API server.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

/// Shared state of the fake.
#[derive(Clone, Default)]
pub struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    requests: Arc<Mutex<Vec<(Method, String)>>>,
}

impl FakeApi {
    /// A client talking to this fake.
    pub fn client(&self) -> kube::Client {
        let state = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(state.handle(request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Stores an object at its collection path (e.g. a ScaledApp before the first reconcile).
    pub fn insert(&self, collection: &str, name: &str, object: Value) {
        self.lock().insert(format!("{collection}/{name}"), object);
    }

    /// The object stored at `collection/name`.
    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        self.lock().get(&format!("{collection}/{name}")).cloned()
    }

    /// Every object stored directly under `collection` (e.g. the Events published).
    pub fn list(&self, collection: &str) -> Vec<Value> {
        let prefix = format!("{collection}/");
        self.lock()
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix) && !key[prefix.len()..].contains('/'))
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Removes an object, as a user's `kubectl delete` would.
    pub fn remove(&self, collection: &str, name: &str) {
        self.lock().remove(&format!("{collection}/{name}"));
    }

    /// Requests that change state (anything but GET), and clears the record.
    pub fn take_writes(&self) -> Vec<String> {
        let mut requests = self.requests.lock().expect("fake lock");
        let writes = requests
            .iter()
            .filter(|(method, _)| method != Method::GET)
            .map(|(method, path)| format!("{method} {path}"))
            .collect();
        requests.clear();
        writes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.objects.lock().expect("fake lock")
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        self.requests
            .lock()
            .expect("fake lock")
            .push((method.clone(), path.clone()));
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);

        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let namespaced = segments.iter().position(|s| *s == "namespaces");
        // .../namespaces/{ns}/{plural}[/{name}[/status]]
        let after = namespaced.map(|i| &segments[i + 2..]).unwrap_or(&[]);
        match (method, after.len()) {
            (Method::GET, 1) => {
                let prefix = format!("{path}/");
                let items: Vec<Value> = self
                    .lock()
                    .iter()
                    .filter(|(key, _)| {
                        key.starts_with(&prefix) && !key[prefix.len()..].contains('/')
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                respond(
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            (Method::GET, 2) => match self.lock().get(&path) {
                Some(object) => respond(StatusCode::OK, object.clone()),
                None => not_found(&path),
            },
            (Method::POST, 1) => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .unwrap_or("event")
                    .to_string();
                let key = format!("{path}/{name}");
                let mut object = body;
                object["metadata"]["uid"] = format!("uid-{key}").into();
                self.lock().insert(key, object.clone());
                respond(StatusCode::CREATED, object)
            }
            (Method::PATCH, 2) => {
                let manager = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("fieldManager="))
                    .unwrap_or_default()
                    .to_string();
                let mut object = body;
                let existing = self.lock().get(&path).cloned();
                let uid = existing
                    .as_ref()
                    .and_then(|e| e["metadata"]["uid"].as_str().map(String::from))
                    .unwrap_or_else(|| format!("uid-{path}"));
                if let Some(existing) = &existing {
                    // Apply keeps data it does not mention (Secrets' values).
                    if existing.get("data").is_some() && object.get("data").is_none() {
                        object["data"] = existing["data"].clone();
                    }
                }
                object["metadata"]["uid"] = uid.into();
                object["metadata"]["managedFields"] = json!([{
                    "manager": manager, "operation": "Apply", "apiVersion": "v1",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}
                }]);
                self.lock().insert(path, object.clone());
                respond(StatusCode::OK, object)
            }
            (Method::PATCH, 3) => {
                let object_path = path.trim_end_matches("/status").to_string();
                let mut guard = self.lock();
                match guard.get_mut(&object_path) {
                    Some(object) => {
                        object["status"] = body["status"].clone();
                        respond(StatusCode::OK, object.clone())
                    }
                    None => not_found(&path),
                }
            }
            (Method::DELETE, 2) => match self.lock().remove(&path) {
                Some(_) => respond(
                    StatusCode::OK,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                ),
                None => not_found(&path),
            },
            // Events go to events.k8s.io, collection POSTs are handled above.
            _ => respond(StatusCode::OK, json!({})),
        }
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("json")))
        .expect("valid response")
}

fn not_found(path: &str) -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
    )
}
