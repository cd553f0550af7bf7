//! `runnel-operator`: `crd` prints the CRD; `run` runs the controller.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::EnvVar;
use runnel_operator::controller::{self, Context};
use runnel_operator::defaults::{RuntimeDefaults, parse_env};
use runnel_operator::metrics::Metrics;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "runnel-operator",
    version,
    about = "Kubernetes operator for Runnel StreamJobs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the StreamJob CustomResourceDefinition (YAML).
    Crd,
    /// Run the controller (in-cluster config or the local kubeconfig).
    Run(Box<RunArgs>),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespace to watch (repeat for several); none = all namespaces.
    #[arg(long = "namespace", value_name = "NS")]
    namespaces: Vec<String>,
    /// Serves /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Lease used for leader election.
    #[arg(long, default_value = "runnel-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// Run without leader election (a single replica only).
    #[arg(long)]
    no_leader_election: bool,
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Command run in the runtime image to delete a savepoint (path appended).
    #[arg(long, num_args = 1.., default_values = ["runnel", "savepoint", "dispose"])]
    dispose_command: Vec<String>,
    /// Image for StreamJobs that leave `spec.image` empty or unset.
    #[arg(long, value_name = "IMAGE")]
    default_runtime_image: Option<String>,
    /// `s3CredentialsSecret` for StreamJobs that set none (the Secret must
    /// exist in the StreamJob's namespace).
    #[arg(long, value_name = "SECRET")]
    default_s3_credentials_secret: Option<String>,
    /// Environment for every runtime pod and disposal Job, e.g. the S3
    /// endpoint, region and path style (repeatable; a variable the
    /// StreamJob's podTemplate sets wins).
    #[arg(long = "runtime-env", value_name = "NAME=VALUE", value_parser = parse_env)]
    runtime_env: Vec<EnvVar>,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // kube's rustls uses ring; when a workspace build unifies rustls features
    // (the runtime's aws-sdk enables aws-lc-rs too), rustls cannot pick a
    // provider by itself and panics on the first client. Choose explicitly.
    // An Err means one is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.cmd {
        Cmd::Crd => {
            print!("{}", runnel_operator::crd::crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(run(*a))
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.encode() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    init_logs(a.log_format);
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let metrics = Arc::new(Metrics::new());
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| "runnel-operator".into());
    let mut ctx = Context::new(client.clone(), metrics.clone(), instance.clone());
    ctx.dispose_command = a.dispose_command.clone();
    ctx.defaults = RuntimeDefaults {
        image: a.default_runtime_image.clone(),
        s3_credentials_secret: a.default_s3_credentials_secret.clone(),
        env: a.runtime_env.clone(),
    };
    let ctx = Arc::new(ctx);
    let metrics_task = tokio::spawn(serve_metrics(a.metrics_addr, metrics));

    let mut leader = if a.no_leader_election {
        None
    } else {
        let ns = a
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &a.lease_name)
            .with_namespace(ns)
            .with_identity(instance)
            .with_duration(15)
            .with_grace(5)
            .build()
            .await
            .context("cannot create the leader-election lease manager")?;
        let (rx, task) = manager.watch().await;
        Some((rx, task))
    };
    if let Some((rx, _)) = leader.as_mut() {
        info!("waiting for leadership");
        while !*rx.borrow_and_update() {
            rx.changed().await.context("lease manager stopped")?;
        }
        info!("leading");
    }
    let namespaces: Vec<Option<String>> = if a.namespaces.is_empty() {
        vec![None]
    } else {
        a.namespaces.iter().cloned().map(Some).collect()
    };
    let controllers = futures::future::join_all(
        namespaces
            .into_iter()
            .map(|ns| controller::run(ctx.clone(), ns)),
    );
    let lost = async {
        match leader.as_mut() {
            Some((rx, _)) => loop {
                if rx.changed().await.is_err() || !*rx.borrow() {
                    return;
                }
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = controllers => { info!("controllers stopped"); Ok(ExitCode::SUCCESS) }
        _ = lost => {
            // Exit rather than keep acting without the lease; the pod restarts
            // and competes again.
            error!("lost leadership");
            Ok(ExitCode::from(2))
        }
        r = metrics_task => {
            r??;
            Ok(ExitCode::FAILURE)
        }
    }
}
