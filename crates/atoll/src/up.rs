//! `atoll up` and `atoll reset`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use cluster::Cluster;
use cluster::model::OPERATOR;
use tokio::signal::unix::{SignalKind, signal};

use crate::instance::Instance;

/// Runs the head and a local agent until SIGTERM/SIGINT. Containers keep running
/// when it stops: their shims are separate processes.
pub async fn run(data_dir: &Path, docker_socket: &Path) -> Result<()> {
    let inst = Instance::open(data_dir)?;
    let exe = std::env::current_exe().context("locating the atoll binary")?;

    // The agent: the head reaches it only through its socket, as it would reach a
    // remote server.
    let agent = agent::Agent::start(agent::AgentConfig {
        dir: inst.agent_dir(),
        instance: inst.id.clone(),
        exe,
    })
    .await
    .context("starting the agent")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let agent_sock = inst.agent_socket();
    let mut rx = stop_rx.clone();
    let agent_task = tokio::spawn(agent::serve_unix(agent_sock.clone(), agent, async move {
        let _ = rx.changed().await;
    }));
    wait_for_socket(&agent_sock).await?;

    // The head.
    std::fs::create_dir_all(inst.head_dir())?;
    let store = store::SqliteStore::open(&inst.head_dir().join("atoll.db"))
        .await
        .map_err(|e| anyhow::anyhow!("opening the store: {e}"))?;
    let cluster = Cluster::new(
        Arc::new(store),
        &inst.head_dir(),
        &format!("atoll-{}", inst.id),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    cluster
        .seed_packages()
        .await
        .map_err(|e| anyhow::anyhow!("writing the sample packages: {e}"))?;
    cluster
        .add_node("local", &format!("unix://{}", agent_sock.display()))
        .await
        .map_err(|e| anyhow::anyhow!("registering the local agent: {e}"))?;
    let mut rx = stop_rx.clone();
    let operator_task = tokio::spawn({
        let sock = inst.operator_socket();
        let cluster = cluster.clone();
        async move {
            operator_api::serve_unix(&sock, cluster, async move {
                let _ = rx.changed().await;
            })
            .await
        }
    });
    let mut rx = stop_rx.clone();
    let head_task = tokio::spawn({
        let sock = docker_socket.to_path_buf();
        async move {
            docker_api::serve_unix(&sock, cluster, OPERATOR, async move {
                let _ = rx.changed().await;
            })
            .await
        }
    });
    tracing::info!(
        "atoll is up: export DOCKER_HOST=unix://{}",
        docker_socket.display()
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        r = head_task => { r??; anyhow::bail!("the Docker API server stopped"); }
        r = operator_task => { r??; anyhow::bail!("the operator API server stopped"); }
    }
    tracing::info!("stopping (containers keep running)");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), agent_task).await;
    Ok(())
}

async fn wait_for_socket(path: &Path) -> Result<()> {
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    anyhow::bail!("the agent did not come up on {}", path.display())
}

/// Stops and removes everything the instance of `data_dir` created.
pub async fn reset(data_dir: &Path) -> Result<()> {
    if !data_dir.exists() {
        return Ok(());
    }
    let inst = Instance::open(data_dir)?;
    agent::reset(&inst.agent_dir(), &inst.id)
        .await
        .context("removing containers and network")?;
    std::fs::remove_dir_all(&inst.data_dir)
        .with_context(|| format!("removing {}", inst.data_dir.display()))?;
    Ok(())
}
