//! The head's service object: owns the store, the blob store and the agents, and
//! executes typed commands. It never sees HTTP.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use agent_client::{AgentAddr, AgentClient, ContainerStatus, RunState};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use images::BlobStore;
use tokio::sync::{Mutex, broadcast};

use crate::error::{Error, Result};
use crate::model::{ContainerRecord, NodeRecord, Status};
use crate::store::Store;

/// A change to a container (state, name, removal), for waiters and later for events.
#[derive(Debug, Clone)]
pub struct Change {
    pub account: String,
    pub id: String,
    pub removed: bool,
    pub status: Status,
    pub exit_code: i32,
}

pub struct Cluster {
    /// Itself, for tasks spawned from `&self` methods.
    pub(crate) me: std::sync::Weak<Cluster>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) blobs: BlobStore,
    pub(crate) registry: images::registry::RegistryClient,
    /// Where build contexts are spooled (unnamed files: nothing outlives a crash).
    pub(crate) build_dir: std::path::PathBuf,
    /// Each account's concurrent builds.
    pub(crate) build_slots: StdMutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// The client of every followed server, with the serial of its follower
    /// task (a server forgotten and joined again gets a new follower; the old
    /// one sees its serial gone and ends).
    agents: StdMutex<HashMap<String, (u64, AgentClient)>>,
    followers: std::sync::atomic::AtomicU64,
    /// How the head shows itself to agents on TCP (mutual TLS, cluster CA).
    agent_tls: StdMutex<Option<Arc<rustls::ClientConfig>>>,
    /// Servers whose agent's event stream is open: the others are down.
    connected: StdMutex<std::collections::HashSet<String>>,
    locks: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
    pub(crate) changes: broadcast::Sender<Change>,
    pub(crate) events: crate::events::EventLog,
    /// Recent answers of `authenticate`, by certificate serial.
    pub(crate) auth_cache: StdMutex<HashMap<String, crate::accounts::CachedAuth>>,
    /// Bumped on every change to accounts and certificates on this head:
    /// open streams check their caller again.
    pub(crate) auth_changes: tokio::sync::watch::Sender<u64>,
    /// Exec instances (in memory, as Docker keeps them).
    pub(crate) execs: StdMutex<HashMap<String, crate::exec::ExecRecord>>,
    /// User-namespace ranges of accounts (they never change while one lives).
    pub(crate) id_maps: StdMutex<HashMap<String, agent_client::IdMap>>,
    /// (server, network) → the overlay-map version last sent there.
    pub(crate) pushed_maps: StdMutex<HashMap<(String, String), u64>>,
    /// Networks whose maps a background push is about to send.
    pub(crate) maps_pending: StdMutex<std::collections::HashSet<String>>,
    pub name: String,
}

impl Cluster {
    /// `data_dir` is the head's own directory (blobs, temp files); `registry`
    /// how it reaches registries.
    pub fn new(
        store: Arc<dyn Store>,
        data_dir: &Path,
        name: &str,
        registry: images::registry::RegistryClient,
    ) -> Result<Arc<Cluster>> {
        let blobs = BlobStore::open(&data_dir.join("blobs"))
            .map_err(|e| Error::internal("opening the blob store", e))?;
        let (changes, _) = broadcast::channel(1024);
        Ok(Arc::new_cyclic(|me| Cluster {
            me: me.clone(),
            store,
            blobs,
            registry,
            build_dir: data_dir.join("build"),
            build_slots: Default::default(),
            agents: StdMutex::new(HashMap::new()),
            followers: Default::default(),
            agent_tls: StdMutex::new(None),
            connected: StdMutex::new(Default::default()),
            locks: StdMutex::new(HashMap::new()),
            id_maps: StdMutex::new(HashMap::new()),
            pushed_maps: StdMutex::new(HashMap::new()),
            maps_pending: Default::default(),
            changes,
            execs: StdMutex::new(HashMap::new()),
            auth_cache: StdMutex::new(HashMap::new()),
            auth_changes: tokio::sync::watch::Sender::new(0),
            events: crate::events::EventLog::default(),
            name: name.to_string(),
        }))
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    pub(crate) fn notify(&self, c: &ContainerRecord, removed: bool) {
        // Its names are answered only while it runs: every server holding
        // its networks gets their maps again.
        if let Some(me) = self.me.upgrade() {
            me.push_maps_later(crate::containers::endpoint_keys(c));
        }
        let _ = self.changes.send(Change {
            account: c.account.clone(),
            id: c.id.clone(),
            removed,
            status: c.state.status,
            exit_code: c.state.exit_code,
        });
    }

    /// Serialises operations on one container (start/stop/rm/state updates).
    pub(crate) async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    pub(crate) fn forget_lock(&self, id: &str) {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub(crate) fn agent(&self, node: &str) -> Result<AgentClient> {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| Error::Upstream("the server of this container is not available".into()))
    }

    /// The TLS configuration (the head's certificate, the cluster CA) for agents on TCP.
    pub fn set_agent_tls(&self, config: Arc<rustls::ClientConfig>) {
        *self.agent_tls.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
    }

    /// A client for server `id`'s agent at `address`: plain on a unix socket
    /// (the local agent), mutual TLS on TCP, where the agent must prove it is `id`.
    pub(crate) fn client_for(&self, id: &str, address: &str) -> Result<AgentClient> {
        let addr = AgentAddr::parse(address).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        match addr {
            AgentAddr::Unix(_) => Ok(AgentClient::new(addr)),
            AgentAddr::Tcp(_) => {
                let tls = self
                    .agent_tls
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .ok_or_else(|| {
                        Error::InvalidArgument("servers on TCP need the cluster's TLS".into())
                    })?;
                AgentClient::new(addr)
                    .with_tls(tls, &pki::agent_dns_name(id))
                    .map_err(|e| Error::InvalidArgument(e.to_string()))
            }
        }
    }

    /// Registers an agent that answers now and starts following its state changes.
    pub async fn add_node(self: &Arc<Self>, id: &str, address: &str) -> Result<()> {
        let client = self.client_for(id, address)?;
        let info = client
            .info()
            .await
            .map_err(|e| Error::Upstream(format!("agent {address}: {e}")))?;
        let draining = self
            .store
            .list_nodes()
            .await?
            .iter()
            .any(|n| n.id == id && n.draining);
        self.store
            .upsert_node(&NodeRecord {
                id: id.to_string(),
                address: address.to_string(),
                info,
                last_seen: Utc::now(),
                draining,
            })
            .await?;
        // It just answered; follow_node keeps this current from now on.
        self.set_connected(id, true);
        self.follow(id, client);
        Ok(())
    }

    /// Starts following server `id` (once), whether or not it answers yet.
    pub(crate) fn follow(self: &Arc<Self>, id: &str, client: AgentClient) {
        let serial = {
            let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
            if agents.contains_key(id) {
                return;
            }
            let serial = self
                .followers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            agents.insert(id.to_string(), (serial, client.clone()));
            serial
        };
        let me = self.clone();
        let node = id.to_string();
        tokio::spawn(async move { me.follow_node(node, serial, client).await });
    }

    /// Whether `serial` is still the follower of `node`.
    fn current_follower(&self, node: &str, serial: u64) -> bool {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .is_some_and(|(s, _)| *s == serial)
    }

    fn set_connected(&self, node: &str, up: bool) {
        let mut c = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        if up {
            c.insert(node.to_string());
        } else {
            c.remove(node);
        }
    }

    /// What inspect says of a container whose server is down.
    pub const SERVER_DOWN: &str =
        "the container's server is down: this is the last state it reported";

    /// Whether the server is down (its agent's heartbeats stopped).
    pub fn server_down(&self, node: &str) -> bool {
        !self.agent_connected(node)
    }

    /// Whether the head holds a live event stream from the server's agent.
    pub(crate) fn agent_connected(&self, node: &str) -> bool {
        self.connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(node)
    }

    /// Stops talking to a forgotten server's agent.
    pub(crate) fn remove_agent(&self, node: &str) {
        self.agents
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
        self.set_connected(node, false);
    }

    /// Follows an agent's event stream forever, reconciling after every (re)connect.
    async fn follow_node(self: Arc<Self>, node: String, serial: u64, client: AgentClient) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match client.events().await {
                Ok(mut events) => {
                    if !self.current_follower(&node, serial) {
                        return;
                    }
                    backoff = Duration::from_millis(100);
                    // A server may come back with other resources (or report
                    // them for the first time, after joining).
                    match client.info().await {
                        Ok(info) => {
                            if let Err(e) = self.refresh_node_info(&node, info).await {
                                tracing::warn!("recording node {node}: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("node {node}: info: {e}"),
                    }
                    self.set_connected(&node, true);
                    // The stream is open: whatever changes from now on arrives on it,
                    // so a listing taken now cannot miss anything.
                    if let Err(e) = self.reconcile(&node, &client).await {
                        tracing::warn!("reconciling node {node}: {e}");
                    }
                    while let Some(ev) = events.next().await {
                        match ev {
                            Ok(status) => {
                                if let Err(e) = self.apply_status(&status).await {
                                    tracing::warn!("applying status of {}: {e}", status.id);
                                }
                            }
                            Err(e) => {
                                tracing::warn!("event stream of node {node}: {e}");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!("node {node} unreachable: {e}"),
            }
            if !self.current_follower(&node, serial) {
                // Forgotten by the operator (and maybe joined again since).
                return;
            }
            self.set_connected(&node, false);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Brings the store in line with what the agent actually runs.
    async fn reconcile(self: &Arc<Self>, node: &str, client: &AgentClient) -> Result<()> {
        let actual = client
            .list()
            .await
            .map_err(|e| Error::Upstream(e.to_string()))?;
        for st in &actual {
            self.apply_status(st).await?;
        }
        // A restarted agent knows no overlay map: send them all again.
        self.forget_pushed_maps(node);
        self.resend_maps(node).await?;
        for c in self.store.containers_on_node(node).await? {
            if c.state.status == Status::Restarting {
                // The head stopped while a restart was pending: carry it out now.
                self.schedule_restart(c.account.clone(), c.id.clone(), Duration::ZERO);
                continue;
            }
            if c.state.status.is_running() && !actual.iter().any(|s| s.id == c.id) {
                // The agent has no trace of it (e.g. the server was wiped): it is gone.
                let status = ContainerStatus {
                    id: c.id.clone(),
                    generation: c.generation,
                    state: RunState::Stopped,
                    pid: 0,
                    started_at: None,
                    finished_at: Some(Utc::now().to_rfc3339()),
                    exit_code: Some(255),
                    oom_killed: false,
                    error: Some("container lost by its server".into()),
                    health: None,
                };
                self.apply_status(&status).await?;
            }
        }
        Ok(())
    }

    /// Applies an agent report to the stored record; idempotent. Runs exit
    /// handling (auto-remove, restart policy) on a running → stopped transition.
    pub async fn apply_status(self: &Arc<Self>, st: &ContainerStatus) -> Result<()> {
        let _g = self.lock(&st.id).await;
        let Some(mut c) = self.store.get_container_by_id(&st.id).await? else {
            return Ok(());
        };
        if st.generation < c.generation {
            return Ok(()); // a report about an earlier run
        }
        let health_before = c.state.health.clone();
        let status_before = c.state.status;
        let exited = self.record_status(&mut c, st);
        if !exited {
            if c.state.status != status_before && status_before != Status::Removing {
                // Running without the head having recorded the start (it died
                // between the agent's answer and its own write): the truth wins.
                self.store.update_container(&c).await?;
                self.notify(&c, false);
                self.emit_container(&c, "start", &[]);
            } else if c.state.health != health_before {
                self.store.update_container(&c).await?;
                let was = health_before.map(|h| h.status);
                if let Some(h) = &c.state.health
                    && was.as_deref() != Some(h.status.as_str())
                {
                    self.emit_container(&c, format!("health_status: {}", h.status), &[]);
                }
            }
            return Ok(());
        }
        self.store.update_container(&c).await?;
        self.notify(&c, false);
        drop(_g);
        self.after_exit(c).await;
        Ok(())
    }

    /// Updates `c` from a report. Returns true when this report is the exit of the
    /// current run (the caller saves and handles it); saves running reports itself.
    pub(crate) fn record_status(&self, c: &mut ContainerRecord, st: &ContainerStatus) -> bool {
        match st.state {
            RunState::Running => {
                if st.health.is_some() && matches!(c.state.status, Status::Running | Status::Paused)
                {
                    c.state.health = st.health.clone();
                }
                if c.state.status != Status::Running && c.state.status != Status::Paused {
                    c.state.status = Status::Running;
                    c.state.pid = st.pid;
                    if let Some(t) = parse_time(st.started_at.as_deref()) {
                        c.state.started_at = Some(t);
                    }
                }
                false
            }
            RunState::Stopped => {
                // Restarting: this exit was handled already.
                if !matches!(c.state.status, Status::Running | Status::Paused) {
                    return false;
                }
                c.state.status = Status::Exited;
                c.state.pid = 0;
                c.state.exit_code = st.exit_code.unwrap_or(255);
                c.state.oom_killed = st.oom_killed;
                c.state.finished_at = parse_time(st.finished_at.as_deref()).or(Some(Utc::now()));
                if let Some(e) = &st.error {
                    c.state.error = e.clone();
                }
                if c.state.oom_killed {
                    self.emit_container(c, "oom", &[]);
                }
                self.emit_container(c, "die", &[("exitCode", c.state.exit_code.to_string())]);
                true
            }
        }
    }
}

pub(crate) fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}
