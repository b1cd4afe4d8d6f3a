//! `atoll up` and `atoll reset`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use cluster::Cluster;
use cluster::model::OPERATOR;
use tokio::signal::unix::{SignalKind, signal};

use crate::instance::Instance;

/// Runs the head and its servers until SIGTERM/SIGINT: one agent in this
/// process, or (`nodes` > 0) a simulated datacenter of agent processes (see
/// `nodes.rs`). Containers keep running when it stops: their shims are
/// separate processes.
pub async fn run(data_dir: &Path, docker_socket: &Path, nodes: usize) -> Result<()> {
    if nodes > crate::nodes::MAX_NODES {
        anyhow::bail!(
            "--nodes: at most {} simulated servers",
            crate::nodes::MAX_NODES
        );
    }
    let inst = Instance::open(data_dir)?;
    let exe = std::env::current_exe().context("locating the atoll binary")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

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

    // The servers. The head reaches each only through its agent's socket, as it
    // would reach a remote machine.
    let mut agent_task = None;
    let mut simulated = None;
    if nodes == 0 {
        let agent_sock = inst.agent_socket();
        let listener = agent_client::serve::bind_unix(&agent_sock)
            .with_context(|| format!("binding {}", agent_sock.display()))?;
        let agent = start_agent(&inst, exe).await?;
        let mut rx = stop_rx.clone();
        agent_task = Some(tokio::spawn(agent::serve(listener, agent, async move {
            let _ = rx.changed().await;
        })));
        cluster
            .add_node("local", &format!("unix://{}", agent_sock.display()))
            .await
            .map_err(|e| anyhow::anyhow!("registering the local agent: {e}"))?;
    } else {
        let mut servers = crate::nodes::setup(&inst, nodes)
            .await
            .context("setting up the simulated datacenter")?;
        for n in &mut servers {
            let ip_port = n.ip_port().to_string();
            n.spawn(&exe, &ip_port)?;
        }
        crate::nodes::register(&cluster, &servers).await?;
        let servers = Arc::new(std::sync::Mutex::new(servers));
        tokio::spawn(crate::nodes::supervise(
            servers.clone(),
            exe.clone(),
            stop_rx.clone(),
        ));
        simulated = Some(servers);
    }

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
    let res = tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
        r = head_task => r.map_err(anyhow::Error::from).and_then(|r| r.map_err(Into::into))
            .and_then(|()| Err(anyhow::anyhow!("the Docker API server stopped"))),
        r = operator_task => r.map_err(anyhow::Error::from).and_then(|r| r.map_err(Into::into))
            .and_then(|()| Err(anyhow::anyhow!("the operator API server stopped"))),
    };
    tracing::info!("stopping (containers keep running)");
    let _ = stop_tx.send(true);
    if let Some(t) = agent_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
    }
    if let Some(servers) = simulated {
        let mut servers = servers.lock().unwrap_or_else(|p| p.into_inner());
        for n in servers.iter_mut() {
            n.stop();
        }
    }
    res
}

/// `atoll agent`: one server's agent, serving until SIGTERM/SIGINT.
pub async fn agent(data_dir: &Path, listen: &str) -> Result<()> {
    // The address first: a bad one must not leave a half-started server behind.
    enum Listener {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener),
    }
    let listener = if let Some(addr) = listen.strip_prefix("tcp://") {
        Listener::Tcp(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?,
        )
    } else if let Some(path) = listen.strip_prefix("unix://") {
        Listener::Unix(
            agent_client::serve::bind_unix(Path::new(path))
                .with_context(|| format!("binding {path}"))?,
        )
    } else {
        anyhow::bail!("--listen: expected tcp://ADDR:PORT or unix:///PATH, got {listen}");
    };
    let inst = Instance::open(data_dir)?;
    let exe = std::env::current_exe().context("locating the atoll binary")?;
    let agent = start_agent(&inst, exe).await?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        let _ = stop_rx.changed().await;
    };
    let task = match listener {
        Listener::Tcp(l) => tokio::spawn(agent::serve(l, agent, shutdown)),
        Listener::Unix(l) => tokio::spawn(agent::serve(l, agent, shutdown)),
    };
    tracing::info!("agent of {} is up on {listen}", inst.data_dir.display());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        r = task => { r??; anyhow::bail!("the agent API server stopped"); }
    }
    let _ = stop_tx.send(true);
    Ok(())
}

/// The agent of the server whose instance is `inst` (adopting what still runs).
async fn start_agent(inst: &Instance, exe: PathBuf) -> Result<Arc<agent::Agent>> {
    agent::Agent::start(agent::AgentConfig {
        dir: inst.agent_dir(),
        instance: inst.id.clone(),
        exe,
    })
    .await
    .context("starting the agent")
}

/// Stops and removes everything the instance of `data_dir` created.
pub async fn reset(data_dir: &Path) -> Result<()> {
    if !data_dir.exists() {
        return Ok(());
    }
    let inst = Instance::open(data_dir)?;
    let exe = std::env::current_exe().context("locating the atoll binary")?;
    crate::nodes::reset(&inst, &exe)
        .await
        .context("removing the simulated servers")?;
    agent::reset(&inst.agent_dir(), &inst.id)
        .await
        .context("removing containers and network")?;
    std::fs::remove_dir_all(&inst.data_dir)
        .with_context(|| format!("removing {}", inst.data_dir.display()))?;
    Ok(())
}
