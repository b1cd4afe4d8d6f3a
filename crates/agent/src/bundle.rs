//! The OCI bundle (runtime spec 1.0.2, as runc 1.1.5 reads it) for one
//! container, built from the head's `ContainerSpec` the way dockerd builds its
//! spec: Docker's default capabilities, mounts, masked paths and devices, plus
//! the /etc/hosts, /etc/resolv.conf and /etc/hostname files it bind-mounts.

use std::path::{Path, PathBuf};

use agent_client::{ContainerSpec, IdMap, Resources};
use serde_json::{Value, json};

use crate::runc::RuntimeError;
use crate::user::{ExecUser, resolve_user};

/// What `--init` runs, and where Docker puts it in the container.
pub const INIT_BINARY: &str = "/usr/bin/tini-static";
pub const INIT_PATH: &str = "/sbin/docker-init";

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = agent_client::caps::DOCKER_DEFAULT;

use agent_client::{MASKED_PATHS, READONLY_PATHS};

/// Docker's RLIMIT_NOFILE for containers.
const NOFILE: u64 = 1_048_576;

/// Docker's NOFILE limit, lowered to what runc can actually grant: above our
/// own hard limit only with CAP_SYS_RESOURCE, never above fs.nr_open.
pub fn nofile_limit(own_hard: u64, can_raise: bool, nr_open: u64) -> u64 {
    let max = if can_raise { nr_open } else { own_hard };
    NOFILE.min(max)
}

fn host_nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_max
    } else {
        NOFILE
    };
    // What we hold ourselves is what runc can surely grant; `atoll up` raises its
    // own limit at start where the host allows it.
    nofile_limit(hard, false, hard)
}

/// Docker's fallback when the host has only loopback nameservers.
const FALLBACK_NAMESERVERS: &[&str] = &["8.8.8.8", "8.8.4.4"];

/// The directory layout of one container on the agent's server. The shim
/// derives the same layout from its state dir, so both agree on every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPaths {
    /// `<agent>/containers/<id>`: the container's state dir.
    pub root: PathBuf,
    pub bundle: PathBuf,
    pub config: PathBuf,
    pub rootfs: PathBuf,
    /// The writable area (upper and work dirs): on btrfs, a subvolume holding
    /// the container's disk quota (see `quota.rs`).
    pub rw: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Docker json-file log (rotated to `.1`, `.2`, ...).
    pub log: PathBuf,
    pub attach_sock: PathBuf,
    pub control_sock: PathBuf,
    /// Where runc passes the pty master for tty containers.
    pub console_sock: PathBuf,
    /// `{"exit_code":..,"oom_killed":..,"finished_at":..}` once exited.
    pub exit_file: PathBuf,
    /// The container init's pid, written by `runc create`.
    pub pid_file: PathBuf,
    /// The shim's own pid.
    pub shim_pid_file: PathBuf,
    /// runc's own log of `create` (its error messages).
    pub runc_log: PathBuf,
    /// The shim's stderr after it detached from the agent.
    pub shim_log: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
}

impl ContainerPaths {
    pub fn new(containers_dir: &Path, id: &str) -> ContainerPaths {
        ContainerPaths::from_root(&containers_dir.join(id))
    }

    pub fn from_root(root: &Path) -> ContainerPaths {
        let bundle = root.join("bundle");
        // Containers made before `rw` existed keep their dirs at the top.
        let rw = if root.join("upper").is_dir() {
            root.to_path_buf()
        } else {
            root.join("rw")
        };
        ContainerPaths {
            root: root.to_path_buf(),
            config: bundle.join("config.json"),
            bundle,
            rootfs: root.join("rootfs"),
            upper: rw.join("upper"),
            work: rw.join("work"),
            rw,
            log: root.join("container-json.log"),
            attach_sock: root.join("attach.sock"),
            control_sock: root.join("control.sock"),
            console_sock: root.join("console.sock"),
            exit_file: root.join("exit.json"),
            pid_file: root.join("init.pid"),
            shim_pid_file: root.join("shim.pid"),
            runc_log: root.join("runc.log"),
            shim_log: root.join("shim.log"),
            hosts: root.join("hosts"),
            resolv_conf: root.join("resolv.conf"),
            hostname: root.join("hostname"),
        }
    }
}

/// Writes `<ctr>/bundle/config.json` and the files it bind-mounts. The rootfs
/// must already be mounted: the user is resolved against its /etc/passwd.
/// `netns` is the container's network namespace (None: a new one with only
/// `lo`, Docker's `--network none`).
pub fn write_bundle(
    spec: &ContainerSpec,
    paths: &ContainerPaths,
    netns: Option<&Path>,
    cgroup_parent: &str,
) -> Result<(), RuntimeError> {
    if spec.process.args.is_empty() {
        return Err(RuntimeError::Invalid("no command specified".into()));
    }
    let user = resolve_user(&paths.rootfs, &spec.process.user, &spec.process.group_add)?;
    let hostname = container_hostname(spec);
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let ids = spec.userns.as_ref();
    for (path, text) in [
        (&paths.hosts, hosts_file(spec, &hostname)),
        (&paths.resolv_conf, resolv_conf(spec, &host_resolv)),
        (&paths.hostname, format!("{hostname}\n")),
    ] {
        write_file(path, &text)?;
        // The container's root may edit them, as on Docker.
        if let Some(ids) = ids {
            std::os::unix::fs::chown(path, Some(ids.host_base), Some(ids.host_base)).map_err(
                |e| RuntimeError::io(format!("changing the owner of {}", file_name(path)), e),
            )?;
        }
    }
    ensure_cwd(&paths.rootfs, &cwd(spec), &user, ids)?;
    let config = oci_config(
        spec,
        paths,
        &user,
        netns,
        cgroup_parent,
        Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
    )?;
    std::fs::create_dir_all(&paths.bundle)
        .map_err(|e| RuntimeError::io("creating the bundle directory", e))?;
    let text = serde_json::to_vec_pretty(&config)
        .map_err(|e| RuntimeError::Runtime(format!("encoding config.json: {e}")))?;
    write_file(&paths.config, &String::from_utf8_lossy(&text))
}

/// Atomic (tmp + rename), so a crash never leaves a half-written file behind.
fn write_file(path: &Path, text: &str) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| RuntimeError::io(format!("writing {}", file_name(path)), e))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn cwd(spec: &ContainerSpec) -> String {
    if spec.process.cwd.is_empty() {
        "/".into()
    } else {
        spec.process.cwd.clone()
    }
}

/// Docker uses the short id when no hostname is given.
pub fn container_hostname(spec: &ContainerSpec) -> String {
    if spec.host_namespaces.iter().any(|n| n == "uts") {
        // The server's own name, as `--uts host` shows it.
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    } else if spec.hostname.is_empty() {
        spec.id.chars().take(12).collect()
    } else {
        spec.hostname.clone()
    }
}

/// Docker creates a missing working directory, owned by the container's user.
fn ensure_cwd(
    rootfs: &Path,
    cwd: &str,
    user: &ExecUser,
    ids: Option<&IdMap>,
) -> Result<(), RuntimeError> {
    // Through descriptors: the container's root may change meanwhile (a
    // `docker cp` into it), and nothing may be made or chowned outside it.
    let (dir, made) = crate::confined::mkdir_all_in_root(rootfs, cwd).map_err(|e| {
        RuntimeError::Invalid(format!("cannot create working directory {cwd}: {e}"))
    })?;
    if !made {
        return Ok(());
    }
    crate::confined::chown_fd(
        std::os::fd::AsFd::as_fd(&dir),
        agent_client::host_id(ids, user.uid),
        agent_client::host_id(ids, user.gid),
    )
    .map_err(|e| RuntimeError::io("changing the owner of the working directory", e))
}

/// Docker's /etc/hosts: the loopback entries, `--add-host` entries, then the
/// container's own address.
pub fn hosts_file(spec: &ContainerSpec, hostname: &str) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for h in &spec.extra_hosts {
        // `host:ip`, `host=ip` (IPv6 addresses contain colons, so split once).
        let (name, ip) = match h.split_once('=') {
            Some(p) => p,
            None => match h.split_once(':') {
                Some(p) => p,
                None => continue,
            },
        };
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip = match (ip, spec.networks.first()) {
            ("host-gateway", Some(n)) => n.gateway.to_string(),
            ("host-gateway", None) => continue,
            (ip, _) => ip.to_string(),
        };
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    if let Some(n) = spec.networks.first() {
        if spec.domainname.is_empty() {
            s.push_str(&format!("{}\t{hostname}\n", n.ip));
        } else {
            s.push_str(&format!(
                "{}\t{hostname}.{} {hostname}\n",
                n.ip, spec.domainname
            ));
        }
    }
    s
}

fn is_loopback_ns(ns: &str) -> bool {
    ns.parse::<std::net::IpAddr>()
        .map(|a| a.is_loopback())
        .unwrap_or(false)
}

/// Docker's resolv.conf: on networks, the resolver at 127.0.0.11 (which
/// forwards to `--dns` or the host's); without, the host's nameservers minus
/// loopback ones (they would not answer inside the container's netns) or
/// `--dns`. `--dns-search` and `--dns-option` replace the host's entries of
/// their kind.
pub fn resolv_conf(spec: &ContainerSpec, host: &str) -> String {
    let mut nameservers = Vec::new();
    let mut search = Vec::new();
    let mut options = Vec::new();
    for line in host.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => {
                // Loopback servers answer only in the server's own namespace.
                if let Some(ns) = f.next()
                    && (spec.host_network || !is_loopback_ns(ns))
                {
                    nameservers.push(ns.to_string());
                }
            }
            Some("search") | Some("domain") => search = f.map(str::to_string).collect(),
            Some("options") => options.extend(f.map(str::to_string)),
            _ => {}
        }
    }
    if !spec.dns.is_empty() {
        nameservers = spec.dns.clone();
    } else if nameservers.is_empty() {
        nameservers = FALLBACK_NAMESERVERS.iter().map(|s| s.to_string()).collect();
    }
    if !spec.dns_search.is_empty() {
        // `--dns-search .` means: no search domains.
        search = spec
            .dns_search
            .iter()
            .filter(|s| s.as_str() != ".")
            .cloned()
            .collect();
    }
    if !spec.dns_options.is_empty() {
        options = spec.dns_options.clone();
    }
    if !spec.networks.is_empty() {
        // Docker's way on its user networks: the agent's resolver answers
        // the networks' names and forwards the rest upstream.
        nameservers = vec![crate::dns::RESOLVER.to_string()];
        if spec.dns_options.is_empty() && !options.iter().any(|o| o.starts_with("ndots:")) {
            options.push("ndots:0".into());
        }
    }
    let mut s = String::new();
    for ns in &nameservers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

/// Docker's environment: PATH (if the image sets none), HOSTNAME, TERM for a
/// tty, then the spec's entries, a later `KEY=` replacing an earlier one.
pub fn process_env(spec: &ContainerSpec, hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let has_path = spec.process.env.iter().any(|e| e.starts_with("PATH="));
    if !has_path {
        env.push(DEFAULT_PATH.into());
    }
    env.push(format!("HOSTNAME={hostname}"));
    if spec.process.tty {
        env.push("TERM=xterm".into());
    }
    for e in &spec.process.env {
        let key = e.split_once('=').map(|(k, _)| k).unwrap_or(e);
        match env
            .iter_mut()
            .find(|x| x.split_once('=').map(|(k, _)| k).unwrap_or(x) == key)
        {
            Some(slot) => *slot = e.clone(),
            None => env.push(e.clone()),
        }
    }
    env
}

/// `--tmpfs` options on top of Docker's defaults (noexec, nosuid, nodev), a
/// user's `exec`/`suid`/`dev` switching the matching default off.
pub fn tmpfs_options(opts: &str) -> Vec<String> {
    let user: Vec<&str> = opts
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut out: Vec<String> = Vec::new();
    for (default, opposite) in [("noexec", "exec"), ("nosuid", "suid"), ("nodev", "dev")] {
        if !user.contains(&opposite) && !user.contains(&default) {
            out.push(default.into());
        }
    }
    out.extend(user.iter().map(|s| s.to_string()));
    out
}

/// The OCI rlimits: the `--ulimit`s (-1 is unlimited), and Docker's
/// RLIMIT_NOFILE unless one is given.
pub fn rlimits(ulimits: &[agent_client::Ulimit], nofile: u64) -> Value {
    let value = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
    let mut out: Vec<Value> = ulimits
        .iter()
        .map(|u| {
            json!({
                "type": format!("RLIMIT_{}", u.name.to_uppercase()),
                "hard": value(u.hard),
                "soft": value(u.soft),
            })
        })
        .collect();
    if !ulimits.iter().any(|u| u.name == "nofile") {
        out.push(json!({"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}));
    }
    Value::Array(out)
}

/// The memory, cpu and pids limits; `swap_supported` says whether the host's
/// memory cgroup accounts swap (else Docker drops the swap limit).
pub fn resources(r: &Resources, swap_supported: bool) -> Value {
    let mut res = serde_json::Map::new();
    res.insert("devices".into(), json!(device_rules()));
    let mut mem = serde_json::Map::new();
    if r.memory > 0 {
        mem.insert("limit".into(), json!(r.memory));
        if swap_supported {
            // Docker: unset swap means as much swap as memory (total 2x);
            // -1 means unlimited.
            let swap = match r.memory_swap {
                0 => r.memory * 2,
                s => s,
            };
            mem.insert("swap".into(), json!(swap));
        }
    }
    if !mem.is_empty() {
        res.insert("memory".into(), Value::Object(mem));
    }
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.nano_cpus > 0 {
        cpu.insert("period".into(), json!(100_000u64));
        cpu.insert(
            "quota".into(),
            json!((r.nano_cpus as i128 * 100_000 / 1_000_000_000) as i64),
        );
    } else {
        if r.cpu_period > 0 {
            cpu.insert("period".into(), json!(r.cpu_period));
        }
        if r.cpu_quota > 0 {
            cpu.insert("quota".into(), json!(r.cpu_quota));
        }
    }
    if !cpu.is_empty() {
        res.insert("cpu".into(), Value::Object(cpu));
    }
    if r.pids_limit > 0 {
        res.insert("pids".into(), json!({ "limit": r.pids_limit }));
    }
    Value::Object(res)
}

/// Deny everything, then allow what Docker (and runc's defaults) allow.
fn device_rules() -> Vec<Value> {
    let mut v = vec![json!({"allow": false, "access": "rwm"})];
    let allow = [
        ("c", None, None, "m"),
        ("b", None, None, "m"),
        ("c", Some(1), Some(3), "rwm"),    // null
        ("c", Some(1), Some(8), "rwm"),    // random
        ("c", Some(1), Some(7), "rwm"),    // full
        ("c", Some(5), Some(0), "rwm"),    // tty
        ("c", Some(1), Some(5), "rwm"),    // zero
        ("c", Some(1), Some(9), "rwm"),    // urandom
        ("c", Some(136), None, "rwm"),     // pts
        ("c", Some(5), Some(2), "rwm"),    // ptmx
        ("c", Some(10), Some(200), "rwm"), // tun
    ];
    for (t, major, minor, access) in allow {
        let mut d = json!({"allow": true, "type": t, "access": access});
        if let Some(m) = major {
            d["major"] = json!(m);
        }
        if let Some(m) = minor {
            d["minor"] = json!(m);
        }
        v.push(d);
    }
    v
}

/// The agent's capability bounding set (`CapBnd` of /proc/self/status).
fn bounding_set() -> u64 {
    static SET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SET.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(u64::MAX)
    })
}

/// An OCI device entry for the server's node `host`, made at `container`,
/// and the cgroup rule that lets the container use it with `perms`.
fn device_node(host: &str, container: &str, perms: &str) -> Result<(Value, Value), RuntimeError> {
    let st = std::fs::metadata(host).map_err(|e| {
        RuntimeError::Invalid(format!(
            "error gathering device information while adding custom device \"{host}\": {e}"
        ))
    })?;
    let (kind, major, minor, mode) = device_numbers(&st).ok_or_else(|| {
        RuntimeError::Invalid(format!(
            "error gathering device information while adding custom device \"{host}\": not a device node"
        ))
    })?;
    Ok((
        json!({"path": container, "type": kind, "major": major, "minor": minor,
               "fileMode": mode, "uid": 0, "gid": 0}),
        json!({"allow": true, "type": kind, "major": major, "minor": minor, "access": perms}),
    ))
}

/// Type, major, minor and permission bits of a device node.
fn device_numbers(st: &std::fs::Metadata) -> Option<(&'static str, u64, u64, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let kind = if st.file_type().is_char_device() {
        "c"
    } else if st.file_type().is_block_device() {
        "b"
    } else {
        return None;
    };
    let rdev = st.rdev();
    Some((
        kind,
        libc::major(rdev) as u64,
        libc::minor(rdev) as u64,
        st.mode() & 0o777,
    ))
}

/// Every device node of the server under `dir` (a privileged container's
/// /dev, as Docker gives it), symlinks and the kernel's own per-container
/// directories left out.
fn host_devices(dir: &Path, shown: &str, depth: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = format!("{shown}/{name}");
        let Ok(st) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if st.is_dir() {
            if depth < 3 && !["pts", "shm", "mqueue", "fd", "hugepages"].contains(&name.as_str()) {
                out.extend(host_devices(&e.path(), &path, depth + 1));
            }
        } else if let Some((kind, major, minor, mode)) = device_numbers(&st)
            // The console is the container's own (a terminal or none).
            && path != "/dev/console"
        {
            out.push(
                json!({"path": path, "type": kind, "major": major, "minor": minor,
                            "fileMode": mode, "uid": st_uid(&st), "gid": st_gid(&st)}),
            );
        }
    }
    out.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    out
}

fn st_uid(st: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::MetadataExt::uid(st)
}

fn st_gid(st: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::MetadataExt::gid(st)
}

/// Docker's `--device-cgroup-rule` (`c 10:229 rwm`, `a *:* m`) as an OCI rule.
fn device_rule(rule: &str) -> Result<Value, RuntimeError> {
    let bad = || RuntimeError::Invalid(format!("invalid device cgroup format '{rule}'"));
    let f: Vec<&str> = rule.split_whitespace().collect();
    let [kind, nums, access] = f.as_slice() else {
        return Err(bad());
    };
    let (major, minor) = nums.split_once(':').ok_or_else(bad)?;
    let mut v = json!({"allow": true, "type": kind, "access": access});
    for (key, n) in [("major", major), ("minor", minor)] {
        if n != "*" {
            v[key] = json!(n.parse::<i64>().map_err(|_| bad())?);
        }
    }
    Ok(v)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "type": typ, "source": source, "options": options})
}

fn bind(dest: &str, source: &Path, ro: bool) -> Value {
    let mut opts = vec!["rbind", "rprivate"];
    if ro {
        opts.push("ro");
    }
    json!({"destination": dest, "type": "bind", "source": source, "options": opts})
}

/// The whole config.json as JSON (pure: testable without root).
pub fn oci_config(
    spec: &ContainerSpec,
    paths: &ContainerPaths,
    user: &ExecUser,
    netns: Option<&Path>,
    cgroup_parent: &str,
    swap_supported: bool,
) -> Result<Value, RuntimeError> {
    let hostname = container_hostname(spec);
    let nofile = host_nofile_limit();
    let mut args = spec.process.args.clone();
    if spec.init {
        let mut a = vec![INIT_PATH.to_string(), "--".to_string()];
        a.append(&mut args);
        args = a;
    }
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["ro", "nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"],
        ),
        bind("/etc/resolv.conf", &paths.resolv_conf, false),
        bind("/etc/hostname", &paths.hostname, false),
        bind("/etc/hosts", &paths.hosts, false),
    ];
    for (dest, opts) in &spec.tmpfs {
        if !dest.starts_with('/') {
            return Err(RuntimeError::Invalid(format!(
                "invalid mount path for tmpfs: {dest}: must be absolute"
            )));
        }
        mounts.push(json!({
            "destination": dest,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": tmpfs_options(opts),
        }));
    }
    if spec.init {
        mounts.push(bind(INIT_PATH, Path::new(INIT_BINARY), true));
    }
    // Volumes and binds; the agent has turned volume ids into their directories.
    for m in &spec.mounts {
        if !m.destination.starts_with('/') || !Path::new(&m.source).is_absolute() {
            return Err(RuntimeError::Invalid(format!(
                "invalid mount {} -> {}",
                m.source, m.destination
            )));
        }
        mounts.push(bind(&m.destination, Path::new(&m.source), m.read_only));
    }
    let host_ns = |n: &str| spec.host_namespaces.iter().any(|h| h == n);
    if spec.privileged {
        // Docker's privileged containers: /sys and the cgroup tree writable.
        for m in mounts.iter_mut() {
            if (m["destination"] == "/sys" || m["destination"] == "/sys/fs/cgroup")
                && let Some(o) = m["options"].as_array_mut()
            {
                o.retain(|x| x != "ro");
            }
        }
    }
    if host_ns("ipc") {
        // The server's shared memory, as Docker's (an mqueue mount in the
        // server's IPC namespace is the server's queues already).
        for m in mounts.iter_mut() {
            if m["destination"] == "/dev/shm" {
                *m = json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm",
                            "options": ["rbind", "nosuid", "noexec", "nodev"]});
            }
        }
    }
    let mut namespaces: Vec<Value> = ["pid", "ipc", "uts"]
        .into_iter()
        .filter(|n| !host_ns(n))
        .map(|n| json!({"type": n}))
        .collect();
    namespaces.push(json!({"type": "mount"}));
    // `--network host` (the operator's): the server's namespace, none of its own.
    if !spec.host_network {
        namespaces.push(match netns {
            Some(p) => json!({"type": "network", "path": p}),
            None => json!({"type": "network"}),
        });
    }
    if spec.userns.is_some() {
        // Joined where the agent made it, as the owner of the network
        // namespace (so the container may mount its sysfs); else new.
        namespaces.push(match netns {
            Some(p) => json!({"type": "user", "path": net::netns::userns_pin(p)}),
            None => json!({"type": "user"}),
        });
    }
    // The head computed the set from --cap-add/--cap-drop; none means Docker's.
    let mut caps: Vec<&str> = match &spec.capabilities {
        Some(c) => c.iter().map(String::as_str).collect(),
        None => DEFAULT_CAPS.to_vec(),
    };
    if spec.privileged {
        // Every capability this server's agent holds, as Docker's: a server
        // whose own bounding set lacks one cannot give it.
        let held = bounding_set();
        caps.retain(|c| {
            agent_client::caps::ALL
                .iter()
                .position(|x| x == c)
                .is_none_or(|bit| held & (1u64 << bit) != 0)
        });
    }
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": spec.process.tty,
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                "additionalGids": user.additional_gids,
            },
            "args": args,
            "env": process_env(spec, &hostname),
            "cwd": cwd(spec),
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "rlimits": rlimits(&spec.ulimits, nofile),
            "noNewPrivileges": spec.no_new_privileges,
            "oomScoreAdj": 0,
        },
        "root": {"path": paths.rootfs, "readonly": spec.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "resources": resources(&spec.resources, swap_supported),
            "cgroupsPath": format!("/{}/{}", cgroup_parent.trim_matches('/'), spec.id),
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    });
    if !spec.domainname.is_empty() {
        config["domainname"] = json!(spec.domainname);
    }
    if host_ns("uts") {
        // runc sets no name in a namespace the container does not own.
        if let Some(c) = config.as_object_mut() {
            c.remove("hostname");
            c.remove("domainname");
        }
    }
    let mut devices = Vec::new();
    let mut rules = Vec::new();
    if spec.privileged {
        devices = host_devices(Path::new("/dev"), "/dev", 0);
        rules.push(json!({"allow": true, "access": "rwm"}));
        config["linux"]["maskedPaths"] = json!([]);
        config["linux"]["readonlyPaths"] = json!([]);
    }
    for d in &spec.devices {
        let (dev, rule) = device_node(&d.host, &d.container, &d.perms)?;
        devices.retain(|x| x["path"] != dev["path"]);
        devices.push(dev);
        rules.push(rule);
    }
    for r in &spec.device_rules {
        rules.push(device_rule(r)?);
    }
    if !devices.is_empty() {
        config["linux"]["devices"] = json!(devices);
    }
    if let Some(list) = config["linux"]["resources"]["devices"].as_array_mut() {
        list.extend(rules);
    }
    if let Some(ids) = &spec.userns {
        let map = json!([{"containerID": 0, "hostID": ids.host_base, "size": ids.size}]);
        config["linux"]["uidMappings"] = map.clone();
        config["linux"]["gidMappings"] = map;
    }
    if !spec.seccomp_unconfined {
        config["linux"]["seccomp"] = crate::seccomp::oci_profile(&caps);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_client::{Endpoint, ProcessSpec};
    use std::net::Ipv4Addr;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "0123456789abcdef".repeat(4),
            process: ProcessSpec {
                args: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["FOO=bar".into(), "HOSTNAME=mine".into()],
                ..Default::default()
            },
            networks: vec![Endpoint {
                network: "n".repeat(64),
                name: "bridge".into(),
                vni: 1,
                subnet: "10.0.0.0/24".into(),
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                ip: Ipv4Addr::new(10, 0, 0, 5),
                ip_requested: false,
                mac: "02:42:0a:00:00:05".into(),
                internal: false,
                aliases: vec![],
            }],
            extra_hosts: vec![
                "db:10.1.2.3".into(),
                "v6:2001:db8::1".into(),
                "gw:host-gateway".into(),
            ],
            ..Default::default()
        }
    }

    fn root_user() -> ExecUser {
        ExecUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into(),
        }
    }

    #[test]
    fn hosts_like_docker() {
        let s = spec();
        let h = hosts_file(&s, "web");
        assert!(h.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"));
        assert!(h.contains("10.1.2.3\tdb\n"));
        assert!(h.contains("2001:db8::1\tv6\n"));
        assert!(h.contains("10.0.0.1\tgw\n"));
        assert!(h.ends_with("10.0.0.5\tweb\n"));
        let none = ContainerSpec {
            networks: vec![],
            ..spec()
        };
        assert!(!hosts_file(&none, "web").contains("\tweb\n"));
    }

    #[test]
    fn resolv_conf_filters_loopback() {
        // Without networks (`--network none`): the host's, or --dns.
        let s = ContainerSpec {
            networks: vec![],
            ..spec()
        };
        let host = "# comment\nnameserver 127.0.0.53\nnameserver 10.9.9.9\nsearch corp.example\noptions edns0\n";
        assert_eq!(
            resolv_conf(&s, host),
            "nameserver 10.9.9.9\nsearch corp.example\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf(&s, "nameserver 127.0.0.1\nnameserver ::1\n"),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        let custom = ContainerSpec {
            dns: vec!["1.1.1.1".into()],
            dns_search: vec![".".into()],
            dns_options: vec!["ndots:2".into()],
            ..s.clone()
        };
        assert_eq!(
            resolv_conf(&custom, host),
            "nameserver 1.1.1.1\noptions ndots:2\n"
        );
        // On networks: the resolver, which forwards to those.
        assert_eq!(
            resolv_conf(&spec(), host),
            "nameserver 127.0.0.11\nsearch corp.example\noptions edns0 ndots:0\n"
        );
        let custom = ContainerSpec {
            dns: vec!["1.1.1.1".into()],
            dns_options: vec!["ndots:2".into()],
            ..spec()
        };
        assert_eq!(
            resolv_conf(&custom, host),
            "nameserver 127.0.0.11\nsearch corp.example\noptions ndots:2\n"
        );
    }

    #[test]
    fn env_merges_like_docker() {
        let mut s = spec();
        s.process.tty = true;
        let env = process_env(&s, "abc");
        assert_eq!(
            env,
            vec![
                DEFAULT_PATH.to_string(),
                "HOSTNAME=mine".into(),
                "TERM=xterm".into(),
                "FOO=bar".into()
            ]
        );
        s.process.env = vec!["PATH=/x".into()];
        let env = process_env(&s, "abc");
        assert!(env.contains(&"PATH=/x".to_string()));
        assert!(!env.iter().any(|e| e == DEFAULT_PATH));
    }

    #[test]
    fn nofile_is_what_runc_can_grant() {
        assert_eq!(nofile_limit(20_000, true, 1_048_576), 1_048_576);
        assert_eq!(nofile_limit(20_000, false, 1_048_576), 20_000);
        assert_eq!(nofile_limit(u64::MAX, false, 1_048_576), 1_048_576);
        assert_eq!(nofile_limit(20_000, true, 65_536), 65_536);
    }

    #[test]
    fn tmpfs_defaults() {
        assert_eq!(
            tmpfs_options("rw,size=64m"),
            vec!["noexec", "nosuid", "nodev", "rw", "size=64m"]
        );
        assert_eq!(tmpfs_options("exec"), vec!["nosuid", "nodev", "exec"]);
    }

    #[test]
    fn resources_like_docker() {
        let r = Resources {
            memory: 64 << 20,
            nano_cpus: 1_500_000_000,
            cpu_shares: 512,
            pids_limit: 100,
            ..Default::default()
        };
        let v = resources(&r, true);
        assert_eq!(v["memory"]["limit"], json!(64 << 20));
        assert_eq!(v["memory"]["swap"], json!(128 << 20));
        assert_eq!(v["cpu"]["quota"], json!(150_000));
        assert_eq!(v["cpu"]["period"], json!(100_000));
        assert_eq!(v["cpu"]["shares"], json!(512));
        assert_eq!(v["pids"]["limit"], json!(100));
        assert!(resources(&r, false)["memory"].get("swap").is_none());
        let none = resources(&Resources::default(), true);
        assert!(none.get("memory").is_none() && none.get("cpu").is_none());
        assert_eq!(none["devices"][0], json!({"allow": false, "access": "rwm"}));
    }

    #[test]
    fn config_shape() {
        let mut s = spec();
        s.init = true;
        s.read_only = true;
        s.tmpfs.insert("/run".into(), "size=1m".into());
        let paths = ContainerPaths::new(Path::new("/a/containers"), &s.id);
        let c = oci_config(&s, &paths, &root_user(), None, "atoll-x", true).expect("config");
        assert_eq!(c["ociVersion"], "1.0.2");
        assert_eq!(
            c["process"]["args"],
            json!(["/sbin/docker-init", "--", "sh", "-c", "echo hi"])
        );
        assert_eq!(c["root"]["readonly"], json!(true));
        assert_eq!(c["hostname"], json!(&s.id[..12]));
        assert_eq!(
            c["linux"]["cgroupsPath"],
            json!(format!("/atoll-x/{}", s.id))
        );
        assert_eq!(c["linux"]["namespaces"][4], json!({"type": "network"}));
        assert_eq!(
            c["process"]["capabilities"]["bounding"]
                .as_array()
                .map(|a| a.len()),
            Some(14)
        );
        let mounts = c["mounts"].as_array().expect("mounts");
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/sbin/docker-init" && m["source"] == INIT_BINARY)
        );
        assert!(
            mounts
                .iter()
                .any(|m| m["destination"] == "/run" && m["type"] == "tmpfs")
        );
        let hosts = mounts
            .iter()
            .find(|m| m["destination"] == "/etc/hosts")
            .expect("hosts");
        assert_eq!(
            hosts["source"],
            json!("/a/containers/".to_string() + &s.id + "/hosts")
        );
        let with_ns = oci_config(
            &s,
            &paths,
            &root_user(),
            Some(Path::new("/run/netns/x")),
            "p",
            true,
        )
        .expect("config");
        assert_eq!(with_ns["linux"]["namespaces"][4]["path"], "/run/netns/x");
        assert!(with_ns["linux"].get("uidMappings").is_none());
        assert_eq!(
            with_ns["linux"]["namespaces"].as_array().map(Vec::len),
            Some(5)
        );
        // A tenant's: the user namespace that owns the network one, mapped.
        s.userns = Some(IdMap {
            host_base: 1_000_065_536,
            size: 65536,
        });
        let tenant = oci_config(
            &s,
            &paths,
            &root_user(),
            Some(Path::new("/run/netns/x")),
            "p",
            true,
        )
        .expect("config");
        assert_eq!(
            tenant["linux"]["namespaces"][5],
            json!({"type": "user", "path": "/run/netns/x.user"})
        );
        let map = json!([{"containerID": 0, "hostID": 1_000_065_536u32, "size": 65536}]);
        assert_eq!(tenant["linux"]["uidMappings"], map);
        assert_eq!(tenant["linux"]["gidMappings"], map);
        let isolated = oci_config(&s, &paths, &root_user(), None, "p", true).expect("config");
        assert_eq!(isolated["linux"]["namespaces"][5], json!({"type": "user"}));
        s.tmpfs.insert("rel".into(), String::new());
        assert!(oci_config(&s, &paths, &root_user(), None, "p", true).is_err());
    }
}
