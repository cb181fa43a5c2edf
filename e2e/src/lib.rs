//! Helpers for the end-to-end tests. They talk to whatever cluster `KUBECONFIG` names and refuse
//! to run without it set explicitly, so a test never lands on a machine's default context.
//!
//! `e2e/run.sh` (via `make e2e`) provides the environment: `KUBECONFIG`, the kubectl and helm
//! binaries, the operator's metrics address and its audit log.

pub mod orders;
pub mod real;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client, Config};
use scaledapp_operator::crd::ScaledApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kubeconfig path, which must be set explicitly.
pub fn kubeconfig() -> PathBuf {
    let path = std::env::var_os("KUBECONFIG").unwrap_or_else(|| {
        panic!("KUBECONFIG is not set: the e2e suite needs a cluster; run `make e2e` (local control plane) or point KUBECONFIG at a kind cluster")
    });
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "KUBECONFIG={} does not exist",
        path.display()
    );
    path
}

/// A client for the cluster in `KUBECONFIG`.
pub async fn client() -> Client {
    kubeconfig();
    let config = Config::infer().await.expect("KUBECONFIG is readable");
    Client::try_from(config).expect("client from KUBECONFIG")
}

/// Runs kubectl against the cluster; returns stdout, fails with stderr.
pub fn kubectl(args: &[&str]) -> Result<String> {
    run_kubectl(args, None)
}

/// Runs kubectl with `input` on stdin.
pub fn kubectl_stdin(args: &[&str], input: &str) -> Result<String> {
    run_kubectl(args, Some(input))
}

fn run_kubectl(args: &[&str], input: Option<&str>) -> Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let binary = std::env::var("SCALEDAPP_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut child = Command::new(&binary)
        .args(args)
        .env("KUBECONFIG", kubeconfig())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run {binary}"))?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A namespace created for one test, labelled to enforce the `restricted` Pod Security Standard.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `e2e-<prefix>-<random>`.
    pub async fn create(client: &Client, prefix: &str) -> TestNamespace {
        use rand::distr::{Alphanumeric, SampleString};
        let suffix = Alphanumeric
            .sample_string(&mut rand::rng(), 5)
            .to_lowercase();
        let name = format!("e2e-{prefix}-{suffix}");
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        ("pod-security.kubernetes.io/enforce", "restricted"),
                        ("pod-security.kubernetes.io/enforce-version", "latest"),
                        ("scaled.dev/e2e", "true"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create test namespace");
        TestNamespace {
            name,
            client: client.clone(),
        }
    }

    /// ScaledApps in this namespace.
    pub fn apps(&self) -> Api<ScaledApp> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Any namespaced kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace (and so everything in it).
    pub async fn delete(self) {
        if let Err(error) = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await
        {
            eprintln!(
                "warning: failed to delete test namespace {}: {error}",
                self.name
            );
        }
    }
}

/// Loads `examples/<name>.yaml` as a ScaledApp.
pub fn example(name: &str) -> ScaledApp {
    let path = repo_root().join("examples").join(format!("{name}.yaml"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match check().await {
            Ok(Some(value)) => return value,
            Ok(None) => last = "condition not met".into(),
            Err(error) => last = format!("{error:#}"),
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The status of condition `type_` on a ScaledApp, if present.
pub fn condition(app: &ScaledApp, type_: &str) -> Option<(String, String, String)> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the ScaledApp's `Ready` condition is `True` for its current generation.
pub async fn wait_ready(apps: &Api<ScaledApp>, name: &str, timeout: Duration) -> ScaledApp {
    eventually(&format!("ScaledApp {name} Ready"), timeout, || async {
        let app = apps.get(name).await?;
        let generation = app.metadata.generation;
        let ready = condition(&app, "Ready").map(|(status, _, _)| status);
        let observed = app.status.as_ref().and_then(|s| s.observed_generation);
        Ok((ready.as_deref() == Some("True") && observed == generation).then_some(app))
    })
    .await
}

/// The operator's metrics text, from `SCALEDAPP_OPERATOR_METRICS` (host:port).
pub async fn operator_metrics() -> Result<String> {
    let address = std::env::var("SCALEDAPP_OPERATOR_METRICS")
        .context("SCALEDAPP_OPERATOR_METRICS is not set (e2e/run.sh sets it to the operator's probe address)")?;
    scrape(&address).await
}

/// GET /metrics from `address`.
pub async fn scrape(address: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("connect to {address}"))?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// Sum of a counter family in Prometheus text.
pub fn counter_total(metrics: &str, family: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(family) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// An operator process started by a test, under the chart's ServiceAccount identity.
pub struct OperatorProcess {
    child: std::process::Child,
    /// Its probe/metrics address.
    pub metrics_address: String,
    /// Its identity in the leader Lease.
    pub identity: String,
}

impl OperatorProcess {
    /// Starts `scaledapp-operator run` with leader election, serving probes on `port`.
    pub fn start(identity: &str, port: u16) -> OperatorProcess {
        let binary = std::env::var("SCALEDAPP_OPERATOR_BIN")
            .expect("SCALEDAPP_OPERATOR_BIN names the operator binary");
        let kubeconfig = std::env::var("SCALEDAPP_OPERATOR_KUBECONFIG")
            .expect("SCALEDAPP_OPERATOR_KUBECONFIG holds the chart ServiceAccount's credentials");
        let namespace = std::env::var("SCALEDAPP_OPERATOR_NAMESPACE")
            .unwrap_or_else(|_| "scaledapp-system".into());
        let address = format!("127.0.0.1:{port}");
        let log_dir = repo_root().join("e2e/cluster/.state");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let log = std::fs::File::create(log_dir.join(format!("operator-{identity}.log")))
            .expect("log file");
        let child = Command::new(binary)
            .args([
                "run",
                "--probe-address",
                &address,
                "--lease-namespace",
                &namespace,
                "--identity",
                identity,
            ])
            .env("KUBECONFIG", kubeconfig)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start the operator");
        OperatorProcess {
            child,
            metrics_address: address,
            identity: identity.to_string(),
        }
    }

    /// Its metrics text.
    pub async fn metrics(&self) -> Result<String> {
        scrape(&self.metrics_address).await
    }

    /// SIGKILL: no cleanup, no lease release.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("operator exits")
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The holder of the operator's leader Lease.
pub async fn lease_holder(client: &Client) -> Option<String> {
    let namespace =
        std::env::var("SCALEDAPP_OPERATOR_NAMESPACE").unwrap_or_else(|_| "scaledapp-system".into());
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &namespace);
    leases
        .get_opt("scaledapp-operator")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}
