//! Tenants over TLS: accounts and their client certificates (`atoll account …`),
//! the Docker API on the TLS port, driven by the real docker CLI as each tenant.
//! Two tenants use the same names and never see each other's objects; revoked
//! certificates and disabled accounts are refused; limits hold.

use std::process::Command;
use std::time::Duration;

use testkit::{AtollInstance, Tenant, json, test_images};

fn load_busybox(t: &Tenant) {
    let path = test_images().busybox.path.to_string_lossy().into_owned();
    t.docker_ok(&["load", "-i", &path]);
}

/// `curl` against the TLS port with optional client credentials; whether it
/// got an HTTP answer, and the answer.
fn curl(
    a: &AtollInstance,
    ca: &std::path::Path,
    client: Option<&std::path::Path>,
) -> (bool, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-m", "10", "--cacert"]).arg(ca);
    if let Some(dir) = client {
        cmd.arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"));
    }
    let out = cmd
        .arg(format!("https://{}/_ping", a.tls_address()))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn two_tenants_share_names_and_see_only_their_own() {
    let a = AtollInstance::start();
    let alice = a.tenant("alice");
    let bob = a.tenant("bob");
    for t in [&alice, &bob] {
        load_busybox(t);
        t.docker_ok(&["tag", "busybox", "app:1"]);
        t.docker_ok(&["volume", "create", "data"]);
        t.docker_ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "-v",
            "data:/data",
            "app:1",
            "sh",
            "-c",
            &format!(
                "echo {} > /data/owner; echo I am {}; sleep 600",
                t.name, t.name
            ),
        ]);
    }
    let alice_id = alice.docker_ok(&["inspect", "-f", "{{.Id}}", "web"]);
    let bob_id = bob.docker_ok(&["inspect", "-f", "{{.Id}}", "web"]);
    assert_ne!(alice_id, bob_id);
    assert_eq!(alice.docker_ok(&["ps", "-q", "--no-trunc"]), alice_id);
    assert_eq!(bob.docker_ok(&["ps", "-q", "--no-trunc"]), bob_id);
    assert_eq!(
        alice.docker_ok(&["exec", "web", "cat", "/data/owner"]),
        "alice"
    );
    assert_eq!(bob.docker_ok(&["exec", "web", "cat", "/data/owner"]), "bob");
    testkit::wait_for(
        || alice.docker_ok(&["logs", "web"]) == "I am alice",
        Duration::from_secs(10),
        "alice's log",
    );
    assert_eq!(
        json(&alice.docker_ok(&["info", "--format", "{{json .Containers}}"])),
        serde_json::json!(1)
    );

    // Bob names alice's container by full id and by prefix: it does not exist for him.
    for reference in [alice_id.as_str(), &alice_id[..12], &alice_id[..4]] {
        if bob_id.starts_with(reference) {
            continue; // a prefix both ids share would name bob's own
        }
        for args in [
            vec!["container", "inspect", reference],
            vec!["logs", reference],
            vec!["exec", reference, "true"],
            vec!["stop", reference],
            vec!["rm", reference],
        ] {
            let err = bob.docker_err(&args);
            assert!(
                err.contains(&format!("No such container: {reference}")),
                "bob {args:?}: {err}"
            );
            assert!(!err.contains("alice"), "{err}");
        }
        // `rm -f` of a missing container succeeds quietly in the docker CLI.
        bob.docker_ok(&["rm", "-f", reference]);
    }
    assert!(
        alice.docker_ok(&["ps", "-q"]).len() >= 12,
        "alice's container survived bob's attempts"
    );
    // Events: each sees its own history only.
    let until = (std::time::SystemTime::now() + Duration::from_secs(1))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let events = |t: &Tenant| {
        t.docker_ok(&[
            "events",
            "--since",
            "0",
            "--until",
            &until,
            "--format",
            "{{.Actor.ID}}",
        ])
    };
    let (ae, be) = (events(&alice), events(&bob));
    assert!(ae.contains(&alice_id) && !ae.contains(&bob_id), "{ae}");
    assert!(be.contains(&bob_id) && !be.contains(&alice_id), "{be}");
    // The unix socket is the operator's: it sees neither tenant's objects.
    assert_eq!(a.docker_ok(&["ps", "-aq"]), "");
    let placed = json(&a.operator_ok(&["container", "ls", "--json"]));
    let accounts: std::collections::BTreeSet<&str> = placed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["account"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, ["alice", "bob"].into_iter().collect());

    // `docker context` with the same settings.
    let ctx = format!(
        "host={},ca={}/ca.pem,cert={}/cert.pem,key={}/key.pem",
        alice.docker_host(),
        alice.cert_dir().display(),
        alice.cert_dir().display(),
        alice.cert_dir().display()
    );
    alice.docker_ok(&["context", "create", "atoll-alice", "--docker", &ctx]);
    let out = Command::new(testkit::docker_cli())
        .args(["--context", "atoll-alice", "ps", "--format", "{{.Names}}"])
        .env(
            "DOCKER_CONFIG",
            &alice
                .env()
                .iter()
                .find(|(k, _)| k == "DOCKER_CONFIG")
                .unwrap()
                .1,
        )
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "web");
}

#[test]
fn certificates_are_checked_revoked_and_accounts_disabled() {
    let a = AtollInstance::start();
    let alice = a.tenant("alice");
    let ca = alice.cert_dir().join("ca.pem");
    // With a certificate: served. Without one, or with another CA's: not even a handshake.
    let (ok, body) = curl(&a, &ca, Some(alice.cert_dir()));
    assert!(ok && body == "OK", "{body}");
    let (ok, _) = curl(&a, &ca, None);
    assert!(!ok, "served without a client certificate");
    let other = AtollInstance::start();
    let mallory = other.tenant("alice"); // same name, another cluster's CA
    let (ok, _) = curl(&a, &ca, Some(mallory.cert_dir()));
    assert!(!ok, "served a certificate of another cluster");

    // Operator commands: accounts, certificates, bad input.
    let err = a.operator_err(&["account", "create", "alice"]);
    assert!(err.contains("account alice exists already"), "{err}");
    for bad in ["Alice", "_x", "operator", "a/b"] {
        let err = a.operator_err(&["account", "create", bad]);
        assert!(
            err.contains("account name") || err.contains("operator's own"),
            "{bad}: {err}"
        );
    }
    let err = a.operator_err(&["account", "cert", "nobody", "--out", "/tmp/x-never"]);
    assert!(err.contains("No such account: nobody"), "{err}");
    assert!(!std::path::Path::new("/tmp/x-never").exists());
    let certs = json(&a.operator_ok(&["account", "certs", "alice", "--json"]));
    assert_eq!(certs.as_array().unwrap().len(), 1);
    let serial = certs[0]["serial"].as_str().unwrap().to_string();

    // Disabled: refused; enabled: served again.
    a.operator_ok(&["account", "disable", "alice"]);
    let err = alice.docker_err(&["ps"]);
    assert!(err.contains("certificate refused"), "{err}");
    a.operator_ok(&["account", "enable", "alice"]);
    alice.docker_ok(&["ps"]);

    // Revoked: refused at once, whatever its expiry; a new certificate works.
    a.operator_ok(&["account", "revoke", &serial]);
    let err = alice.docker_err(&["ps"]);
    assert!(err.contains("certificate refused"), "{err}");
    let certs = json(&a.operator_ok(&["account", "certs", "alice", "--json"]));
    assert!(certs[0]["revoked"].is_string(), "{certs}");
    let fresh = Tenant::new("alice", &a.tls_address());
    a.operator_ok(&[
        "account",
        "cert",
        "alice",
        "--out",
        fresh.cert_dir().to_str().unwrap(),
    ]);
    fresh.docker_ok(&["ps"]);

    // An account that holds something is not deleted.
    load_busybox(&fresh);
    let err = a.operator_err(&["account", "rm", "alice"]);
    assert!(err.contains("still holds"), "{err}");
    fresh.docker_ok(&["rmi", "busybox"]);
    a.operator_ok(&["account", "rm", "alice"]);
    let err = fresh.docker_err(&["ps"]);
    assert!(err.contains("certificate refused"), "{err}");
}

#[test]
fn account_limits_hold() {
    let a = AtollInstance::start();
    let alice = a.tenant("alice");
    load_busybox(&alice);
    a.operator_ok(&["account", "limit", "alice", "--containers", "2"]);
    alice.docker_ok(&["create", "--name", "c1", "busybox", "true"]);
    alice.docker_ok(&["create", "--name", "c2", "busybox", "true"]);
    let err = alice.docker_err(&["create", "--name", "c3", "busybox", "true"]);
    assert!(
        err.contains("account limit reached: at most 2 containers"),
        "{err}"
    );
    assert!(
        alice
            .docker_err(&["container", "inspect", "c3"])
            .contains("No such container")
    );
    // Memory: the packages' memory counts (the default package is 512 MB).
    a.operator_ok(&[
        "account",
        "limit",
        "alice",
        "--containers",
        "none",
        "--memory",
        "1536M",
    ]);
    alice.docker_ok(&["create", "--name", "c3", "busybox", "true"]);
    let err = alice.docker_err(&["create", "-m", "1g", "busybox", "true"]);
    assert!(err.contains("account limit reached"), "{err}");
    alice.docker_ok(&["rm", "c1"]);
    alice.docker_ok(&["create", "--name", "c4", "busybox", "true"]);
    let ls = json(&a.operator_ok(&["account", "ls", "--json"]));
    assert_eq!(ls[0]["containers"], 3);
    assert_eq!(ls[0]["limits"]["memory_bytes"], 1536u64 << 20);
    // Another account is not limited by alice's limits.
    let bob = a.tenant("bob");
    load_busybox(&bob);
    // Which packages an account may use.
    a.operator_ok(&[
        "package",
        "create",
        "gold",
        "--memory",
        "256M",
        "--account",
        "bob",
    ]);
    let err = alice.docker_err(&[
        "create",
        "--label",
        "com.joyent.package=gold",
        "busybox",
        "true",
    ]);
    assert!(err.contains("no such package: gold"), "{err}");
    bob.docker_ok(&[
        "create",
        "--label",
        "com.joyent.package=gold",
        "busybox",
        "true",
    ]);
    for i in 0..4 {
        bob.docker_ok(&["create", "--name", &format!("b{i}"), "busybox", "true"]);
    }
}

/// `CapEff` and `NoNewPrivs` of the container's process, from /proc/self/status.
fn cap_eff_and_nnp(status: &str) -> (u64, String) {
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {status}"))
            .trim()
            .to_string()
    };
    (
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        field("NoNewPrivs:"),
    )
}

#[test]
fn tenants_cannot_reach_outside_their_containers() {
    let a = AtollInstance::start();
    let alice = a.tenant("alice");
    load_busybox(&alice);
    for opts in [
        vec!["--privileged"],
        vec!["--pid", "host"],
        vec!["--ipc", "host"],
        vec!["--uts", "host"],
        vec!["--userns", "host"],
        vec!["--network", "host"],
        vec!["--device", "/dev/kmsg"],
        vec!["--cap-add", "SYS_ADMIN"],
        vec!["--cap-add", "ALL"],
        vec!["--cap-add", "NET_ADMIN"],
        vec!["--security-opt", "seccomp=unconfined"],
        vec!["--cgroup-parent", "/escape"],
        vec!["-v", "/etc:/host-etc"],
    ] {
        let mut args = vec!["run", "--rm"];
        args.extend(&opts);
        args.extend(["busybox", "true"]);
        let err = alice.docker_err(&args);
        assert!(err.contains("not allowed"), "{opts:?}: {err}");
        assert!(!err.contains("/var/lib") && !err.contains("node-"), "{err}");
    }
    assert_eq!(alice.docker_ok(&["ps", "-aq"]), "", "nothing half-created");

    // What tenants may do: drop capabilities, forbid new privileges; execs too.
    alice.docker_ok(&[
        "run",
        "-d",
        "--name",
        "tight",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "busybox",
        "sleep",
        "600",
    ]);
    let (caps, nnp) =
        cap_eff_and_nnp(&alice.docker_ok(&["exec", "tight", "cat", "/proc/1/status"]));
    assert_eq!((caps, nnp.as_str()), (0, "1"));
    let (caps, nnp) =
        cap_eff_and_nnp(&alice.docker_ok(&["exec", "tight", "cat", "/proc/self/status"]));
    assert_eq!(
        (caps, nnp.as_str()),
        (0, "1"),
        "the exec has the container's limits"
    );
    let (caps, _) = cap_eff_and_nnp(&alice.docker_ok(&[
        "run",
        "--rm",
        "--cap-drop",
        "NET_RAW",
        "busybox",
        "cat",
        "/proc/self/status",
    ]));
    assert_eq!(
        caps.count_ones(),
        13,
        "Docker's 14 defaults less NET_RAW: {caps:x}"
    );
    assert_eq!(caps & (1 << 13), 0);

    // The operator's account keeps what tenants may not.
    a.load_busybox();
    let (caps, nnp) = cap_eff_and_nnp(&a.docker_ok(&[
        "run",
        "--rm",
        "--cap-add",
        "NET_ADMIN",
        "busybox",
        "cat",
        "/proc/self/status",
    ]));
    assert_ne!(caps & (1 << 12), 0, "CAP_NET_ADMIN: {caps:x}");
    assert_eq!(nnp, "0");
    let status = a.docker_ok(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        "busybox",
        "cat",
        "/proc/self/status",
    ]);
    assert!(status.lines().any(|l| l == "Seccomp:\t0"), "{status}");
    // A privileged exec (the operator's): every capability the server grants,
    // and the seccomp profile follows them (mounts allowed).
    a.docker_ok(&["run", "-d", "--name", "op", "busybox", "sleep", "600"]);
    let out = a.docker_ok(&[
        "exec",
        "--privileged",
        "op",
        "sh",
        "-c",
        "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m && cat /proc/self/status",
    ]);
    let (caps, _) = cap_eff_and_nnp(&out);
    assert_ne!(caps & (1 << 21), 0, "CAP_SYS_ADMIN: {caps:x}");
    let err = alice.docker_err(&["exec", "--privileged", "tight", "true"]);
    assert!(err.contains("privileged exec is not allowed"), "{err}");
    // Control: what tenants are refused is the operator's to use.
    a.docker_ok(&[
        "run",
        "--rm",
        "--privileged",
        "--pid",
        "host",
        "busybox",
        "true",
    ]);
}

/// One request over TLS as `t` (curl with its certificate): status and body.
fn tls_call(t: &Tenant, method: &str, path: &str) -> (u16, String) {
    let dir = t.cert_dir();
    let url = format!(
        "https://{}{path}",
        t.docker_host().trim_start_matches("tcp://")
    );
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-m",
        "15",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(dir.join("ca.pem"))
    .arg("--cert")
    .arg(dir.join("cert.pem"))
    .arg("--key")
    .arg(dir.join("key.pem"));
    match method {
        "HEAD" => {
            cmd.arg("-I");
        }
        "GET" => {}
        m => {
            cmd.args([
                "-X",
                m,
                "-H",
                "Content-Type: application/json",
                "--data",
                "{}",
            ]);
        }
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{method} {path}: no status: {text}")),
        body.to_string(),
    )
}

/// Every route of the API, as bob, with alice's ids (full and prefix) and
/// names: each answers 404 (or 403), never names alice's objects, and changes
/// nothing of hers. A route added later without scoping by account fails here.
#[test]
fn every_route_refuses_another_tenants_objects() {
    let a = AtollInstance::start();
    let alice = a.tenant("alice");
    let bob = a.tenant("bob");
    // Bob holds no image: alice's image id must not be his too.
    load_busybox(&alice);
    alice.docker_ok(&["tag", "busybox", "hidden-img:1"]);
    alice.docker_ok(&["volume", "create", "hidden-vol"]);
    let net_id = alice.docker_ok(&["network", "create", "hidden-net"]);
    let cid = alice.docker_ok(&["run", "-d", "--name", "secret", "busybox", "sleep", "600"]);
    let image_id = alice.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "hidden-img:1"]);
    alice.docker_ok(&["exec", "-d", "secret", "sleep", "300"]);
    let exec_ids = alice.docker_ok(&["inspect", "-f", "{{json .ExecIDs}}", "secret"]);
    let exec_id = json(&exec_ids)[0].as_str().unwrap().to_string();

    // Positive controls: alice reaches her own objects through the same paths.
    for path in [
        format!("/containers/{cid}/json"),
        format!("/exec/{exec_id}/json"),
        "/volumes/hidden-vol".to_string(),
        "/networks/hidden-net".to_string(),
        "/images/hidden-img:1/json".to_string(),
    ] {
        assert_eq!(tls_call(&alice, "GET", &path).0, 200, "alice GET {path}");
    }

    const QUERY: &str = "?stdout=1&stderr=1&stream=false&path=/&repo=x&tag=y&name=renamed&t=0&h=10&w=10&signal=KILL";
    let mut walked = 0;
    for (method, template) in docker_api::route_table() {
        if !template.contains('{') {
            continue; // listings and creations: tested per tenant above
        }
        if [
            "/swarm",
            "/nodes",
            "/services",
            "/tasks",
            "/secrets",
            "/configs",
        ]
        .iter()
        .any(|p| template.starts_with(p))
        {
            continue; // no swarm: the same 503 for everyone
        }
        let mut calls: Vec<(&str, String)> = Vec::new();
        if template.contains("{*rest}") {
            for image in ["hidden-img:1", image_id.as_str(), &image_id[7..19]] {
                calls.push(("GET", format!("/images/{image}/json")));
                calls.push(("GET", format!("/images/{image}/history")));
                calls.push(("GET", format!("/images/{image}/get")));
                calls.push(("POST", format!("/images/{image}/tag")));
                calls.push(("DELETE", format!("/images/{image}")));
            }
        } else if template.starts_with("/containers/") {
            for id in [cid.as_str(), &cid[..12], "secret"] {
                calls.push((method, template.replace("{id}", id).replace("{link}", "db")));
            }
        } else if template.starts_with("/exec/") {
            for id in [exec_id.as_str(), &exec_id[..12]] {
                calls.push((method, template.replace("{id}", id)));
            }
        } else if template.starts_with("/volumes/") {
            calls.push((method, template.replace("{name}", "hidden-vol")));
        } else if template.starts_with("/networks/") {
            for id in [net_id.as_str(), &net_id[..12], "hidden-net"] {
                calls.push((method, template.replace("{id}", id)));
            }
        } else {
            panic!("a route this test does not know how to fill: {method} {template}");
        }
        for (m, path) in calls {
            let (status, body) = tls_call(&bob, m, &format!("{path}{QUERY}"));
            assert!(
                status == 404 || status == 403,
                "bob {m} {path}: {status} {body}"
            );
            assert!(!body.contains("alice"), "bob {m} {path}: {body}");
            walked += 1;
        }
    }
    assert!(walked > 60, "walked only {walked} calls");

    // Nothing of alice's changed.
    assert_eq!(
        alice.docker_ok(&["inspect", "-f", "{{.Name}} {{.State.Status}}", &cid]),
        "/secret running"
    );
    alice.docker_ok(&["volume", "inspect", "hidden-vol"]);
    alice.docker_ok(&["network", "inspect", "hidden-net"]);
    alice.docker_ok(&["image", "inspect", "hidden-img:1"]);
    assert!(
        !bob.docker_ok(&["images", "--format", "{{.Repository}}"])
            .contains("alice")
    );
}

/// A build sees only its own account: another tenant's images are not
/// there to build from, its cache is never reused, its cache mounts never
/// shared; each tenant's own second build does reuse its own.
#[test]
fn builds_see_only_their_own_account() {
    let a = AtollInstance::start();
    let alice = a.tenant("alice");
    let bob = a.tenant("bob");
    load_busybox(&alice);
    load_busybox(&bob);
    let ctx = tempfile::tempdir().unwrap();
    let dir = ctx.path().to_str().unwrap().to_string();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=cache,target=/c,id=shared-name ls /c > /seen; echo secret-of-$(hostname) > /c/mine\nRUN echo same-step\n",
    )
    .unwrap();
    let build = |t: &Tenant, tag: &str| -> String {
        let out = t.docker(&["build", "-t", tag, &dir]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        text
    };
    build(&alice, "alice-app");
    // Control: alice's own rebuild hits her cache.
    assert!(build(&alice, "alice-app").contains("Using cache"));
    // Bob, same Dockerfile: no hit, and an empty cache mount.
    let bobs = build(&bob, "bob-app");
    assert!(!bobs.contains("Using cache"), "{bobs}");
    assert_eq!(
        bob.docker_ok(&["run", "--rm", "bob-app", "cat", "/seen"]),
        ""
    );
    // Alice's second run saw her own file (the control for the line above).
    alice.docker_ok(&["build", "--no-cache", "-t", "alice-app:2", &dir]);
    assert!(
        alice
            .docker_ok(&["run", "--rm", "alice-app:2", "cat", "/seen"])
            .contains("mine")
    );
    // Alice's image is not bob's to build from.
    std::fs::write(ctx.path().join("Dockerfile"), "FROM alice-app\nRUN true\n").unwrap();
    let out = bob.docker(&["build", &dir]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "bob built from alice's image");
    assert!(text.contains("alice-app"), "{text}");
    assert!(alice.docker(&["build", &dir]).status.success());
}
