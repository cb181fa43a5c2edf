//! `scaledapp-operator`: `run` the controller, print the `crd`, or `render` a ScaledApp's
//! children without a cluster; `status`, `switchover` and `rotate-session-secret` talk to a
//! cluster's operator through the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use scaledapp_operator::controller::Scope;
use scaledapp_operator::crd::ScaledApp;
use scaledapp_operator::metrics_api::MetricsApiSettings;
use scaledapp_operator::render::render;
use scaledapp_operator::run::{RunSettings, run};
use scaledapp_operator::status_view;
use scaledapp_operator::validate::{Defaults, validate};

#[derive(Parser)]
#[command(
    version,
    about = "Runs a whole scaled web stack from one ScaledApp resource"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (with leader election, probes and metrics).
    Run {
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, env = "PROBE_ADDRESS", default_value = "0.0.0.0:8081")]
        probe_address: SocketAddr,
        /// Skip leader election (only for a single local process).
        #[arg(long)]
        no_leader_election: bool,
        /// Namespace of the leader Lease (the operator's own namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "scaledapp-system")]
        lease_namespace: String,
        /// Name of the leader Lease.
        #[arg(long, default_value = "scaledapp-operator")]
        lease_name: String,
        /// Identity in the Lease and in Events (defaults to the pod name or a random id).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Log format.
        #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Reconcile only ScaledApps in these namespaces (comma-separated); all when empty.
        #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
        watch_namespaces: Vec<String>,
        /// Address of the aggregated metrics APIs (TLS; custom.metrics.k8s.io and
        /// external.metrics.k8s.io). Unset: not served.
        #[arg(long, env = "METRICS_API_ADDRESS")]
        metrics_api_address: Option<SocketAddr>,
        /// Directory holding the metrics APIs' serving certificate (tls.crt, tls.key).
        #[arg(
            long,
            env = "METRICS_API_CERT_DIR",
            default_value = "/var/run/scaledapp/metrics-api-tls"
        )]
        metrics_api_cert_dir: PathBuf,
        #[command(flatten)]
        defaults: DefaultsArgs,
    },
    /// Print the CustomResourceDefinition as YAML (what crds/ holds).
    Crd,
    /// Print the ScaledApp API reference as Markdown (what docs/api.md holds).
    ApiDocs,
    /// Show one ScaledApp as a component tree with its conditions and recent Events.
    Status {
        /// ScaledApp name.
        name: String,
        /// Namespace (defaults to the kubeconfig context's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, default_value = "tree", value_parser = ["tree", "json"])]
        output: String,
        /// Colour: auto (on a terminal), always, never.
        #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
        color: String,
    },
    /// Move a shard's primary (or with --redis the Redis primary) to one of its replicas
    /// (planned; one short write pause, nothing written lost), and wait until the new primary
    /// accepts writes.
    Switchover {
        /// ScaledApp name.
        name: String,
        /// Shard whose primary moves.
        #[arg(long, required_unless_present = "redis", conflicts_with = "redis")]
        shard: Option<u32>,
        /// Move the Redis primary instead of a shard's.
        #[arg(long)]
        redis: bool,
        /// Pod to promote (default: the most caught-up ready replica).
        #[arg(long)]
        to: Option<String>,
        /// Namespace (defaults to the kubeconfig context's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Seconds to wait for the switchover to complete.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// Rotate the app's session secret without signing anyone out: two rolls of the app pods,
    /// the first making every pod accept a new value, the second making them sign with it (the
    /// old one still accepted until the next rotation). Waits until both are done.
    RotateSessionSecret {
        /// ScaledApp name.
        name: String,
        /// Namespace (defaults to the kubeconfig context's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Seconds to wait for the rotation to complete (it goes on after that).
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Print every child a ScaledApp would get, as a YAML stream, without a cluster.
    Render {
        /// The ScaledApp manifest.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace to render into when the manifest has none.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        defaults: DefaultsArgs,
    },
}

/// What the operator fills in that a ScaledApp does not say.
#[derive(clap::Args)]
struct DefaultsArgs {
    /// Image holding `scaled-instance`, copied into every Postgres pod: this operator's own
    /// image (the chart sets it).
    #[arg(long, env = "SCALEDAPP_INSTANCE_IMAGE", default_value_t = Defaults::default().instance_image)]
    instance_image: String,
    /// App image for ScaledApps that name none (the chart sets it from `image.registry`).
    #[arg(long, env = "SCALEDAPP_DEFAULT_APP_IMAGE", default_value_t = Defaults::default().app_image)]
    default_app_image: String,
    /// Namespace the operator's pods run in (the chart sets POD_NAMESPACE): Redis admits the
    /// operator's pods from this namespace only.
    #[arg(long, env = "POD_NAMESPACE", default_value_t = Defaults::default().operator_namespace)]
    operator_namespace: String,
}

impl DefaultsArgs {
    fn into_defaults(self) -> Defaults {
        Defaults {
            instance_image: self.instance_image,
            app_image: self.default_app_image,
            operator_namespace: self.operator_namespace,
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn render_file(file: &PathBuf, namespace: &str, defaults: &Defaults) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("failed to read {}: {e}", file.display()))?;
    let mut app: ScaledApp = serde_yaml::from_str(&text)
        .map_err(|e| format!("{} is not a valid ScaledApp: {e}", file.display()))?;
    app.metadata
        .namespace
        .get_or_insert_with(|| namespace.to_string());
    // A stand-in uid: real owner references get the live object's uid.
    app.metadata
        .uid
        .get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    let validated = validate(&app, defaults)
        .map_err(|e| format!("{} cannot be realised: {e}", file.display()))?;
    let mut out = String::new();
    for manifest in render(&validated).manifests() {
        out.push_str("---\n");
        out.push_str(
            &serde_yaml::to_string(&manifest).map_err(|e| format!("failed to print YAML: {e}"))?,
        );
    }
    Ok(out)
}

async fn status(
    name: &str,
    namespace: Option<String>,
    output: &str,
    color: &str,
) -> Result<String, String> {
    use std::io::IsTerminal;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("failed to connect to the cluster (check KUBECONFIG): {e}"))?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let view = status_view::fetch(client, &namespace, name)
        .await
        .map_err(|e| e.to_string())?;
    if output == "json" {
        return serde_json::to_string_pretty(&view)
            .map(|json| json + "\n")
            .map_err(|e| format!("failed to print JSON: {e}"));
    }
    let colour = match color {
        "always" => true,
        "never" => false,
        _ => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    Ok(status_view::format_tree(&view, colour))
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => {
            let yaml =
                serde_yaml::to_string(&scaledapp_operator::crd::custom_resource_definition())
                    .expect("the CRD serialises");
            print!("---\n{yaml}");
            ExitCode::SUCCESS
        }
        Command::ApiDocs => {
            print!(
                "{}",
                scaledapp_operator::api_docs::markdown(&ScaledApp::crd())
            );
            ExitCode::SUCCESS
        }
        Command::Status {
            name,
            namespace,
            output,
            color,
        } => match status(&name, namespace, &output, &color).await {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        },
        Command::Switchover {
            name,
            shard,
            redis,
            to,
            namespace,
            wait,
        } => {
            let result = async {
                let client = kube::Client::try_default().await.map_err(|e| {
                    format!("failed to connect to the cluster (check KUBECONFIG): {e}")
                })?;
                let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
                let wait = std::time::Duration::from_secs(wait);
                let mut out = std::io::stdout();
                match shard.filter(|_| !redis) {
                    Some(shard) => {
                        scaledapp_operator::switchover::request(
                            client, &namespace, &name, shard, to, wait, &mut out,
                        )
                        .await
                    }
                    None => {
                        scaledapp_operator::switchover::request_redis(
                            client, &namespace, &name, to, wait, &mut out,
                        )
                        .await
                    }
                }
                .map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::RotateSessionSecret {
            name,
            namespace,
            wait,
        } => {
            let result = async {
                let client = kube::Client::try_default().await.map_err(|e| {
                    format!("failed to connect to the cluster (check KUBECONFIG): {e}")
                })?;
                let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
                scaledapp_operator::rotate::request(
                    client,
                    &namespace,
                    &name,
                    std::time::Duration::from_secs(wait),
                    &mut std::io::stdout(),
                )
                .await
                .map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Render {
            file,
            namespace,
            defaults,
        } => match render_file(&file, &namespace, &defaults.into_defaults()) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        },
        Command::Run {
            probe_address,
            no_leader_election,
            lease_namespace,
            lease_name,
            identity,
            log_format,
            watch_namespaces,
            metrics_api_address,
            metrics_api_cert_dir,
            defaults,
        } => {
            init_tracing(&log_format);
            let identity = identity.unwrap_or_else(|| {
                use rand::distr::{Alphanumeric, SampleString};
                format!(
                    "scaledapp-operator-{}",
                    Alphanumeric
                        .sample_string(&mut rand::rng(), 8)
                        .to_lowercase()
                )
            });
            let settings = RunSettings {
                probe_address,
                leader_election: !no_leader_election,
                lease_namespace,
                lease_name,
                identity,
                defaults: defaults.into_defaults(),
                scope: {
                    let namespaces: Vec<String> = watch_namespaces
                        .into_iter()
                        .map(|namespace| namespace.trim().to_string())
                        .filter(|namespace| !namespace.is_empty())
                        .collect();
                    if namespaces.is_empty() {
                        Scope::Cluster
                    } else {
                        Scope::Namespaces(namespaces)
                    }
                },
                metrics_api: metrics_api_address.map(|address| MetricsApiSettings {
                    address,
                    cert_dir: metrics_api_cert_dir,
                }),
            };
            match run(settings).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
