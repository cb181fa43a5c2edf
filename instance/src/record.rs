//! The primary record: which pod the operator named as the shard's primary, read from the
//! ScaledApp's status through the Kubernetes API, or from a file (host-process tests).
//!
//! Three answers, and the difference matters to the split-brain guard: a pod is named; no pod
//! is named yet; or the record could not be read (API unreachable, token refused, file
//! missing). Only a read that names this pod confirms it may be primary, and only if the uid it
//! records (when it records one) is this pod object's: for a pod recreated under the primary's
//! name the record is [`Record::Unconfirmed`] until the operator confirms it or names another.

use std::{path::PathBuf, time::Duration};

use scaled_contract::instance::ScaledAppView;

use crate::settings::SourceSettings;

/// Where service-account credentials are mounted in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long one read of the record may take; the guard reads every tick.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// What the record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// This pod is the shard's primary.
    Named {
        /// The pod's name.
        pod: String,
        /// The uid of the pod object confirmed as primary; absent in older records.
        uid: Option<String>,
    },
    /// The operator has not named a primary yet.
    NotChosen,
    /// The record could not be read; the text says why.
    Unknown(String),
    /// The record names this pod's name, but another pod object (the one before this pod was
    /// recreated): the operator has not decided about this one yet. The text says so.
    Unconfirmed(String),
}

impl Record {
    /// A record naming `pod` with no uid.
    pub fn named(pod: &str) -> Self {
        Record::Named {
            pod: pod.to_string(),
            uid: None,
        }
    }

    /// The record as the pod `own` (whose object has uid `own_uid`, when known) must take it: a
    /// record naming `own` with another uid is [`Record::Unconfirmed`].
    pub fn for_pod(self, own: &str, own_uid: Option<&str>) -> Self {
        match (&self, own_uid) {
            (
                Record::Named {
                    pod,
                    uid: Some(uid),
                },
                Some(own_uid),
            ) if pod == own && uid != own_uid => Record::Unconfirmed(format!(
                "the primary record names {own} with uid {uid}, an earlier pod of that name \
                     (this one is {own_uid}): waiting for the operator to confirm this pod or \
                     name another"
            )),
            _ => self,
        }
    }
}

/// Errors while setting up a source.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A Kubernetes environment variable is missing (not running in a pod?).
    #[error("failed to find {0} in the environment: is this running in a pod?")]
    MissingEnv(&'static str),
    /// The cluster CA could not be read or parsed.
    #[error("failed to load the cluster CA {path}")]
    Ca {
        /// File read.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The HTTP client could not be built.
    #[error("failed to build the API client")]
    Client(#[source] reqwest::Error),
}

/// Reads the record.
#[derive(Debug)]
pub enum PrimarySource {
    /// From the Kubernetes API.
    Api(ApiSource),
    /// From a file holding the pod name.
    File(PathBuf),
}

impl PrimarySource {
    /// The source the settings ask for.
    pub fn from_settings(
        source: &SourceSettings,
        namespace: &str,
        scaled_app: &str,
        shard: u32,
    ) -> Result<Self, RecordError> {
        match source {
            SourceSettings::File(path) => Ok(PrimarySource::File(path.clone())),
            SourceSettings::Api => Ok(PrimarySource::Api(ApiSource::in_cluster(
                namespace, scaled_app, shard,
            )?)),
        }
    }

    /// Reads the record once.
    pub async fn read(&self) -> Record {
        match self {
            PrimarySource::Api(api) => api.read().await,
            // "<pod>" or "<pod> <uid>".
            PrimarySource::File(path) => match tokio::fs::read_to_string(path).await {
                Ok(text) => {
                    let mut words = text.split_whitespace();
                    match words.next() {
                        None => Record::NotChosen,
                        Some(pod) => Record::Named {
                            pod: pod.to_string(),
                            uid: words.next().map(str::to_string),
                        },
                    }
                }
                Err(error) => Record::Unknown(format!("cannot read {}: {error}", path.display())),
            },
        }
    }
}

/// The ScaledApp's status through the API server.
#[derive(Debug)]
pub struct ApiSource {
    client: reqwest::Client,
    url: String,
    token_path: PathBuf,
    shard: u32,
}

impl ApiSource {
    /// In a pod: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` (an IP, so no DNS),
    /// the service-account CA and token.
    pub fn in_cluster(namespace: &str, scaled_app: &str, shard: u32) -> Result<Self, RecordError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| RecordError::MissingEnv("KUBERNETES_SERVICE_HOST"))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .map_err(|_| RecordError::MissingEnv("KUBERNETES_SERVICE_PORT"))?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let ca_path = PathBuf::from(SERVICE_ACCOUNT_DIR).join("ca.crt");
        let ca = std::fs::read(&ca_path).map_err(|error| RecordError::Ca {
            path: ca_path.clone(),
            detail: error.to_string(),
        })?;
        let certificate = reqwest::Certificate::from_pem(&ca).map_err(|error| RecordError::Ca {
            path: ca_path.clone(),
            detail: error.to_string(),
        })?;
        let client = reqwest::Client::builder()
            .add_root_certificate(certificate)
            .timeout(READ_TIMEOUT)
            .build()
            .map_err(RecordError::Client)?;
        Ok(Self::with_client(
            client,
            &format!("https://{host}:{port}"),
            PathBuf::from(SERVICE_ACCOUNT_DIR).join("token"),
            namespace,
            scaled_app,
            shard,
        ))
    }

    /// A source on any API base URL with any client (tests use plain HTTP).
    pub fn with_client(
        client: reqwest::Client,
        base_url: &str,
        token_path: PathBuf,
        namespace: &str,
        scaled_app: &str,
        shard: u32,
    ) -> Self {
        ApiSource {
            client,
            url: format!(
                "{}/apis/scaled.dev/v1alpha1/namespaces/{namespace}/scaledapps/{scaled_app}",
                base_url.trim_end_matches('/')
            ),
            token_path,
            shard,
        }
    }

    /// One GET of the ScaledApp.
    pub async fn read(&self) -> Record {
        // Re-read every time: bound service-account tokens are rotated by the kubelet.
        let token = match tokio::fs::read_to_string(&self.token_path).await {
            Ok(token) => token.trim().to_string(),
            Err(error) => {
                return Record::Unknown(format!(
                    "cannot read the service-account token {}: {error}",
                    self.token_path.display()
                ));
            }
        };
        let response = match self.client.get(&self.url).bearer_auth(token).send().await {
            Ok(response) => response,
            Err(error) => {
                return Record::Unknown(format!("the API server did not answer: {error}"));
            }
        };
        let status = response.status();
        if !status.is_success() {
            return Record::Unknown(format!("the API server answered {status}"));
        }
        match response.json::<ScaledAppView>().await {
            Ok(app) => primary_in_status(&app, self.shard),
            Err(error) => Record::Unknown(format!("the ScaledApp could not be parsed: {error}")),
        }
    }
}

/// The record in a ScaledApp: the `status.shards[]` entry whose `index` is `shard`. An empty
/// name counts as no name (no pod has one), and an empty uid as no uid (the name alone
/// confirms, as in records written before uids were).
pub fn primary_in_status(app: &ScaledAppView, shard: u32) -> Record {
    let entry = app.shard(shard);
    let present = |value: Option<&String>| value.filter(|value| !value.is_empty()).cloned();
    match present(entry.and_then(|entry| entry.primary_pod.as_ref())) {
        Some(pod) => Record::Named {
            pod,
            uid: present(entry.and_then(|entry| entry.primary_pod_uid.as_ref())),
        },
        None => Record::NotChosen,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// `primary_in_status` of a JSON document, parsed as the API source parses the answer.
    fn record_in(document: Value, shard: u32) -> Record {
        let app: ScaledAppView = serde_json::from_value(document).expect("a ScaledApp parses");
        primary_in_status(&app, shard)
    }

    #[test]
    fn the_shard_entry_with_the_right_index_names_the_primary() {
        let document = json!({"status": {"shards": [
            {"index": 0, "primaryPod": "shop-shard-0-1", "primaryPodUid": "u1"},
            {"index": 1, "primaryPod": "shop-shard-1-0"}
        ]}});
        assert_eq!(
            record_in(document.clone(), 0),
            Record::Named {
                pod: "shop-shard-0-1".into(),
                uid: Some("u1".into())
            }
        );
        assert_eq!(record_in(document, 1), Record::named("shop-shard-1-0"));
    }

    #[test]
    fn an_absent_entry_or_field_means_no_primary_was_chosen() {
        assert_eq!(record_in(json!({}), 0), Record::NotChosen);
        assert_eq!(
            record_in(json!({"status": {"shards": [{"index": 0}]}}), 0),
            Record::NotChosen
        );
        assert_eq!(
            record_in(
                json!({"status": {"shards": [{"index": 1, "primaryPod": "x-1"}]}}),
                0
            ),
            Record::NotChosen
        );
    }

    #[test]
    fn a_whole_scaled_app_parses_into_the_typed_record_and_empty_values_name_nothing() {
        // What a GET of the object returns: metadata, spec and status fields the instance
        // manager does not read, around the record it does.
        let document = json!({
            "apiVersion": "scaled.dev/v1alpha1",
            "kind": "ScaledApp",
            "metadata": {"name": "shop", "namespace": "shop-ns", "uid": "app-uid"},
            "spec": {"database": {"shards": 3, "replicasPerShard": 2}},
            "status": {
                "observedGeneration": 7,
                "conditions": [{"type": "Ready", "status": "True"}],
                "shards": [
                    {"index": 2, "slots": 5461, "slotRanges": "10923-16383",
                     "statefulSet": {"name": "shop-shard-2", "desired": 3, "ready": 3,
                                     "summary": "3/3"},
                     "primaryPod": "shop-shard-2-1", "primaryPodUid": "",
                     "instances": [{"pod": "shop-shard-2-1", "role": "Primary", "ready": true}]},
                    {"index": 1, "primaryPod": "", "primaryPodUid": "u"},
                    {"index": 0, "primaryPod": "shop-shard-0-0", "primaryPodUid": null}
                ]
            }
        });
        assert_eq!(
            record_in(document.clone(), 2),
            Record::named("shop-shard-2-1"),
            "an empty uid is no uid: the name alone confirms"
        );
        assert_eq!(
            record_in(document.clone(), 1),
            Record::NotChosen,
            "an empty name names nobody"
        );
        assert_eq!(record_in(document, 0), Record::named("shop-shard-0-0"));
    }

    /// A fake API server: answers the ScaledApp only to the bearer token in `token`.
    async fn fake_api(token: &'static str, primary: &'static str) -> String {
        use axum::{Router, http::HeaderMap, http::StatusCode, routing::get};
        let app = Router::new().route(
            "/apis/scaled.dev/v1alpha1/namespaces/shop-ns/scaledapps/shop",
            get(move |headers: HeaderMap| async move {
                let authorized = headers
                    .get("authorization")
                    .and_then(|value| value.to_str().ok())
                    == Some(&format!("Bearer {token}"));
                if !authorized {
                    return Err(StatusCode::UNAUTHORIZED);
                }
                Ok(axum::Json(json!({"status": {"shards": [
                    {"index": 0, "primaryPod": "shop-shard-0-0"},
                    {"index": 1, "primaryPod": primary}
                ]}})))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn the_api_source_reads_the_shard_entry_and_rereads_a_rotated_token() {
        let base = fake_api("second-token", "shop-shard-1-2").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "first-token\n").expect("write");
        let source = ApiSource::with_client(
            reqwest::Client::new(),
            &base,
            token.clone(),
            "shop-ns",
            "shop",
            1,
        );
        match source.read().await {
            Record::Unknown(why) => assert!(why.contains("401"), "{why}"),
            other => panic!("a refused token cannot confirm anything: {other:?}"),
        }
        // The kubelet rotated the token: the next read uses the new one.
        std::fs::write(&token, "second-token\n").expect("write");
        assert_eq!(source.read().await, Record::named("shop-shard-1-2"));
        std::fs::remove_file(&token).expect("remove");
        assert!(matches!(source.read().await, Record::Unknown(_)));
    }

    #[tokio::test]
    async fn an_unreachable_api_server_cannot_confirm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "t").expect("write");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let source = ApiSource::with_client(
            reqwest::Client::new(),
            &format!("http://127.0.0.1:{port}"),
            token,
            "shop-ns",
            "shop",
            0,
        );
        assert!(matches!(source.read().await, Record::Unknown(_)));
    }

    #[tokio::test]
    async fn a_missing_file_cannot_confirm_and_an_empty_one_names_nobody() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("primary");
        let source = PrimarySource::File(path.clone());
        assert!(matches!(source.read().await, Record::Unknown(_)));
        std::fs::write(&path, "\n").expect("write");
        assert_eq!(source.read().await, Record::NotChosen);
        std::fs::write(&path, "db-0\n").expect("write");
        assert_eq!(source.read().await, Record::named("db-0"));
        std::fs::write(&path, "db-0 uid-7\n").expect("write");
        assert_eq!(
            source.read().await,
            Record::Named {
                pod: "db-0".into(),
                uid: Some("uid-7".into())
            }
        );
    }

    #[test]
    fn a_record_of_an_earlier_pod_with_this_name_does_not_confirm_this_one() {
        let record = Record::Named {
            pod: "db-0".into(),
            uid: Some("old".into()),
        };
        match record.clone().for_pod("db-0", Some("new")) {
            Record::Unconfirmed(why) => assert!(why.contains("earlier pod"), "{why}"),
            other => panic!("a recreated pod must wait for the operator: {other:?}"),
        }
        // The same object, another pod's record, a record without a uid, or a pod that does not
        // know its uid (host-process runs): the record stands as read.
        assert_eq!(record.clone().for_pod("db-0", Some("old")), record);
        assert_eq!(record.clone().for_pod("db-1", Some("new")), record);
        assert_eq!(record.clone().for_pod("db-0", None), record);
        assert_eq!(
            Record::named("db-0").for_pod("db-0", Some("new")),
            Record::named("db-0")
        );
    }
}
