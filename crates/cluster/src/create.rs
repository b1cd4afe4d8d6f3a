//! Turning a Docker create request plus the image config into what the agent runs.
//! Pure logic: validated here, unit-tested without any server.

use std::collections::{BTreeMap, BTreeSet};

use agent_client::{ContainerSpec, HealthConfig, PortMapping, ProcessSpec, Resources};
use bollard_stubs::models::{ContainerCreateBody, RestartPolicyNameEnum};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::networks::EndpointRequest;

/// Docker's minimum memory limit.
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;

/// The parts of an image config (`config` object) that create needs.
#[derive(Debug, Default, Clone)]
pub struct ImageDefaults {
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub exposed_ports: BTreeSet<String>,
    pub stop_signal: String,
    /// `VOLUME` paths.
    pub volumes: Vec<String>,
    /// The image's `Healthcheck` object, as in its config.
    pub healthcheck: Option<Value>,
}

impl ImageDefaults {
    /// Reads the `config` object of an image config JSON.
    pub fn from_config(image_config: &Value) -> ImageDefaults {
        let c = &image_config["config"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        ImageDefaults {
            env: strings(&c["Env"]),
            cmd: strings(&c["Cmd"]),
            entrypoint: strings(&c["Entrypoint"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
            user: c["User"].as_str().unwrap_or_default().to_string(),
            labels: c["Labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            exposed_ports: c["ExposedPorts"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            stop_signal: c["StopSignal"].as_str().unwrap_or_default().to_string(),
            healthcheck: c.get("Healthcheck").filter(|h| h.is_object()).cloned(),
            volumes: c["Volumes"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

/// Docker's healthcheck defaults.
const HEALTH_INTERVAL_NS: i64 = 30_000_000_000;
const HEALTH_TIMEOUT_NS: i64 = 30_000_000_000;
const HEALTH_START_INTERVAL_NS: i64 = 5_000_000_000;
const HEALTH_RETRIES: i64 = 3;
/// Docker refuses durations between 0 and this.
const HEALTH_MIN_NS: i64 = 1_000_000;

/// The container's healthcheck: the create options over the image's, Docker's
/// defaults for what neither sets; None without a test or with `NONE`.
pub fn health_config(
    image: Option<&Value>,
    body: Option<&bollard_stubs::models::HealthConfig>,
) -> Result<Option<HealthConfig>> {
    let img = |k: &str| image.and_then(|h| h[k].as_i64()).unwrap_or(0);
    let img_test: Vec<String> = image
        .and_then(|h| h["Test"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let test = body
        .and_then(|b| b.test.clone())
        .filter(|t| !t.is_empty())
        .unwrap_or(img_test);
    let pick = |v: Option<i64>, key: &str| v.filter(|n| *n != 0).unwrap_or_else(|| img(key));
    let interval = pick(body.and_then(|b| b.interval), "Interval");
    let timeout = pick(body.and_then(|b| b.timeout), "Timeout");
    let start_period = pick(body.and_then(|b| b.start_period), "StartPeriod");
    let start_interval = pick(body.and_then(|b| b.start_interval), "StartInterval");
    let retries = pick(body.and_then(|b| b.retries), "Retries");
    for (name, v) in [
        ("Interval", interval),
        ("Timeout", timeout),
        ("StartPeriod", start_period),
        ("StartInterval", start_interval),
    ] {
        if v != 0 && v < HEALTH_MIN_NS {
            return Err(Error::InvalidArgument(format!(
                "{name} in Healthcheck cannot be less than 1ms"
            )));
        }
    }
    if retries < 0 {
        return Err(Error::InvalidArgument(
            "Retries in Healthcheck cannot be negative".into(),
        ));
    }
    let args = match test.split_first() {
        None => return Ok(None),
        Some((kind, rest)) => match kind.as_str() {
            "NONE" => return Ok(None),
            "CMD" if !rest.is_empty() => rest.to_vec(),
            "CMD-SHELL" if rest.len() == 1 => {
                vec!["/bin/sh".into(), "-c".into(), rest[0].clone()]
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "invalid healthcheck test: {test:?}"
                )));
            }
        },
    };
    let or = |v: i64, d: i64| if v == 0 { d } else { v };
    Ok(Some(HealthConfig {
        args,
        interval_ns: or(interval, HEALTH_INTERVAL_NS),
        timeout_ns: or(timeout, HEALTH_TIMEOUT_NS),
        start_period_ns: start_period,
        start_interval_ns: or(start_interval, HEALTH_START_INTERVAL_NS),
        retries: or(retries, HEALTH_RETRIES),
    }))
}

/// Merges `KEY=value` lists; later entries replace earlier ones with the same key.
pub fn merge_env(base: &[String], over: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in base.iter().chain(over) {
        let key = e.split('=').next().unwrap_or(e);
        if let Some(pos) = out
            .iter()
            .position(|x| x.split('=').next().unwrap_or(x) == key)
        {
            out[pos] = e.clone();
        } else {
            out.push(e.clone());
        }
    }
    out
}

/// The restart policy of a container, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    Always,
    UnlessStopped,
    OnFailure(u32),
}

impl RestartPolicy {
    pub fn of(body: &ContainerCreateBody) -> Result<RestartPolicy> {
        let Some(rp) = body
            .host_config
            .as_ref()
            .and_then(|h| h.restart_policy.as_ref())
        else {
            return Ok(RestartPolicy::No);
        };
        let max = rp.maximum_retry_count.unwrap_or(0);
        let p = match rp.name {
            None | Some(RestartPolicyNameEnum::EMPTY) | Some(RestartPolicyNameEnum::NO) => {
                RestartPolicy::No
            }
            Some(RestartPolicyNameEnum::ALWAYS) => RestartPolicy::Always,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED) => RestartPolicy::UnlessStopped,
            Some(RestartPolicyNameEnum::ON_FAILURE) => {
                if max < 0 {
                    return Err(Error::InvalidArgument(
                        "invalid restart policy: maximum retry count cannot be negative".into(),
                    ));
                }
                RestartPolicy::OnFailure(max as u32)
            }
        };
        if max != 0 && !matches!(p, RestartPolicy::OnFailure(_)) {
            return Err(Error::InvalidArgument(
                "invalid restart policy: maximum retry count can only be used with 'on-failure'"
                    .to_string(),
            ));
        }
        Ok(p)
    }

    /// Whether a container that exited with `code` should be started again.
    pub fn should_restart(&self, code: i32, stopped_by_user: bool, restarts: u32) -> bool {
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always => !stopped_by_user,
            RestartPolicy::UnlessStopped => !stopped_by_user,
            RestartPolicy::OnFailure(max) => {
                !stopped_by_user && code != 0 && (*max == 0 || restarts < *max)
            }
        }
    }
}

/// Parses Docker's byte sizes (`64m`, `1g`, `100k`, `512`).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: f64 = num.parse().ok()?;
    if n < 0.0 {
        return None;
    }
    Some((n * mult as f64) as u64)
}

/// Everything create decided, ready to store.
#[derive(Debug)]
pub struct Planned {
    pub spec: ContainerSpec,
    /// Resolved entrypoint and cmd (for inspect's Config).
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// The working directory asked for or the image's (empty: neither set
    /// one; the process starts in `/`).
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    pub auto_remove: bool,
    /// Ports to publish; host port 0 means "pick one".
    pub ports: Vec<PortMapping>,
    /// The networks to join, in order; empty: `--network none`.
    pub networks: Vec<crate::networks::EndpointRequest>,
    /// Volumes and binds to resolve (names → volume records) before the run.
    pub mounts: Vec<MountRequest>,
    /// `--volumes-from`: (container, read-only override).
    pub volumes_from: Vec<(String, Option<bool>)>,
    /// `--link`: (container, alias).
    pub links: Vec<(String, String)>,
    /// A server the container must run on (a build's later steps go where
    /// its first ran: their layers are there).
    pub server: Option<String>,
}

/// Where a requested mount's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    Named(String),
    /// A new volume for this container (`-v /path`, image `VOLUME`).
    Anonymous,
    /// A host path (operator only); `create`: made as a directory when
    /// missing (Docker's `-v`; `--mount` refuses a missing one instead).
    Host {
        path: String,
        create: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRequest {
    pub source: MountSource,
    pub destination: String,
    pub read_only: bool,
}

/// Docker's rule for local volume names.
pub fn validate_volume_name(name: &str) -> Result<()> {
    let mut b = name.bytes();
    let ok = name.len() >= 2
        && b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
        )))
    }
}

/// Binds (`-v`), `--mount`s, `Config.Volumes` and the image's `VOLUME`s, in
/// that order of precedence; tmpfs mounts go to `tmpfs`.
fn mount_requests(
    body: &ContainerCreateBody,
    hc: &bollard_stubs::models::HostConfig,
    image_volumes: &[String],
    tmpfs: &mut BTreeMap<String, String>,
) -> Result<Vec<MountRequest>> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    let mut out: Vec<MountRequest> = Vec::new();
    let push = |out: &mut Vec<MountRequest>, m: MountRequest| -> Result<()> {
        if !m.destination.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "invalid mount config: mount path must be absolute: {}",
                m.destination
            )));
        }
        if m.destination == "/" {
            return Err(Error::InvalidArgument(
                "invalid specification: destination can't be '/'".into(),
            ));
        }
        let dest = m.destination.trim_end_matches('/').to_string();
        if out.iter().any(|o| o.destination == dest) {
            return Err(Error::InvalidArgument(format!(
                "Duplicate mount point: {dest}"
            )));
        }
        out.push(MountRequest {
            destination: dest,
            ..m
        });
        Ok(())
    };
    for b in hc.binds.clone().unwrap_or_default() {
        let parts: Vec<&str> = b.split(':').collect();
        let (src, dst, opts) = match parts.as_slice() {
            [s, d] => (*s, *d, ""),
            [s, d, o] => (*s, *d, *o),
            _ => return bad(format!("invalid volume specification: '{b}'")),
        };
        let mut read_only = false;
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o {
                "ro" => read_only = true,
                "rw" | "z" | "Z" | "nocopy" | "private" | "rprivate" | "shared" | "rshared"
                | "slave" | "rslave" | "consistent" | "cached" | "delegated" => {}
                _ => return bad(format!("invalid mode: {o}")),
            }
        }
        let source = if src.starts_with('/') {
            MountSource::Host {
                path: src.to_string(),
                create: true,
            }
        } else {
            validate_volume_name(src)?;
            MountSource::Named(src.to_string())
        };
        push(
            &mut out,
            MountRequest {
                source,
                destination: dst.to_string(),
                read_only,
            },
        )?;
    }
    for m in hc.mounts.clone().unwrap_or_default() {
        use bollard_stubs::models::MountType;
        let target = m.target.clone().unwrap_or_default();
        if target.is_empty() {
            return bad("invalid mount config: Target must not be empty".into());
        }
        let src = m.source.clone().unwrap_or_default();
        let read_only = m.read_only.unwrap_or(false);
        match m.typ {
            Some(MountType::VOLUME) => {
                let source = if src.is_empty() {
                    MountSource::Anonymous
                } else {
                    validate_volume_name(&src)?;
                    MountSource::Named(src)
                };
                push(
                    &mut out,
                    MountRequest {
                        source,
                        destination: target,
                        read_only,
                    },
                )?;
            }
            Some(MountType::BIND) => {
                if !src.starts_with('/') {
                    return bad(format!(
                        "invalid mount config for type \"bind\": invalid mount path: '{src}' mount path must be absolute"
                    ));
                }
                if !std::path::Path::new(&src).exists() {
                    return bad(format!(
                        "invalid mount config for type \"bind\": bind source path does not exist: {src}"
                    ));
                }
                push(
                    &mut out,
                    MountRequest {
                        source: MountSource::Host {
                            path: src,
                            create: false,
                        },
                        destination: target,
                        read_only,
                    },
                )?;
            }
            Some(MountType::TMPFS) => {
                let mut opts = Vec::new();
                if let Some(t) = &m.tmpfs_options {
                    if let Some(sz) = t.size_bytes.filter(|s| *s > 0) {
                        opts.push(format!("size={sz}"));
                    }
                    if let Some(mode) = t.mode.filter(|m| *m > 0) {
                        opts.push(format!("mode={mode:o}"));
                    }
                }
                if read_only {
                    opts.push("ro".into());
                }
                tmpfs.insert(target, opts.join(","));
            }
            _ => return bad("mount type not supported".into()),
        }
    }
    let anonymous = body
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .chain(image_volumes.iter().cloned());
    for dest in anonymous {
        let d = dest.trim_end_matches('/');
        if out.iter().any(|o| o.destination == d) || tmpfs.contains_key(d) {
            continue;
        }
        push(
            &mut out,
            MountRequest {
                source: MountSource::Anonymous,
                destination: dest,
                read_only: false,
            },
        )?;
    }
    Ok(out)
}

/// Validates the request and resolves it against the image.
pub fn plan(id: &str, body: &ContainerCreateBody, image: &ImageDefaults) -> Result<Planned> {
    let hc = body.host_config.clone().unwrap_or_default();
    let bad = |m: String| Err(Error::InvalidArgument(m));

    // Privileges, host namespaces and devices: `security::check`, which knows
    // the account, runs before this.
    let networks = network_requests(body)?;
    let host_network = hc.network_mode.as_deref() == Some("host");
    let network_none = networks.is_empty() && !host_network;

    let restart = RestartPolicy::of(body)?;
    let auto_remove = hc.auto_remove.unwrap_or(false);
    if auto_remove && restart != RestartPolicy::No {
        return bad("can't create 'AutoRemove' container with restart policy".into());
    }

    // Command: an explicit entrypoint drops the image's cmd, as Docker does.
    let user_entrypoint = body.entrypoint.clone();
    let entrypoint = match &user_entrypoint {
        Some(e) => e.clone(),
        None => image.entrypoint.clone(),
    };
    let cmd = match (&body.cmd, &user_entrypoint) {
        (Some(c), _) if !c.is_empty() => c.clone(),
        (_, Some(_)) => Vec::new(),
        _ => image.cmd.clone(),
    };
    let args: Vec<String> = entrypoint.iter().chain(&cmd).cloned().collect();
    if args.is_empty() || args[0].is_empty() {
        return bad("no command specified".into());
    }

    let env = merge_env(&image.env, body.env.as_deref().unwrap_or_default());
    for e in &env {
        if e.is_empty() || e.starts_with('=') {
            return bad(format!("invalid environment variable: {e}"));
        }
    }
    let cwd = body
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| image.working_dir.clone());
    if !cwd.is_empty() && !cwd.starts_with('/') {
        return bad(format!(
            "the working directory '{cwd}' is invalid, it needs to be an absolute path"
        ));
    }
    let user = body
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| image.user.clone());

    let memory = hc.memory.unwrap_or(0);
    if memory != 0 && memory < MIN_MEMORY {
        return bad("Minimum memory limit allowed is 6MB".into());
    }
    let memory_swap = hc.memory_swap.unwrap_or(0);
    if memory_swap > 0 && memory > 0 && memory_swap < memory {
        return bad(
            "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
        );
    }
    let nano_cpus = hc.nano_cpus.unwrap_or(0);
    if nano_cpus < 0 {
        return bad("invalid CPU value".into());
    }
    if nano_cpus > 0 && (hc.cpu_quota.unwrap_or(0) > 0 || hc.cpu_period.unwrap_or(0) > 0) {
        return bad("Conflicting options: Nano CPUs and CPU Period cannot both be set".into());
    }

    let mut tmpfs = BTreeMap::new();
    for (path, opts) in hc.tmpfs.clone().unwrap_or_default() {
        if !path.starts_with('/') || path == "/" {
            return bad(format!("invalid mount path for tmpfs: {path}"));
        }
        tmpfs.insert(path, opts);
    }
    let mounts = mount_requests(body, &hc, &image.volumes, &mut tmpfs)?;
    let mut volumes_from = Vec::new();
    for v in hc.volumes_from.clone().unwrap_or_default() {
        let (name, mode) = match v.split_once(':') {
            Some((n, "ro")) => (n, Some(true)),
            Some((n, "rw")) => (n, Some(false)),
            Some((_, m)) => return bad(format!("invalid mode for volumes-from: {m}")),
            None => (v.as_str(), None),
        };
        volumes_from.push((name.to_string(), mode));
    }
    let mut links = Vec::new();
    for l in hc.links.clone().unwrap_or_default() {
        // `name:alias` or `name`; the API also carries `/name:/self/alias`.
        let (name, alias) = l.split_once(':').unwrap_or((&l, &l));
        let name = name.trim_start_matches('/');
        let alias = alias.rsplit('/').next().unwrap_or(alias);
        if name.is_empty() || alias.is_empty() {
            return bad(format!("invalid link: {l}"));
        }
        links.push((name.to_string(), alias.to_string()));
    }

    let mut labels = image.labels.clone();
    for (k, v) in body.labels.clone().unwrap_or_default() {
        labels.insert(k, v);
    }

    // Published ports: explicit bindings plus, with -P, every exposed port.
    let mut exposed: BTreeSet<String> = image.exposed_ports.clone();
    exposed.extend(body.exposed_ports.clone().unwrap_or_default());
    let mut ports = Vec::new();
    let bindings = hc.port_bindings.clone().unwrap_or_default();
    let mut keys: Vec<&String> = bindings.keys().collect();
    keys.sort();
    for key in keys {
        let (port, proto) = parse_port_key(key)?;
        for b in bindings[key].clone().unwrap_or_default() {
            let host_port = match b.host_port.as_deref().unwrap_or("") {
                "" => 0,
                p => p
                    .split('-')
                    .next()
                    .unwrap_or(p)
                    .parse::<u16>()
                    .map_err(|_| {
                        Error::InvalidArgument(format!("invalid port specification: \"{p}\""))
                    })?,
            };
            let host_ip = b.host_ip.clone().unwrap_or_default();
            match host_ip.parse::<std::net::IpAddr>() {
                Err(_) if !host_ip.is_empty() => {
                    return bad(format!("invalid IP address: {host_ip}"));
                }
                // The server's own loopback clients are never redirected to
                // a container: a port there would shadow the server's own.
                Ok(ip) if ip.is_loopback() => {
                    return bad(format!(
                        "cannot publish port {port} on {host_ip}: a server's loopback is its own; publish on its address"
                    ));
                }
                _ => {}
            }
            ports.push(PortMapping {
                proto: proto.clone(),
                container_port: port,
                host_ip,
                host_port,
            });
        }
        exposed.insert(key.clone());
    }
    if hc.publish_all_ports.unwrap_or(false) {
        for key in &exposed {
            let (port, proto) = parse_port_key(key)?;
            if !ports
                .iter()
                .any(|p| p.container_port == port && p.proto == proto)
            {
                ports.push(PortMapping {
                    proto,
                    container_port: port,
                    host_ip: String::new(),
                    host_port: 0,
                });
            }
        }
    }
    if network_none && !ports.is_empty() {
        return bad(
            "conflicting options: port publishing and the container type network mode".into(),
        );
    }
    if host_network {
        // Docker discards them too: the container's ports are the server's.
        ports.clear();
    }

    let (log_max_size, log_max_files) = log_options(&hc)?;

    let hostname = body
        .hostname
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| id[..12].to_string());
    if hostname.len() > 63
        || !hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return bad(format!("invalid hostname format: {hostname}"));
    }

    let stop_signal = body
        .stop_signal
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            if image.stop_signal.is_empty() {
                "SIGTERM".into()
            } else {
                image.stop_signal.clone()
            }
        });
    parse_signal(&stop_signal)?;

    let spec = ContainerSpec {
        id: id.to_string(),
        generation: 0,
        layers: Vec::new(),
        process: ProcessSpec {
            args,
            env,
            cwd: if cwd.is_empty() {
                "/".into()
            } else {
                cwd.clone()
            },
            user,
            group_add: hc.group_add.clone().unwrap_or_default(),
            tty: body.tty.unwrap_or(false),
            open_stdin: body.open_stdin.unwrap_or(false),
        },
        // Set by the caller from `security::check`.
        capabilities: None,
        no_new_privileges: false,
        seccomp_unconfined: false,
        privileged: false,
        host_namespaces: Vec::new(),
        devices: Vec::new(),
        device_rules: Vec::new(),
        userns: None,
        hostname,
        domainname: body.domainname.clone().unwrap_or_default(),
        read_only: hc.readonly_rootfs.unwrap_or(false),
        tmpfs,
        init: hc.init.unwrap_or(false),
        resources: Resources {
            memory,
            memory_swap,
            nano_cpus,
            cpu_shares: hc.cpu_shares.unwrap_or(0),
            cpu_quota: hc.cpu_quota.unwrap_or(0),
            cpu_period: hc.cpu_period.unwrap_or(0),
            pids_limit: hc.pids_limit.unwrap_or(0).max(0),
            disk: 0, // the package's, set at placement
        },
        ulimits: ulimits(&hc)?,
        networks: Vec::new(),
        ports: Vec::new(),
        public: None,
        host_network,
        dns: hc.dns.clone().unwrap_or_default(),
        dns_search: hc.dns_search.clone().unwrap_or_default(),
        dns_options: hc.dns_options.clone().unwrap_or_default(),
        extra_hosts: hc.extra_hosts.clone().unwrap_or_default(),
        stop_signal,
        log_max_size,
        log_max_files,
        health: health_config(image.healthcheck.as_ref(), body.healthcheck.as_ref())?,
        // Resolved by the cluster (volume names → ids) before the first start.
        mounts: Vec::new(),
    };
    for h in &spec.extra_hosts {
        let ok = h.split_once(':').is_some_and(|(name, ip)| {
            !name.is_empty() && (ip == "host-gateway" || ip.parse::<std::net::IpAddr>().is_ok())
        });
        if !ok {
            return bad(format!("invalid IP address in add-host: \"{h}\""));
        }
    }
    Ok(Planned {
        spec,
        entrypoint,
        cmd,
        working_dir: cwd,
        labels,
        restart,
        auto_remove,
        ports,
        networks,
        mounts,
        volumes_from,
        links,
        server: None,
    })
}

/// The networks a create asks for: `HostConfig.NetworkMode` first (the
/// default network when empty), then the other `EndpointsConfig` entries by
/// name, each with its `--ip` and `--network-alias`es.
fn network_requests(body: &ContainerCreateBody) -> Result<Vec<EndpointRequest>> {
    let mode = body
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    // The CLI names the default network "default" in both places.
    let endpoints: std::collections::HashMap<String, _> = body
        .networking_config
        .as_ref()
        .and_then(|n| n.endpoints_config.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "default" => (crate::networks::DEFAULT_NETWORK.to_string(), v),
            _ => (k, v),
        })
        .collect();
    let mode = match mode.as_str() {
        "" | "default" => crate::networks::DEFAULT_NETWORK.to_string(),
        "none" => {
            if endpoints.keys().any(|k| k != "none") {
                return Err(Error::InvalidArgument(
                    "container cannot be connected to multiple networks with one of the networks in private (none) mode".into(),
                ));
            }
            return Ok(Vec::new());
        }
        // The server's own namespace (the operator's: `security::check`
        // refuses it to tenants).
        "host" => {
            if endpoints.keys().any(|k| k != "host") {
                return Err(Error::InvalidArgument(
                    "container cannot be disconnected from host network or connected to host network".into(),
                ));
            }
            return Ok(Vec::new());
        }
        m if m.starts_with("container:") => {
            return Err(Error::InvalidArgument(
                "sharing another container's network namespace (--network container:) is not supported".into(),
            ));
        }
        m => m.to_string(),
    };
    let mut names: Vec<String> = vec![mode.clone()];
    let mut rest: Vec<&String> = endpoints.keys().filter(|k| **k != mode).collect();
    rest.sort();
    names.extend(rest.into_iter().cloned());
    let mut out = Vec::new();
    for name in names {
        let mut req = EndpointRequest {
            network: name.clone(),
            ..Default::default()
        };
        if let Some(e) = endpoints.get(&name) {
            req = endpoint_request(&name, e)?;
        }
        out.push(req);
    }
    Ok(out)
}

/// One network's `EndpointSettings` (create's `EndpointsConfig`, or the body
/// of `network connect`) as a request.
pub fn endpoint_request(
    network: &str,
    e: &bollard_stubs::models::EndpointSettings,
) -> Result<EndpointRequest> {
    let ipam = e.ipam_config.clone().unwrap_or_default();
    if ipam.ipv6_address.as_deref().is_some_and(|a| !a.is_empty()) {
        return Err(Error::InvalidArgument(
            "IPv6 addresses are not supported".into(),
        ));
    }
    if e.mac_address.as_deref().is_some_and(|m| !m.is_empty()) {
        return Err(Error::InvalidArgument(
            "setting a container's MAC address is not supported (it follows its IP address)".into(),
        ));
    }
    let ip = match ipam.ipv4_address.as_deref().filter(|a| !a.is_empty()) {
        Some(a) => Some(
            a.parse::<std::net::Ipv4Addr>()
                .map_err(|_| Error::InvalidArgument(format!("invalid IPv4 address: {a}")))?,
        ),
        None => None,
    };
    let mut aliases = e.aliases.clone().unwrap_or_default();
    aliases.retain(|a| !a.is_empty());
    aliases.dedup();
    Ok(EndpointRequest {
        network: network.to_string(),
        ip,
        aliases,
    })
}

/// What a container with the `none` log driver keeps of its output.
const NONE_DRIVER_KEEPS: u64 = 64 << 10;

fn log_options(hc: &bollard_stubs::models::HostConfig) -> Result<(u64, u32)> {
    let Some(lc) = &hc.log_config else {
        return Ok((0, 1));
    };
    let cfg = lc.config.clone().unwrap_or_default();
    let driver = lc.typ.as_deref().unwrap_or("");
    match driver {
        "" | "json-file" | "local" => {}
        // Nothing reads it (`docker logs` answers 501): the least kept.
        "none" => {
            if let Some(k) = cfg.keys().next() {
                return Err(Error::InvalidArgument(format!(
                    "unknown log opt '{k}' for none log driver"
                )));
            }
            return Ok((NONE_DRIVER_KEEPS, 1));
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "logging driver {other} is not supported (json-file, local or none)"
            )));
        }
    }
    let driver = if driver == "local" {
        "local"
    } else {
        "json-file"
    };
    let mut size = 0;
    let mut files = 1;
    for (k, v) in cfg {
        match k.as_str() {
            "max-size" => {
                size = parse_size(&v).ok_or_else(|| {
                    Error::InvalidArgument(format!("invalid value for max-size: {v}"))
                })?
            }
            "max-file" => {
                files = v.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    Error::InvalidArgument(format!("invalid value for max-file: {v}"))
                })?
            }
            "compress" => {}
            "labels" | "env" | "tag" | "labels-regex" | "env-regex" if driver == "json-file" => {}
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown log opt '{other}' for {driver} log driver"
                )));
            }
        }
    }
    if driver == "local" {
        // The local driver's own defaults: 20 MB files, five of them.
        let given = |k: &str| lc.config.as_ref().is_some_and(|c| c.contains_key(k));
        if !given("max-size") {
            size = 20 << 20;
        }
        if !given("max-file") {
            files = 5;
        }
    }
    if files > 1 && size == 0 {
        return Err(Error::InvalidArgument(
            "max-file cannot be set without max-size".into(),
        ));
    }
    Ok((size, files))
}

/// `80/tcp` → (80, "tcp").
pub fn parse_port_key(key: &str) -> Result<(u16, String)> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if proto != "tcp" && proto != "udp" {
        return Err(Error::InvalidArgument(format!("invalid proto: {proto}")));
    }
    let port: u16 =
        port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
            Error::InvalidArgument(format!("invalid port specification: \"{key}\""))
        })?;
    Ok((port, proto))
}

/// Signal name or number → number (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(s: &str) -> Result<i32> {
    const SIGNALS: &[(&str, i32)] = &[
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("BUS", 7),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("STKFLT", 16),
        ("CHLD", 17),
        ("CONT", 18),
        ("STOP", 19),
        ("TSTP", 20),
        ("TTIN", 21),
        ("TTOU", 22),
        ("URG", 23),
        ("XCPU", 24),
        ("XFSZ", 25),
        ("VTALRM", 26),
        ("PROF", 27),
        ("WINCH", 28),
        ("IO", 29),
        ("PWR", 30),
        ("SYS", 31),
    ];
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    } else {
        let up = s.to_ascii_uppercase();
        let name = up.strip_prefix("SIG").unwrap_or(&up);
        if let Some((_, n)) = SIGNALS.iter().find(|(k, _)| *k == name) {
            return Ok(*n);
        }
    }
    Err(Error::InvalidArgument(format!("Invalid signal: {s}")))
}

/// Docker's `--ulimit` names.
pub const ULIMIT_NAMES: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// `HostConfig.Ulimits`, checked as Docker checks them.
fn ulimits(hc: &bollard_stubs::models::HostConfig) -> Result<Vec<agent_client::Ulimit>> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    let mut out: Vec<agent_client::Ulimit> = Vec::new();
    for u in hc.ulimits.clone().unwrap_or_default() {
        let name = u.name.unwrap_or_default();
        if !ULIMIT_NAMES.contains(&name.as_str()) {
            return bad(format!("invalid ulimit type: {name}"));
        }
        let (soft, hard) = (u.soft.unwrap_or(0), u.hard.unwrap_or(0));
        // -1 is unlimited: the largest of all.
        let order = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
        if order(soft) > order(hard) {
            return bad(format!(
                "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
            ));
        }
        out.retain(|o| o.name != name);
        out.push(agent_client::Ulimit { name, soft, hard });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_from_binds_mounts_config_and_image() {
        let body: ContainerCreateBody = serde_json::from_value(serde_json::json!({
            "Volumes": {"/cfg": {}},
            "HostConfig": {
                "Binds": ["data:/data:ro", "/host/dir:/h"],
                "Mounts": [{"Type": "volume", "Target": "/anon"},
                           {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1048576}}],
            },
        }))
        .unwrap();
        let hc = body.host_config.clone().unwrap();
        let mut tmpfs = BTreeMap::new();
        let image_volumes = vec!["/data".to_string(), "/var/lib/x".to_string()];
        let m = mount_requests(&body, &hc, &image_volumes, &mut tmpfs).unwrap();
        let got: Vec<(&MountSource, &str, bool)> = m
            .iter()
            .map(|r| (&r.source, r.destination.as_str(), r.read_only))
            .collect();
        assert_eq!(
            got,
            [
                (&MountSource::Named("data".into()), "/data", true),
                (
                    &MountSource::Host {
                        path: "/host/dir".into(),
                        create: true,
                    },
                    "/h",
                    false,
                ),
                (&MountSource::Anonymous, "/anon", false),
                (&MountSource::Anonymous, "/cfg", false),
                // The image's /data is covered by the bind above.
                (&MountSource::Anonymous, "/var/lib/x", false),
            ]
        );
        assert_eq!(tmpfs.get("/t").map(String::as_str), Some("size=1048576"));
        let dup: ContainerCreateBody = serde_json::from_value(serde_json::json!({
            "HostConfig": {"Binds": ["a1:/x", "b1:/x/"]}}))
        .unwrap();
        let hc = dup.host_config.clone().unwrap();
        assert!(mount_requests(&dup, &hc, &[], &mut BTreeMap::new()).is_err());
        assert!(validate_volume_name("ok-name_1.2").is_ok());
        assert!(validate_volume_name("x").is_err() && validate_volume_name("-x").is_err());
    }

    #[test]
    fn healthcheck_merges_image_and_options() {
        let image = serde_json::json!({"Test": ["CMD-SHELL", "curl -f localhost"],
                                       "Interval": 10_000_000_000i64, "Retries": 5});
        let h = health_config(Some(&image), None).unwrap().unwrap();
        assert_eq!(h.args, ["/bin/sh", "-c", "curl -f localhost"]);
        assert_eq!((h.interval_ns, h.retries), (10_000_000_000, 5));
        assert_eq!(h.timeout_ns, HEALTH_TIMEOUT_NS);
        let opts = bollard_stubs::models::HealthConfig {
            interval: Some(2_000_000_000),
            ..Default::default()
        };
        let h = health_config(Some(&image), Some(&opts)).unwrap().unwrap();
        assert_eq!((h.interval_ns, h.retries), (2_000_000_000, 5));
        let none = bollard_stubs::models::HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        };
        assert!(health_config(Some(&image), Some(&none)).unwrap().is_none());
        assert!(health_config(None, None).unwrap().is_none());
    }
    use bollard_stubs::models::HostConfig;

    fn body(json: serde_json::Value) -> ContainerCreateBody {
        serde_json::from_value(json).unwrap()
    }

    fn img() -> ImageDefaults {
        ImageDefaults::from_config(&serde_json::json!({"config": {
            "Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"], "Labels": {"l": "img"},
            "ExposedPorts": {"80/tcp": {}}
        }}))
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn command_resolution_follows_docker() {
        let p = plan(ID, &body(serde_json::json!({})), &img()).unwrap();
        assert_eq!(p.spec.process.args, vec!["sh"]);
        let p = plan(
            ID,
            &body(serde_json::json!({"Cmd": ["echo", "hi"]})),
            &img(),
        )
        .unwrap();
        assert_eq!(p.spec.process.args, vec!["echo", "hi"]);
        let p = plan(
            ID,
            &body(serde_json::json!({"Entrypoint": ["env"]})),
            &img(),
        )
        .unwrap();
        assert_eq!(p.spec.process.args, vec!["env"]);
        let e = plan(
            ID,
            &body(serde_json::json!({"Entrypoint": [""]})),
            &ImageDefaults::default(),
        );
        assert!(matches!(e, Err(Error::InvalidArgument(m)) if m == "no command specified"));
    }

    #[test]
    fn env_labels_hostname() {
        let p = plan(
            ID,
            &body(serde_json::json!({"Env": ["A=2", "B=3"], "Labels": {"l": "mine"}})),
            &img(),
        )
        .unwrap();
        assert_eq!(p.spec.process.env, vec!["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(p.labels["l"], "mine");
        assert_eq!(p.spec.hostname, &ID[..12]);
    }

    #[test]
    fn bad_input_is_refused() {
        let cases = [
            serde_json::json!({"HostConfig": {"Memory": 1024}}),
            serde_json::json!({"WorkingDir": "relative"}),
            serde_json::json!({"HostConfig": {"AutoRemove": true, "RestartPolicy": {"Name": "always"}}}),
            serde_json::json!({"HostConfig": {"PortBindings": {"80/sctp": [{"HostPort": "1"}]}}}),
            serde_json::json!({"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "x"}]}}}),
            // (--privileged and host namespaces: `security::check`, tested there)
            serde_json::json!({"HostConfig": {"NetworkMode": "host"}, "NetworkingConfig": {"EndpointsConfig": {"app": {}}}}),
            serde_json::json!({"StopSignal": "SIGNOPE"}),
            serde_json::json!({"HostConfig": {"LogConfig": {"Type": "json-file", "Config": {"max-file": "3"}}}}),
            serde_json::json!({"HostConfig": {"ExtraHosts": ["nocolon"]}}),
        ];
        for c in cases {
            assert!(
                matches!(
                    plan(ID, &body(c.clone()), &img()),
                    Err(Error::InvalidArgument(_))
                ),
                "{c}"
            );
        }
    }

    #[test]
    fn ports_and_limits() {
        let b = ContainerCreateBody {
            host_config: Some(HostConfig {
                publish_all_ports: Some(true),
                nano_cpus: Some(1_500_000_000),
                memory: Some(64 << 20),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = plan(ID, &b, &img()).unwrap();
        assert_eq!(p.ports.len(), 1);
        assert_eq!(p.ports[0].container_port, 80);
        assert_eq!(p.spec.resources.nano_cpus, 1_500_000_000);
        let b = body(
            serde_json::json!({"HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "192.0.2.7", "HostPort": "8080"}]}}}),
        );
        let p = plan(ID, &b, &img()).unwrap();
        assert_eq!(p.ports[0].host_port, 8080);
        assert_eq!(p.ports[0].host_ip, "192.0.2.7");
        let b = body(
            serde_json::json!({"HostConfig": {"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "22"}]}}}),
        );
        assert_eq!(
            plan(ID, &b, &img())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "cannot publish port 80 on 127.0.0.1: a server's loopback is its own; publish on its address"
        );
    }

    #[test]
    fn restart_policy_decisions() {
        assert!(RestartPolicy::Always.should_restart(0, false, 9));
        assert!(!RestartPolicy::Always.should_restart(0, true, 0));
        assert!(RestartPolicy::OnFailure(2).should_restart(1, false, 1));
        assert!(!RestartPolicy::OnFailure(2).should_restart(1, false, 2));
        assert!(!RestartPolicy::OnFailure(0).should_restart(0, false, 0));
        assert!(!RestartPolicy::No.should_restart(1, false, 0));
    }

    #[test]
    fn sizes_and_signals() {
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("10k"), Some(10240));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_signal("SIGKILL").unwrap(), 9);
        assert_eq!(parse_signal("hup").unwrap(), 1);
        assert_eq!(parse_signal("15").unwrap(), 15);
        assert!(parse_signal("0").is_err());
    }
}
