//! What a container may ask of its server's kernel: capabilities, privileges,
//! host namespaces, devices. Tenants share servers, so options that reach
//! outside a container are refused for them with 403, whatever the server could
//! do; the operator's account keeps what atoll implements. Pure, unit-tested.

use bollard_stubs::models::HostConfig;

use crate::error::{Error, Result};
use crate::model::OPERATOR;
use agent_client::caps;

/// The security settings of a container's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    /// None: Docker's default set.
    pub capabilities: Option<Vec<String>>,
    pub no_new_privileges: bool,
    /// `--security-opt seccomp=unconfined` (the operator only).
    pub seccomp_unconfined: bool,
    /// `--privileged` (the operator only).
    pub privileged: bool,
    /// `pid`, `ipc`, `uts` shared with the server (the operator only).
    pub host_namespaces: Vec<String>,
    /// `--device` (the operator only).
    pub devices: Vec<agent_client::DeviceSpec>,
    /// `--device-cgroup-rule` (the operator only).
    pub device_rules: Vec<String>,
}

fn forbidden(what: &str) -> Error {
    Error::Forbidden(format!(
        "{what} is not allowed: containers share their servers with other accounts"
    ))
}

fn unsupported(what: &str) -> Error {
    Error::InvalidArgument(format!("{what} is not supported"))
}

/// Checks `hc` for `account` and derives the process's security settings.
pub fn check(account: &str, hc: &HostConfig) -> Result<Security> {
    let tenant = account != OPERATOR;
    // Refused for tenants (403) before anything else is looked at; for the
    // operator, refused (400) where atoll does not implement them yet.
    let refuse = |what: &str| {
        Err(if tenant {
            forbidden(what)
        } else {
            unsupported(what)
        })
    };
    let privileged = hc.privileged == Some(true);
    if privileged && tenant {
        return Err(forbidden("--privileged"));
    }
    // Before any look at the path: whether a host path exists is not a
    // tenant's to learn.
    let host_bind = hc.binds.iter().flatten().any(|b| b.starts_with('/'))
        || hc
            .mounts
            .iter()
            .flatten()
            .any(|m| m.typ == Some(bollard_stubs::models::MountType::BIND));
    if tenant && host_bind {
        return Err(Error::Forbidden(
            "host bind mounts are not allowed for this account".into(),
        ));
    }
    let mut host_namespaces = Vec::new();
    for (what, mode) in [
        ("pid", &hc.pid_mode),
        ("ipc", &hc.ipc_mode),
        ("uts", &hc.uts_mode),
        ("userns", &hc.userns_mode),
    ] {
        let Some(m) = mode.as_deref().filter(|m| !m.is_empty()) else {
            continue;
        };
        if m == "private" || (what == "ipc" && m == "shareable") {
            continue;
        }
        if m == "host" {
            if tenant {
                return Err(forbidden(&format!("--{what}=host")));
            }
            // The operator's containers use the server's ids already.
            if what != "userns" {
                host_namespaces.push(what.to_string());
            }
            continue;
        }
        return Err(unsupported(&format!("--{what}={m}")));
    }
    if hc.network_mode.as_deref() == Some("host") && tenant {
        return Err(forbidden("--network=host"));
    }
    let devices = hc.devices.clone().unwrap_or_default();
    if !devices.is_empty() && tenant {
        return Err(forbidden("--device"));
    }
    let devices = devices.iter().map(device).collect::<Result<Vec<_>>>()?;
    let device_rules = hc.device_cgroup_rules.clone().unwrap_or_default();
    if !device_rules.is_empty() && tenant {
        return Err(forbidden("--device-cgroup-rule"));
    }
    if let Some(bad) = device_rules.iter().find(|r| !is_device_rule(r)) {
        return Err(Error::InvalidArgument(format!(
            "invalid device cgroup format '{bad}'"
        )));
    }
    if hc.device_requests.as_ref().is_some_and(|d| !d.is_empty()) {
        return refuse("--gpus");
    }
    if hc.cgroup_parent.as_deref().is_some_and(|c| !c.is_empty()) {
        return refuse("--cgroup-parent");
    }
    // runc is every server's runtime (Docker's default one, by either name).
    if let Some(r) = hc
        .runtime
        .as_deref()
        .filter(|r| !["", "runc", "io.containerd.runc.v2"].contains(r))
    {
        return Err(Error::InvalidArgument(format!(
            "unknown or invalid runtime name: {r}"
        )));
    }
    if hc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(unsupported("--sysctl"));
    }
    // A container's disk is its package's (quota groups where the server can).
    if hc.storage_opt.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(unsupported("--storage-opt"));
    }
    let mut no_new_privileges = false;
    let mut seccomp_unconfined = false;
    for opt in hc.security_opt.iter().flatten() {
        let (key, value) = opt
            .split_once(['=', ':'])
            .map(|(k, v)| (k, Some(v)))
            .unwrap_or((opt.as_str(), None));
        match (key, value) {
            ("no-new-privileges", None | Some("true")) => no_new_privileges = true,
            ("no-new-privileges", Some("false")) => no_new_privileges = false,
            ("seccomp", Some("unconfined")) if tenant => {
                return Err(forbidden("--security-opt seccomp=unconfined"));
            }
            ("seccomp", Some("unconfined")) => seccomp_unconfined = true,
            ("apparmor", Some("unconfined")) => {
                return refuse("--security-opt apparmor=unconfined");
            }
            // SELinux labels: servers run without SELinux, so there is
            // nothing to relabel or disable (Docker accepts them there too).
            ("label", Some(v))
                if v == "disable"
                    || v == "nested"
                    || ["user:", "role:", "type:", "level:", "filetype:"]
                        .iter()
                        .any(|p| v.starts_with(p)) => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "--security-opt {opt} is not supported"
                )));
            }
        }
    }
    Ok(Security {
        // Privileged: every capability, whatever was added or dropped.
        capabilities: if privileged {
            Some(caps::ALL.iter().map(|c| c.to_string()).collect())
        } else {
            capabilities(tenant, hc)?
        },
        no_new_privileges,
        seccomp_unconfined: seccomp_unconfined || privileged,
        privileged,
        host_namespaces,
        devices,
        device_rules,
    })
}

/// `--device HOST[:CONTAINER][:PERMS]` as the docker CLI sends it.
fn device(d: &bollard_stubs::models::DeviceMapping) -> Result<agent_client::DeviceSpec> {
    let host = d.path_on_host.clone().unwrap_or_default();
    let container = d
        .path_in_container
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| host.clone());
    if let Some(p) = [&host, &container]
        .into_iter()
        .find(|p| !p.starts_with('/'))
    {
        return Err(Error::InvalidArgument(format!(
            "invalid device path {p}: it must be absolute"
        )));
    }
    let perms = d
        .cgroup_permissions
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "rwm".into());
    if perms.is_empty() || !perms.chars().all(|c| "rwm".contains(c)) {
        return Err(Error::InvalidArgument(format!(
            "invalid device mode: {perms}"
        )));
    }
    Ok(agent_client::DeviceSpec {
        host,
        container,
        perms,
    })
}

/// Docker's device cgroup rule form: `TYPE MAJOR:MINOR ACCESS` (`c 10:229 rwm`,
/// `a *:* m`).
fn is_device_rule(rule: &str) -> bool {
    let f: Vec<&str> = rule.split_whitespace().collect();
    let number = |s: &str| s == "*" || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    matches!(f.as_slice(), [t, nums, access]
        if ["a", "b", "c"].contains(t)
            && nums.split_once(':').is_some_and(|(a, b)| number(a) && number(b))
            && !access.is_empty()
            && access.chars().all(|c| "rwm".contains(c)))
}

/// Docker's rules: the default set, minus drops, plus adds (`ALL` in either
/// list means every capability); tenants may only add back Docker's defaults.
fn capabilities(tenant: bool, hc: &HostConfig) -> Result<Option<Vec<String>>> {
    let add = names(hc.cap_add.as_deref().unwrap_or_default())?;
    let drop = names(hc.cap_drop.as_deref().unwrap_or_default())?;
    if add.is_empty() && drop.is_empty() {
        return Ok(None);
    }
    if tenant {
        let beyond: Vec<&str> = match &add {
            a if a.contains(&None) => vec!["ALL"],
            a => a
                .iter()
                .flatten()
                .filter(|c| !caps::DOCKER_DEFAULT.contains(c))
                .copied()
                .collect(),
        };
        if !beyond.is_empty() {
            return Err(forbidden(&format!("--cap-add {}", beyond.join(","))));
        }
    }
    let mut set: Vec<&str> = if add.contains(&None) {
        caps::ALL.to_vec()
    } else if drop.contains(&None) {
        Vec::new()
    } else {
        caps::DOCKER_DEFAULT.to_vec()
    };
    if !add.contains(&None) {
        set.retain(|c| !drop.contains(&Some(*c)));
    }
    for c in add.iter().flatten() {
        if !set.contains(c) {
            set.push(c);
        }
    }
    if add.contains(&None) {
        set.retain(|c| !drop.contains(&Some(*c)));
    }
    Ok(Some(set.into_iter().map(str::to_string).collect()))
}

/// Capability names as users write them; `None` stands for `ALL`.
fn names(list: &[String]) -> Result<Vec<Option<&'static str>>> {
    list.iter()
        .map(|n| {
            if n.eq_ignore_ascii_case("ALL") {
                Ok(None)
            } else {
                caps::canonical(n)
                    .map(Some)
                    .ok_or_else(|| Error::InvalidArgument(format!("unknown capability: \"{n}\"")))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(v: serde_json::Value) -> HostConfig {
        serde_json::from_value(v).unwrap()
    }

    fn status(r: Result<Security>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(Error::Forbidden(_)) => "403",
            Err(Error::InvalidArgument(_)) => "400",
            Err(_) => "other",
        }
    }

    #[test]
    fn tenants_are_refused_what_reaches_outside_their_containers() {
        for v in [
            serde_json::json!({"Privileged": true}),
            serde_json::json!({"PidMode": "host"}),
            serde_json::json!({"IpcMode": "host"}),
            serde_json::json!({"UTSMode": "host"}),
            serde_json::json!({"UsernsMode": "host"}),
            serde_json::json!({"NetworkMode": "host"}),
            serde_json::json!({"Devices": [{"PathOnHost": "/dev/kmsg", "PathInContainer": "/dev/kmsg", "CgroupPermissions": "rwm"}]}),
            serde_json::json!({"DeviceCgroupRules": ["c 1:3 rwm"]}),
            serde_json::json!({"CgroupParent": "/"}),
            serde_json::json!({"SecurityOpt": ["seccomp=unconfined"]}),
            serde_json::json!({"SecurityOpt": ["apparmor:unconfined"]}),
            serde_json::json!({"CapAdd": ["SYS_ADMIN"]}),
            serde_json::json!({"CapAdd": ["ALL"]}),
            serde_json::json!({"CapAdd": ["CAP_SYS_MODULE"]}),
            serde_json::json!({"CapAdd": ["sys_ptrace"]}),
            serde_json::json!({"CapAdd": ["NET_ADMIN"]}),
            // A path that cannot exist: the refusal comes before any look.
            serde_json::json!({"Binds": ["/no/such/path/anywhere:/x"]}),
            serde_json::json!({"Mounts": [{"Type": "bind", "Source": "/etc/shadow", "Target": "/x"}]}),
        ] {
            let h = hc(v.clone());
            assert_eq!(status(check("alice", &h)), "403", "{v}");
            // The message names the option, never a host detail.
            if let Err(Error::Forbidden(m)) = check("alice", &h) {
                assert!(m.contains("not allowed"), "{m}");
            }
        }
    }

    #[test]
    fn the_operator_gets_privileges_host_namespaces_and_devices() {
        let s = check(
            OPERATOR,
            &hc(serde_json::json!({"CapAdd": ["NET_ADMIN", "sys_admin"]})),
        )
        .unwrap();
        let caps = s.capabilities.unwrap();
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
        let p = check(OPERATOR, &hc(serde_json::json!({"Privileged": true}))).unwrap();
        assert!(p.privileged && p.seccomp_unconfined);
        assert_eq!(p.capabilities.unwrap().len(), caps::ALL.len());
        let h = check(
            OPERATOR,
            &hc(
                serde_json::json!({"PidMode": "host", "IpcMode": "host", "UTSMode": "host",
                                   "UsernsMode": "host"}),
            ),
        )
        .unwrap();
        assert_eq!(h.host_namespaces, ["pid", "ipc", "uts"]);
        let d = check(
            OPERATOR,
            &hc(serde_json::json!({
                "Devices": [{"PathOnHost": "/dev/fuse", "PathInContainer": "", "CgroupPermissions": ""}],
                "DeviceCgroupRules": ["c 10:229 rwm", "a *:* m"]})),
        )
        .unwrap();
        assert_eq!(
            d.devices,
            [agent_client::DeviceSpec {
                host: "/dev/fuse".into(),
                container: "/dev/fuse".into(),
                perms: "rwm".into()
            }]
        );
        for (bad, message) in [
            (
                serde_json::json!({"DeviceCgroupRules": ["c 10 rwm"]}),
                "invalid device cgroup format 'c 10 rwm'",
            ),
            (
                serde_json::json!({"Devices": [{"PathOnHost": "/dev/fuse", "CgroupPermissions": "rwx"}]}),
                "invalid device mode: rwx",
            ),
            (
                serde_json::json!({"PidMode": "container:x"}),
                "--pid=container:x is not supported",
            ),
            (
                serde_json::json!({"CgroupParent": "/x"}),
                "--cgroup-parent is not supported",
            ),
            (
                serde_json::json!({"Runtime": "kata"}),
                "unknown or invalid runtime name: kata",
            ),
        ] {
            match check(OPERATOR, &hc(bad)) {
                Err(Error::InvalidArgument(m)) => assert_eq!(m, message),
                other => panic!("{message}: {other:?}"),
            }
        }
        // Host networking is the network layer's to refuse (it knows the networks).
        assert_eq!(
            status(check(
                OPERATOR,
                &hc(serde_json::json!({"NetworkMode": "host"}))
            )),
            "ok"
        );
    }

    #[test]
    fn capabilities_follow_dockers_rules() {
        let caps = |v| check("alice", &hc(v)).unwrap().capabilities;
        assert_eq!(caps(serde_json::json!({})), None);
        assert_eq!(caps(serde_json::json!({"CapDrop": ["ALL"]})), Some(vec![]));
        assert_eq!(
            caps(serde_json::json!({"CapDrop": ["ALL"], "CapAdd": ["chown", "NET_BIND_SERVICE"]})),
            Some(vec![
                "CAP_CHOWN".to_string(),
                "CAP_NET_BIND_SERVICE".to_string()
            ])
        );
        let c = caps(serde_json::json!({"CapDrop": ["NET_RAW", "mknod"]})).unwrap();
        assert_eq!(c.len(), caps::DOCKER_DEFAULT.len() - 2);
        assert!(!c.iter().any(|x| x == "CAP_NET_RAW" || x == "CAP_MKNOD"));
        // Adding a default back is allowed for tenants.
        let c = caps(serde_json::json!({"CapAdd": ["KILL"]})).unwrap();
        assert_eq!(c.len(), caps::DOCKER_DEFAULT.len());
        let all = check(
            OPERATOR,
            &hc(serde_json::json!({"CapAdd": ["ALL"], "CapDrop": ["SYS_ADMIN"]})),
        )
        .unwrap()
        .capabilities
        .unwrap();
        assert_eq!(all.len(), caps::ALL.len() - 1);
        assert_eq!(
            status(check("alice", &hc(serde_json::json!({"CapAdd": ["FLY"]})))),
            "400"
        );
    }

    #[test]
    fn security_options() {
        let s = |v| check("alice", &hc(v));
        assert!(
            s(serde_json::json!({"SecurityOpt": ["no-new-privileges"]}))
                .unwrap()
                .no_new_privileges
        );
        assert!(
            s(serde_json::json!({"SecurityOpt": ["no-new-privileges:true"]}))
                .unwrap()
                .no_new_privileges
        );
        assert!(
            !s(serde_json::json!({"SecurityOpt": ["no-new-privileges=false"]}))
                .unwrap()
                .no_new_privileges
        );
        assert_eq!(
            status(s(serde_json::json!({"SecurityOpt": ["seccomp=/x.json"]}))),
            "400"
        );
        assert_eq!(
            status(s(
                serde_json::json!({"Sysctls": {"net.ipv4.ip_forward": "1"}})
            )),
            "400"
        );
        assert_eq!(
            status(s(serde_json::json!({"StorageOpt": {"size": "10G"}}))),
            "400"
        );
        assert_eq!(
            status(s(
                serde_json::json!({"IpcMode": "shareable", "PidMode": "private"})
            )),
            "ok"
        );
        assert_eq!(
            status(s(serde_json::json!({"PidMode": "container:x"}))),
            "400"
        );
    }
}
