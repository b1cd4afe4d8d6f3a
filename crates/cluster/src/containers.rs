//! Container commands: create, start, stop, kill, restart, rm, rename, wait, logs,
//! attach, prune, and what happens after an exit (auto-remove, restart policies).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent_client::{ClientError, StopRequest};
use bollard_stubs::models::ContainerCreateBody;
use chrono::Utc;
use futures::TryStreamExt;
use tokio_util::io::ReaderStream;

use crate::cluster::Cluster;
use crate::create::{ImageDefaults, RestartPolicy, parse_signal, plan};
use crate::error::{Error, Result, StoreError};
use crate::model::{ContainerRecord, ContainerState, Status};
use crate::names;

/// Docker's `wait` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

impl WaitCondition {
    pub fn parse(s: &str) -> Result<WaitCondition> {
        match s {
            "" | "not-running" => Ok(WaitCondition::NotRunning),
            "next-exit" => Ok(WaitCondition::NextExit),
            "removed" => Ok(WaitCondition::Removed),
            other => Err(Error::InvalidArgument(format!(
                "invalid condition: \"{other}\""
            ))),
        }
    }
}

pub(crate) fn upstream(e: ClientError) -> Error {
    match e {
        ClientError::Status { status, message } if (400..500).contains(&status) => {
            if status == 404 {
                Error::NotFound(message)
            } else if status == 409 {
                Error::Conflict(message)
            } else if status == 403 {
                Error::Forbidden(message)
            } else {
                Error::InvalidArgument(message)
            }
        }
        ClientError::Status { message, .. } => Error::Upstream(message),
        other => Error::Upstream(other.to_string()),
    }
}

/// How long a background push of overlay maps waits for more changes.
const PUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

impl Cluster {
    /// Pushes the maps of `networks` without holding up the caller (a
    /// create or remove): the container's own server gets them before its
    /// start anyway, and agents keep the newest version whatever the order.
    /// Changes within [`PUSH_DELAY`] share one push (a `docker run --rm`
    /// changes its networks' maps four times in a few milliseconds).
    pub(crate) fn push_maps_later(self: &Arc<Self>, networks: Vec<(String, u32)>) {
        let fresh: Vec<(String, u32)> = {
            let mut pending = self.maps_pending.lock().unwrap_or_else(|p| p.into_inner());
            networks
                .into_iter()
                .filter(|(id, _)| pending.insert(id.clone()))
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PUSH_DELAY).await;
            {
                // A change from now on schedules a push of its own.
                let mut pending = me.maps_pending.lock().unwrap_or_else(|p| p.into_inner());
                for (id, _) in &fresh {
                    pending.remove(id);
                }
            }
            me.push_network_maps(&fresh).await
        });
    }
}

/// The networks of a container, as the overlay-map pushes name them.
pub(crate) fn endpoint_keys(c: &ContainerRecord) -> Vec<(String, u32)> {
    c.spec
        .networks
        .iter()
        .map(|e| (e.network.clone(), e.vni))
        .collect()
}

impl Cluster {
    /// Docker's lookup order: full id, exact name, then unique id prefix.
    pub async fn find_container(&self, account: &str, key: &str) -> Result<ContainerRecord> {
        let key_name = key.strip_prefix('/').unwrap_or(key);
        if key.len() == 64
            && let Some(c) = self.store.get_container(account, key).await?
        {
            return Ok(c);
        }
        let all = self.store.list_containers(account).await?;
        if let Some(c) = all.iter().find(|c| c.name == key_name) {
            return Ok(c.clone());
        }
        if !key.is_empty() && names::is_hex(key) {
            let matches: Vec<&ContainerRecord> =
                all.iter().filter(|c| c.id.starts_with(key)).collect();
            match matches.len() {
                1 => return Ok(matches[0].clone()),
                0 => {}
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "multiple IDs found with provided prefix: {key}"
                    )));
                }
            }
        }
        Err(Error::no_such_container(key))
    }

    pub async fn list_containers(&self, account: &str) -> Result<Vec<ContainerRecord>> {
        let mut v = self.store.list_containers(account).await?;
        v.sort_by_key(|c| std::cmp::Reverse(c.created));
        Ok(v)
    }

    pub async fn create_container(
        self: &Arc<Self>,
        account: &str,
        name: Option<&str>,
        body: ContainerCreateBody,
    ) -> Result<(String, Vec<String>)> {
        let image_ref = body.image.clone().unwrap_or_default();
        if image_ref.is_empty() {
            return Err(Error::InvalidArgument(
                "config cannot be empty in order to create a container".into(),
            ));
        }
        let name = name
            .filter(|n| !n.is_empty())
            .map(names::validate_container_name)
            .transpose()?;
        // `affinity:` entries are for the scheduler, not the program.
        let mut body = body;
        let labels: BTreeMap<String, String> = body
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let had_env = body.env.is_some();
        let mut env = body.env.take().unwrap_or_default();
        let rules = placement::affinity::rules_from(&mut env, &labels)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        body.env = had_env.then_some(env);
        let security =
            crate::security::check(account, &body.host_config.clone().unwrap_or_default())?;
        let image = self.find_image(account, &image_ref).await?;
        // Anything else missing (a network, a `--link` or `--volumes-from`
        // container) is a bad request here, not Docker's 404: the docker CLI
        // takes any 404 from create for a missing image and tries to pull it.
        self.create_from_image(account, name, body, rules, security, image, image_ref, None)
            .await
            .map_err(|e| match e {
                Error::NotFound(m) => Error::InvalidArgument(m),
                e => e,
            })
    }

    /// The rest of [`Cluster::create_container`], once the image is known.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn create_from_image(
        self: &Arc<Self>,
        account: &str,
        name: Option<String>,
        body: ContainerCreateBody,
        rules: Vec<placement::affinity::Rule>,
        security: crate::security::Security,
        image: crate::model::ImageRecord,
        image_ref: String,
        server: Option<String>,
    ) -> Result<(String, Vec<String>)> {
        let image_config = self.image_config(&image.id)?;
        let id = names::new_id();
        let mut planned = plan(&id, &body, &ImageDefaults::from_config(&image_config))?;
        planned.server = server;
        planned.spec.capabilities = security.capabilities;
        planned.spec.no_new_privileges = security.no_new_privileges;
        planned.spec.seccomp_unconfined = security.seccomp_unconfined;
        planned.spec.privileged = security.privileged;
        planned.spec.host_namespaces = security.host_namespaces;
        planned.spec.devices = security.devices;
        planned.spec.device_rules = security.device_rules;
        planned.spec.userns = self.id_map(account).await?;
        planned.spec.layers = image.layers.iter().map(|l| l.layer_ref()).collect();
        // Ports are published at a public address where the operator set a
        // public network: placement then needs a server on it.
        let public = if planned.ports.is_empty() {
            None
        } else {
            self.public_network().await?
        };
        let (node, package, reservation) = self
            .place_container(account, &rules, &mut planned, public.is_some())
            .await?;
        let storage = reservation.disk
            + crate::storage::log_bound(planned.spec.log_max_size, planned.spec.log_max_files)
            + self.new_volumes_storage(account, &planned).await?;
        let _limits = self
            .check_account_limits(
                account,
                crate::accounts::Needs {
                    containers: 1,
                    memory: reservation.memory,
                    storage,
                    what: "container",
                },
            )
            .await?;
        let (mounts, anonymous_volumes) = self.resolve_mounts(account, &node.id, &planned).await?;
        planned.spec.mounts = mounts;

        let mut config = serde_json::to_value(&body)
            .map_err(|e| Error::internal("encoding container config", e))?;
        config["Image"] = serde_json::Value::String(image_ref.clone());
        config["Cmd"] = serde_json::json!(planned.cmd);
        config["Entrypoint"] = if planned.entrypoint.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!(planned.entrypoint)
        };
        config["WorkingDir"] = serde_json::json!(planned.working_dir);
        let mut rec = ContainerRecord {
            account: account.to_string(),
            id: id.clone(),
            name: String::new(),
            image_ref,
            image_id: image.id.clone(),
            created: Utc::now(),
            node: node.id.clone(),
            config,
            spec: planned.spec,
            state: ContainerState::default(),
            labels: planned.labels,
            generation: 0,
            package,
            reservation,
        };
        // The package's limits show in inspect, as the user's own would.
        crate::update::set_host_config_resources(&mut rec.config, &rec.spec.resources);

        // Name and addresses are both unique: retry on clashes with other creates.
        let networks = self.resolve_networks(account, &planned.networks).await?;
        let link_names = self
            .resolve_links(account, &networks, &planned.links, &mut rec.spec)
            .await?;
        let env = rec.spec.process.env.clone();
        if !planned.ports.is_empty() {
            if networks.first().is_some_and(|(n, _)| n.internal) {
                return Err(Error::InvalidArgument(format!(
                    "cannot publish ports: the container's first network {} is internal",
                    networks[0].0.name
                )));
            }
            let mut ports = planned.ports.clone();
            match &public {
                Some(_) => crate::public::public_ports(&mut ports)?,
                None => self.assign_host_ports(&node, &mut ports).await?,
            }
            rec.spec.ports = ports;
        }
        for attempt in 0..64u32 {
            rec.name = match &name {
                Some(n) => n.clone(),
                None => names::random_name(attempt),
            };
            // `ALIAS_NAME=/<this container's name>/<alias>` for each link.
            rec.spec.process.env = env.clone();
            for (var, alias) in &link_names {
                rec.spec
                    .process
                    .env
                    .push(format!("{var}_NAME=/{}/{alias}", rec.name));
            }
            if let Some(net) = &public {
                rec.spec.public = Some(self.allocate_public(net).await?);
            }
            rec.spec.networks.clear();
            for (n, req) in &networks {
                rec.spec
                    .networks
                    .push(self.allocate_endpoint(n, req).await?);
            }
            match self.store.insert_container(&rec).await {
                Ok(()) => {
                    agent_client::faults::crash_point("head:create:after-insert");
                    for v in &anonymous_volumes {
                        if let Err(e) = self.store.insert_volume(v).await {
                            // Not half-created: without its volume there is no container.
                            let _ = self.store.delete_container(account, &id).await;
                            return Err(e.into());
                        }
                        self.emit_volume(v, "create");
                    }
                    self.notify(&rec, false);
                    self.emit_container(&rec, "create", &[]);
                    return Ok((id, Vec::new()));
                }
                Err(StoreError::Conflict(what)) if what == "name" => {
                    if let Some(n) = &name {
                        let other = self.find_container(account, n).await.ok();
                        return Err(Error::Conflict(format!(
                            "Conflict. The container name \"/{n}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                            other.map(|o| o.id).unwrap_or_default()
                        )));
                    }
                }
                Err(StoreError::Conflict(what)) if what == "ip" => {
                    if networks.iter().any(|(_, r)| r.ip.is_some()) {
                        return Err(Error::Forbidden("Address already in use".into()));
                    }
                }
                Err(StoreError::Conflict(what)) if what == "public ip" => {}
                Err(StoreError::Conflict(what)) if what == "network gone" => {
                    return Err(Error::NotFound(
                        "a network of the container was removed meanwhile".into(),
                    ));
                }
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(
            "could not allocate a name and address, try again".into(),
        ))
    }

    /// `--link NAME:ALIAS`, Docker's legacy links: the linked container's
    /// address under both names in /etc/hosts, and Docker's environment
    /// (`ALIAS_PORT_<p>_<PROTO>…`, `ALIAS_ENV_<VAR>`; the variable prefix and
    /// alias of each link are returned for `ALIAS_NAME`, which needs the
    /// container's name). The linked container must share a network with the
    /// new one (addresses are kept for a container's life, so they are
    /// written once).
    async fn resolve_links(
        &self,
        account: &str,
        networks: &[(
            crate::model::NetworkRecord,
            crate::networks::EndpointRequest,
        )],
        links: &[(String, String)],
        spec: &mut agent_client::ContainerSpec,
    ) -> Result<Vec<(String, String)>> {
        let mut names = Vec::new();
        for (target, alias) in links {
            let t = match self.find_container(account, target).await {
                Err(Error::NotFound(_)) => {
                    return Err(Error::NotFound(format!(
                        "could not get container for {target}"
                    )));
                }
                r => r?,
            };
            let Some(ep) = t
                .spec
                .networks
                .iter()
                .find(|e| networks.iter().any(|(n, _)| n.id == e.network))
            else {
                return Err(Error::InvalidArgument(format!(
                    "cannot link to {target}: it is on none of this container's networks"
                )));
            };
            let ip = ep.ip;
            spec.extra_hosts.push(format!("{alias}:{ip}"));
            if &t.name != alias {
                spec.extra_hosts.push(format!("{}:{ip}", t.name));
            }
            let var = alias.to_ascii_uppercase().replace(['-', '.'], "_");
            let env = &mut spec.process.env;
            let mut ports: Vec<(u16, String)> = t.config["ExposedPorts"]
                .as_object()
                .map(|m| {
                    m.keys()
                        .filter_map(|k| {
                            let (p, proto) = k.split_once('/').unwrap_or((k, "tcp"));
                            Some((p.parse().ok()?, proto.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            ports.extend(
                t.spec
                    .ports
                    .iter()
                    .map(|p| (p.container_port, p.proto.clone())),
            );
            ports.sort();
            ports.dedup();
            if let Some((p, proto)) = ports.first() {
                env.push(format!("{var}_PORT={proto}://{ip}:{p}"));
            }
            for (p, proto) in &ports {
                let k = format!("{var}_PORT_{p}_{}", proto.to_ascii_uppercase());
                env.push(format!("{k}={proto}://{ip}:{p}"));
                env.push(format!("{k}_ADDR={ip}"));
                env.push(format!("{k}_PORT={p}"));
                env.push(format!("{k}_PROTO={proto}"));
            }
            for e in &t.spec.process.env {
                if let Some((k, v)) = e.split_once('=')
                    && !matches!(k, "HOME" | "PATH" | "HOSTNAME")
                {
                    env.push(format!("{var}_ENV_{k}={v}"));
                }
            }
            names.push((var, alias.clone()));
        }
        Ok(names)
    }

    /// Streams every missing layer of the container's image to its server.
    pub(crate) async fn ensure_layers(&self, c: &ContainerRecord) -> Result<()> {
        let agent = self.agent(&c.node)?;
        for l in &c.spec.layers {
            if agent.has_layer(&l.diff_id).await.map_err(upstream)? {
                continue;
            }
            let digest = images::Digest::parse(&l.blob)?;
            let file = tokio::fs::File::open(self.blobs.path(&digest))
                .await
                .map_err(|e| Error::internal("opening layer blob", e))?;
            let stream =
                ReaderStream::with_capacity(file, 256 * 1024).map_err(std::io::Error::other);
            agent
                .put_layer(&l.diff_id, stream)
                .await
                .map_err(upstream)?;
        }
        Ok(())
    }

    pub async fn start_container(self: &Arc<Self>, account: &str, key: &str) -> Result<()> {
        let c = self.find_container(account, key).await?;
        let _g = self.lock(&c.id).await;
        let Some(c) = self.store.get_container(account, &c.id).await? else {
            return Err(Error::no_such_container(key));
        };
        match c.state.status {
            Status::Running | Status::Paused => {
                return Err(Error::NotModified("container already started".into()));
            }
            Status::Removing => {
                return Err(Error::Conflict(format!(
                    "container {} is marked for removal and cannot be started",
                    c.id
                )));
            }
            _ => {}
        }
        let auto_remove = c.config["HostConfig"]["AutoRemove"]
            .as_bool()
            .unwrap_or(false);
        let id = c.id.clone();
        let r = self.start_locked(c).await;
        if r.is_err() && auto_remove {
            // Docker removes an auto-remove container whose start failed.
            drop(_g);
            let _ = self.remove_container(account, &id, true).await;
        }
        r
    }

    /// Starts a container; the caller holds its lock.
    async fn start_locked(&self, mut c: ContainerRecord) -> Result<()> {
        self.ensure_layers(&c).await?;
        // A container with its own public address competes with nobody.
        if !c.spec.ports.is_empty() && c.spec.public.is_none() {
            let others = self.store.containers_on_node(&c.node).await?;
            for p in &c.spec.ports {
                let clash = others.iter().find(|o| {
                    o.id != c.id
                        && o.spec.public.is_none()
                        && o.state.status.is_running()
                        && o.spec
                            .ports
                            .iter()
                            .any(|q| q.proto == p.proto && q.host_port == p.host_port)
                });
                if clash.is_some() {
                    return Err(Error::Conflict(format!(
                        "Bind for 0.0.0.0:{} failed: port is already allocated",
                        p.host_port
                    )));
                }
            }
        }
        c.generation += 1;
        c.spec.generation = c.generation;
        self.store.update_container(&c).await?;
        let agent = self.agent(&c.node)?;
        // The server programs a network's overlay map when its segment is made.
        self.push_maps_to_node(&c.node, &endpoint_keys(&c)).await;
        agent_client::faults::crash_point("head:start:before-agent");
        match agent.start(&c.spec).await {
            Ok(st) => {
                agent_client::faults::crash_point("head:start:after-agent");
                c.state.status = Status::Running;
                c.state.pid = st.pid;
                c.state.started_at =
                    crate::cluster::parse_time(st.started_at.as_deref()).or(Some(Utc::now()));
                c.state.exit_code = 0;
                c.state.error.clear();
                c.state.oom_killed = false;
                c.state.stopped_by_user = false;
                c.state.health = st.health.clone();
                self.store.update_container(&c).await?;
                self.notify(&c, false);
                self.emit_container(&c, "start", &[]);
                Ok(())
            }
            Err(e) => {
                let err = upstream(e);
                if let Error::InvalidArgument(m) = &err {
                    c.state.error = m.clone();
                    c.state.exit_code = if m.contains("permission denied") {
                        126
                    } else {
                        127
                    };
                    if c.state.status == Status::Restarting {
                        c.state.status = Status::Exited;
                    }
                    self.store.update_container(&c).await?;
                    self.notify(&c, false);
                }
                Err(err)
            }
        }
    }

    pub async fn stop_container(
        self: &Arc<Self>,
        account: &str,
        key: &str,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<()> {
        let c = self.find_container(account, key).await?;
        let _g = self.lock(&c.id).await;
        let Some(mut c) = self.store.get_container(account, &c.id).await? else {
            return Err(Error::no_such_container(key));
        };
        if c.state.status == Status::Restarting {
            // Between restarts: cancel the pending restart.
            c.state.status = Status::Exited;
            c.state.stopped_by_user = true;
            self.store.update_container(&c).await?;
            self.notify(&c, false);
            return Ok(());
        }
        if !c.state.status.is_running() {
            return Err(Error::NotModified("container already stopped".into()));
        }
        let signal = match signal.filter(|s| !s.is_empty()) {
            Some(s) => {
                parse_signal(s)?;
                s.to_string()
            }
            None => c.spec.stop_signal.clone(),
        };
        let timeout = timeout
            .or_else(|| c.config["StopTimeout"].as_i64())
            .unwrap_or(10);
        c.state.stopped_by_user = true;
        self.store.update_container(&c).await?;
        self.emit_container(
            &c,
            "kill",
            &[("signal", parse_signal(&signal)?.to_string())],
        );
        let st = self
            .agent(&c.node)?
            .stop(&c.id, &StopRequest { timeout, signal })
            .await
            .map_err(upstream)?;
        agent_client::faults::crash_point("head:stop:after-agent");
        let exited = self.record_status(&mut c, &st);
        if exited {
            self.store.update_container(&c).await?;
            self.notify(&c, false);
        }
        self.emit_container(&c, "stop", &[]);
        if exited {
            drop(_g);
            self.after_exit(c).await;
        }
        Ok(())
    }

    pub async fn kill_container(
        self: &Arc<Self>,
        account: &str,
        key: &str,
        signal: Option<&str>,
    ) -> Result<()> {
        let signal = signal.filter(|s| !s.is_empty()).unwrap_or("SIGKILL");
        let num = parse_signal(signal)?;
        let c = self.find_container(account, key).await?;
        let _g = self.lock(&c.id).await;
        let Some(mut c) = self.store.get_container(account, &c.id).await? else {
            return Err(Error::no_such_container(key));
        };
        if !c.state.status.is_running() || c.state.status == Status::Restarting {
            return Err(Error::Conflict(format!(
                "cannot kill container: {key}: container {} is not running",
                c.id
            )));
        }
        if c.state.status == Status::Paused && num != 9 {
            return Err(Error::Conflict(format!(
                "Container {} is paused. Unpause the container before stopping or killing",
                c.id
            )));
        }
        if num == 9 || num == 15 || num == 2 {
            c.state.stopped_by_user = true;
            self.store.update_container(&c).await?;
        }
        self.agent(&c.node)?
            .kill(&c.id, signal)
            .await
            .map_err(upstream)?;
        self.emit_container(&c, "kill", &[("signal", num.to_string())]);
        Ok(())
    }

    pub async fn restart_container(
        self: &Arc<Self>,
        account: &str,
        key: &str,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<()> {
        match self.stop_container(account, key, timeout, signal).await {
            Ok(()) | Err(Error::NotModified(_)) => {}
            Err(e) => return Err(e),
        }
        let c = self.find_container(account, key).await?;
        let _g = self.lock(&c.id).await;
        let Some(mut c) = self.store.get_container(account, &c.id).await? else {
            return Err(Error::no_such_container(key));
        };
        if c.state.status.is_running() && c.state.status != Status::Restarting {
            return Ok(());
        }
        c.state.status = Status::Exited;
        let id = c.id.clone();
        self.start_locked(c).await?;
        if let Some(c) = self.store.get_container(account, &id).await? {
            self.emit_container(&c, "restart", &[]);
        }
        Ok(())
    }

    pub async fn remove_container(
        self: &Arc<Self>,
        account: &str,
        key: &str,
        force: bool,
    ) -> Result<()> {
        let c = self.find_container(account, key).await?;
        let _g = self.lock(&c.id).await;
        let Some(mut c) = self.store.get_container(account, &c.id).await? else {
            return Err(Error::no_such_container(key));
        };
        if c.state.status.is_running() && c.state.status != Status::Restarting && !force {
            return Err(Error::Conflict(format!(
                "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                c.name
            )));
        }
        // `Removing` seen under the container's lock is a removal that a crash
        // interrupted (a live one would hold the lock): carry it out.
        let was_running = c.state.status.is_running();
        c.state.status = Status::Removing;
        c.state.stopped_by_user = true;
        self.store.update_container(&c).await?;
        self.notify(&c, false);
        agent_client::faults::crash_point("head:rm:before-agent");
        if let Err(e) = self.agent(&c.node)?.remove(&c.id).await {
            // Leave it visible as dead rather than half-removed; `rm -f` again retries.
            c.state.status = Status::Dead;
            self.store.update_container(&c).await?;
            return Err(upstream(e));
        }
        if was_running {
            c.state.exit_code = 137;
            self.emit_container(&c, "kill", &[("signal", "9".into())]);
            self.emit_container(&c, "die", &[("exitCode", "137".into())]);
        }
        agent_client::faults::crash_point("head:rm:after-agent");
        self.store.delete_container(account, &c.id).await?;
        self.notify(&c, true);
        self.emit_container(&c, "destroy", &[]);
        drop(_g);
        self.forget_lock(&c.id);
        self.forget_execs(&c.id);
        Ok(())
    }

    /// `DELETE /containers/{parent}/{alias}?link=1`: the legacy link goes
    /// from the container's config and from the hosts it gets at its next
    /// start (the environment it was created with stays).
    pub async fn remove_link(&self, account: &str, parent: &str, alias: &str) -> Result<()> {
        let missing = || Error::NotFound(format!("No such container: {parent}/{alias}"));
        let c = self
            .find_container(account, parent)
            .await
            .map_err(|_| missing())?;
        let _g = self.lock(&c.id).await;
        let Some(mut c) = self.store.get_container(account, &c.id).await? else {
            return Err(missing());
        };
        // `target[:alias]`, names with or without Docker's leading `/`.
        let alias_of = |l: &str| -> String {
            let (target, a) = l.split_once(':').unwrap_or((l, l));
            let a = if a.is_empty() { target } else { a };
            a.rsplit('/').next().unwrap_or(a).to_string()
        };
        let links: Vec<String> = c.config["HostConfig"]["Links"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_string))
            .collect();
        let Some(link) = links.iter().find(|l| alias_of(l) == alias) else {
            return Err(missing());
        };
        let target = link
            .split(':')
            .next()
            .unwrap_or(link)
            .trim_start_matches('/');
        let kept: Vec<&String> = links.iter().filter(|l| *l != link).collect();
        c.config["HostConfig"]["Links"] = if kept.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!(kept)
        };
        c.spec.extra_hosts.retain(|h| {
            let name = h.split(':').next().unwrap_or("");
            name != alias
                && (name != target || links.iter().any(|l| l != link && alias_of(l) == target))
        });
        self.store.update_container(&c).await?;
        Ok(())
    }

    pub async fn rename_container(&self, account: &str, key: &str, new_name: &str) -> Result<()> {
        if new_name.is_empty() {
            return Err(Error::InvalidArgument(
                "Neither old nor new names may be empty".into(),
            ));
        }
        let new_name = names::validate_container_name(new_name)?;
        let c = self.find_container(account, key).await?;
        let _g = self.lock(&c.id).await;
        let Some(mut c) = self.store.get_container(account, &c.id).await? else {
            return Err(Error::no_such_container(key));
        };
        if c.name == new_name {
            return Err(Error::InvalidArgument(
                "Renaming a container with the same name as its current name".to_string(),
            ));
        }
        let old_name = std::mem::replace(&mut c.name, new_name.clone());
        match self.store.update_container(&c).await {
            Ok(()) => {
                self.notify(&c, false);
                self.emit_container(&c, "rename", &[("oldName", format!("/{old_name}"))]);
                // The networks' resolvers answer to the new name.
                self.push_network_maps(&endpoint_keys(&c)).await;
                Ok(())
            }
            Err(StoreError::Conflict(_)) => {
                let other = self.find_container(account, &new_name).await.ok();
                Err(Error::Conflict(format!(
                    "Conflict. The container name \"/{new_name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    other.map(|o| o.id).unwrap_or_default()
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves the container now (so a bad name fails before any response is
    /// sent) and returns a future that completes with the exit code.
    pub async fn wait_container(
        self: &Arc<Self>,
        account: &str,
        key: &str,
        condition: WaitCondition,
    ) -> Result<impl Future<Output = Result<i32>> + Send + 'static> {
        let mut rx = self.subscribe();
        let c = self.find_container(account, key).await?;
        let me = self.clone();
        let account = account.to_string();
        Ok(async move {
            let id = c.id.clone();
            if condition == WaitCondition::NotRunning && !c.state.status.is_running() {
                return Ok(c.state.exit_code);
            }
            loop {
                let change = match rx.recv().await {
                    Ok(ch) => ch,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed changes: look at the record itself.
                        match me.store.get_container(&account, &id).await? {
                            None => {
                                return Ok(0);
                            }
                            Some(c)
                                if condition == WaitCondition::NotRunning
                                    && !c.state.status.is_running() =>
                            {
                                return Ok(c.state.exit_code);
                            }
                            _ => continue,
                        }
                    }
                    Err(_) => return Err(Error::Internal("shutting down".into())),
                };
                if change.id != id {
                    continue;
                }
                match condition {
                    WaitCondition::Removed if change.removed => return Ok(change.exit_code),
                    WaitCondition::Removed => {}
                    _ if change.removed => return Ok(change.exit_code),
                    _ if change.status == Status::Exited || change.status == Status::Dead => {
                        return Ok(change.exit_code);
                    }
                    _ => {}
                }
            }
        })
    }

    /// Exit handling: auto-remove, or restart by policy with Docker's backoff.
    pub(crate) async fn after_exit(self: &Arc<Self>, c: ContainerRecord) {
        let body: ContainerCreateBody =
            serde_json::from_value(c.config.clone()).unwrap_or_default();
        if body
            .host_config
            .as_ref()
            .and_then(|h| h.auto_remove)
            .unwrap_or(false)
        {
            match self.remove_container(&c.account, &c.id, true).await {
                // Docker removes the anonymous volumes of --rm containers.
                Ok(()) => self.remove_anonymous_volumes(&c).await,
                Err(e) => tracing::warn!("auto-removing {}: {e}", c.id),
            }
            return;
        }
        let policy = RestartPolicy::of(&body).unwrap_or(RestartPolicy::No);
        if !policy.should_restart(
            c.state.exit_code,
            c.state.stopped_by_user,
            c.state.restart_count,
        ) {
            return;
        }
        let ran_long = match (c.state.started_at, c.state.finished_at) {
            (Some(s), Some(f)) => (f - s).num_seconds() >= 10,
            _ => false,
        };
        let delay = if ran_long {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(100u64 << c.state.restart_count.min(10))
                .min(Duration::from_secs(60))
        };
        {
            let _g = self.lock(&c.id).await;
            let Ok(Some(mut cur)) = self.store.get_container(&c.account, &c.id).await else {
                return;
            };
            if cur.state.status != Status::Exited || cur.generation != c.generation {
                return;
            }
            cur.state.status = Status::Restarting;
            cur.state.restart_count += 1;
            if self.store.update_container(&cur).await.is_err() {
                return;
            }
            self.notify(&cur, false);
        }
        self.schedule_restart(c.account.clone(), c.id.clone(), delay);
    }

    /// Starts a container in `restarting` state after `delay`, unless someone
    /// stopped or removed it meanwhile.
    pub(crate) fn schedule_restart(self: &Arc<Self>, account: String, id: String, delay: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _g = me.lock(&id).await;
            let Ok(Some(cur)) = me.store.get_container(&account, &id).await else {
                return;
            };
            if cur.state.status != Status::Restarting {
                return;
            }
            if let Err(e) = me.start_locked(cur).await {
                tracing::warn!("restarting {id}: {e}");
            }
        });
    }

    /// `docker pause` / `docker unpause`: freezes or thaws every process.
    pub async fn set_paused(&self, account: &str, key: &str, pause: bool) -> Result<()> {
        let c = self.find_container(account, key).await?;
        let _g = self.lock(&c.id).await;
        let Some(mut c) = self.store.get_container(account, &c.id).await? else {
            return Err(Error::no_such_container(key));
        };
        match (c.state.status, pause) {
            (Status::Running, true) | (Status::Paused, false) => {}
            (Status::Paused, true) => {
                return Err(Error::Conflict(format!(
                    "Container {} is already paused",
                    c.id
                )));
            }
            (Status::Running, false) => {
                return Err(Error::Conflict(format!("Container {} is not paused", c.id)));
            }
            _ => {
                return Err(Error::Conflict(format!(
                    "Container {} is not running",
                    c.id
                )));
            }
        }
        self.agent(&c.node)?
            .set_paused(&c.id, pause)
            .await
            .map_err(upstream)?;
        c.state.status = if pause {
            Status::Paused
        } else {
            Status::Running
        };
        self.store.update_container(&c).await?;
        self.notify(&c, false);
        self.emit_container(&c, if pause { "pause" } else { "unpause" }, &[]);
        Ok(())
    }

    /// Sets the terminal size of a running tty container (`docker run -t`).
    pub async fn resize_container(
        &self,
        account: &str,
        key: &str,
        rows: u16,
        cols: u16,
    ) -> Result<()> {
        let c = self.find_container(account, key).await?;
        if !c.state.status.is_running() || c.state.status == Status::Restarting {
            return Err(Error::Conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
        if !c.spec.process.tty {
            return Err(Error::Conflict(format!(
                "Container {} has no terminal: it was not created with -t",
                c.id
            )));
        }
        self.agent(&c.node)?
            .resize(&c.id, rows, cols)
            .await
            .map_err(upstream)?;
        self.emit_container(
            &c,
            "resize",
            &[("height", rows.to_string()), ("width", cols.to_string())],
        );
        Ok(())
    }

    pub async fn container_logs(
        &self,
        account: &str,
        key: &str,
        query: &str,
    ) -> Result<(bool, hyper::body::Incoming)> {
        let c = self.find_container(account, key).await?;
        let body = self
            .agent(&c.node)?
            .logs(&c.id, query)
            .await
            .map_err(upstream)?;
        Ok((c.spec.process.tty, body))
    }

    /// `docker top` (`ps_args` URL-encoded, passed through).
    pub async fn top_container(
        &self,
        account: &str,
        key: &str,
        ps_args_encoded: &str,
    ) -> Result<serde_json::Value> {
        let c = self.find_container(account, key).await?;
        if !matches!(c.state.status, Status::Running | Status::Paused) {
            return Err(Error::Conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
        self.agent(&c.node)?
            .top(&c.id, ps_args_encoded)
            .await
            .map_err(upstream)
    }

    /// The container and, while it runs, its stats samples (JSON lines) from
    /// its server; None for a container that is not running.
    pub async fn container_stats(
        &self,
        account: &str,
        key: &str,
        stream: bool,
        one_shot: bool,
    ) -> Result<(ContainerRecord, Option<hyper::body::Incoming>)> {
        let c = self.find_container(account, key).await?;
        if !matches!(c.state.status, Status::Running | Status::Paused) {
            return Ok((c, None));
        }
        let body = self
            .agent(&c.node)?
            .stats(&c.id, stream, one_shot)
            .await
            .map_err(upstream)?;
        Ok((c, Some(body)))
    }

    /// Opens the container's attach stream on its server. Returns (tty, stream).
    pub async fn attach_container(
        &self,
        account: &str,
        key: &str,
        query: &str,
    ) -> Result<(bool, hyper::upgrade::Upgraded)> {
        let c = self.find_container(account, key).await?;
        if c.state.status == Status::Removing || c.state.status == Status::Dead {
            return Err(Error::Conflict(
                "You cannot attach to a container that is being removed".into(),
            ));
        }
        let up = self
            .agent(&c.node)?
            .attach(&c.id, query)
            .await
            .map_err(upstream)?;
        self.emit_container(&c, "attach", &[]);
        Ok((c.spec.process.tty, up))
    }

    /// Removes stopped containers matching `keep`; returns their ids.
    pub async fn prune_containers(
        self: &Arc<Self>,
        account: &str,
        keep: impl Fn(&ContainerRecord) -> bool,
    ) -> Result<(Vec<String>, u64)> {
        let mut removed = Vec::new();
        let mut reclaimed = 0;
        for c in self.store.list_containers(account).await? {
            if c.state.status.is_running() || c.state.status == Status::Removing || keep(&c) {
                continue;
            }
            // Measured before it goes, as Docker does (a server that cannot
            // say counts nothing).
            let size =
                tokio::time::timeout(Self::SIZE_TIMEOUT, self.container_size(account, &c.id))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .map_or(0, |(rw, _)| rw);
            match self.remove_container(account, &c.id, false).await {
                Ok(()) => {
                    removed.push(c.id);
                    reclaimed += size;
                }
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((removed, reclaimed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_conditions() {
        assert_eq!(WaitCondition::parse("").unwrap(), WaitCondition::NotRunning);
        assert_eq!(
            WaitCondition::parse("removed").unwrap(),
            WaitCondition::Removed
        );
        assert!(WaitCondition::parse("soon").is_err());
    }
}
