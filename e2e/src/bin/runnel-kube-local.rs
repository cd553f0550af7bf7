//! `runnel-kube-local`: the local Kubernetes control plane and pod runner
//! (see `docs/e2e.md`). Prints `serving http://ADDR` as its first stdout
//! line, writes a kubeconfig, and runs until SIGINT/SIGTERM, when it kills
//! every pod process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use runnel_e2e::podrunner::{PodRunner, RunnerConfig};
use runnel_e2e::server::{AppState, router};
use runnel_e2e::store::Store;
use runnel_e2e::{jobs, kubeconfig};

#[derive(Parser)]
#[command(
    name = "runnel-kube-local",
    version,
    about = "A local Kubernetes control plane that runs runtime pods as local processes"
)]
struct Cli {
    /// Address to serve the API on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write the kubeconfig for kubectl and the operator.
    #[arg(long, default_value = "runnel-kube-local.kubeconfig")]
    kubeconfig: PathBuf,
    /// Namespace of the kubeconfig's context.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The local binary that runs pods of the runtime image.
    #[arg(long)]
    runnel_bin: PathBuf,
    /// Images (a regex) that are the runtime image; pods with others are refused.
    #[arg(long, default_value = "runnel")]
    image_pattern: String,
    /// Pod directories and logs.
    #[arg(long)]
    state_dir: PathBuf,
    /// Changes kept for watches; a watch from an older resourceVersion gets 410 Gone.
    #[arg(long, default_value_t = 10_000)]
    event_window: usize,
    /// Pod addresses are 127.<POD_NET>.x.y (default: random in 100..=250).
    #[arg(long)]
    pod_net: Option<u8>,
    /// Seconds between watch bookmarks (for clients that ask for them).
    #[arg(long, default_value_t = 10)]
    bookmark_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let pattern =
        regex::Regex::new(&cli.image_pattern).context("--image-pattern is not a valid regex")?;
    anyhow::ensure!(
        cli.runnel_bin.exists(),
        "--runnel-bin {} does not exist",
        cli.runnel_bin.display()
    );
    std::fs::create_dir_all(&cli.state_dir)
        .with_context(|| format!("cannot create {}", cli.state_dir.display()))?;
    let store = Store::new(cli.event_window, pattern);
    let pod_net = cli.pod_net.unwrap_or_else(|| rand::random_range(100..=250));
    let cfg = RunnerConfig {
        runnel_bin: std::fs::canonicalize(&cli.runnel_bin)?,
        state_dir: std::fs::canonicalize(&cli.state_dir)?,
        pod_net,
        node_name: "runnel-kube-local".into(),
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    kubeconfig::write(&cli.kubeconfig, &url, &cli.namespace)
        .with_context(|| format!("cannot write {}", cli.kubeconfig.display()))?;
    let runner = PodRunner::new(store.clone(), cfg.clone());
    tokio::spawn(runner.clone().run());
    tokio::spawn(jobs::run(store.clone()));
    let state = Arc::new(AppState {
        store,
        addr: addr.to_string(),
        logs_dir: cfg.logs_dir(),
        bookmark_interval: Duration::from_secs(cli.bookmark_seconds.max(1)),
    });
    println!(
        "serving {url} (kubeconfig {}, pods on 127.{pod_net}.0.0/16)",
        cli.kubeconfig.display()
    );
    tracing::info!(%url, "serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let server = axum::serve(listener, router(state));
    tokio::select! {
        r = server => r.context("the server stopped")?,
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
    runner.shutdown();
    Ok(())
}
