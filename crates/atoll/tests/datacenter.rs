//! A simulated 3-server datacenter (`atoll up --nodes 3`): every agent its own
//! process in its own network namespace, reached over TCP on the underlay.
//! Containers spread over servers, affinity and drain are honoured, everything
//! a user does works on every server, a killed server shows down and comes
//! back, and `atoll reset` leaves no namespace or device behind.

use std::collections::BTreeSet;
use std::time::Duration;

use testkit::{AtollInstance, StartOptions, json, wait_for};

fn server_of(a: &AtollInstance, name: &str) -> String {
    let list = json(&a.operator_ok(&["container", "ls", "--json"]));
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["server"].as_str())
        .unwrap_or_else(|| panic!("{name} not in {list}"))
        .to_string()
}

/// The host's underlay links of the instance at `data_dir` (`au<instance>…`;
/// the instance id is a hash of the data dir, as `atoll` computes it). Other
/// tests may run datacenters of their own meanwhile.
fn underlay_links(data_dir: &std::path::Path) -> BTreeSet<String> {
    use sha2::Digest;
    let canon = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let id = hex::encode(&sha2::Sha256::digest(canon.as_os_str().as_encoded_bytes())[..3]);
    let prefix = format!("au{id}");
    let out = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
fn a_three_server_datacenter() {
    let mut a = AtollInstance::start_with(StartOptions {
        args: vec!["--nodes".into(), "3".into()],
        ..Default::default()
    });
    let servers = json(&a.operator_ok(&["server", "ls", "--json"]));
    let ids: Vec<String> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["node-1", "node-2", "node-3"]);
    assert!(
        servers
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "up")
    );
    let data_dir = a.data_dir().canonicalize().unwrap();
    let links = underlay_links(&data_dir);
    assert_eq!(links.len(), 4, "bridge and 3 veths: {links:?}");
    // Images come from the registry once per datacenter (the head pulls;
    // servers fetch layers from the head).
    let reg = testkit::Registry::start();
    let image = reg.push_archive(&testkit::test_images().busybox.path, "test/busybox:1");
    a.docker_ok(&["pull", &image]);
    let downloads = reg.blob_downloads();
    assert!(downloads >= 2, "config and layers: {downloads}");
    a.docker_ok(&["tag", &image, "busybox"]);

    // Spread: three containers, three servers.
    for n in ["dc1", "dc2", "dc3"] {
        a.docker_ok(&[
            "run",
            "-d",
            "--name",
            n,
            "busybox",
            "sh",
            "-c",
            &format!("echo hello from {n}; sleep 600"),
        ]);
    }
    let placed: BTreeSet<String> = ["dc1", "dc2", "dc3"]
        .iter()
        .map(|n| server_of(&a, n))
        .collect();
    assert_eq!(placed.len(), 3, "spread over every server: {placed:?}");
    assert_eq!(
        reg.blob_downloads(),
        downloads,
        "servers starting the image did not touch the registry"
    );

    // Affinity across servers. (The docker CLI keeps one `-e` per key, so two
    // rules on containers go in the label.)
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "apart",
        "--label",
        r#"com.docker.swarm.affinities=["container!=dc1","container!=dc2"]"#,
        "busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(server_of(&a, "apart"), server_of(&a, "dc3"));
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "with-dc2",
        "-e",
        "affinity:container==dc2",
        "busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(server_of(&a, "with-dc2"), server_of(&a, "dc2"));

    // Everything works on every server: logs, exec, cp, stdin, attach-less run.
    for n in ["dc1", "dc2", "dc3"] {
        wait_for(
            || {
                a.docker_ok(&["logs", n])
                    .contains(&format!("hello from {n}"))
            },
            Duration::from_secs(10),
            "the log line",
        );
        assert_eq!(a.docker_ok(&["exec", n, "sh", "-c", "echo $((6*7))"]), "42");
        let src = a.data_dir().join(format!("{n}.txt"));
        std::fs::write(&src, n).unwrap();
        a.docker_ok(&["cp", src.to_str().unwrap(), &format!("{n}:/copied")]);
        assert_eq!(a.docker_ok(&["exec", n, "cat", "/copied"]), n);
    }
    let out = a.docker_stdin(
        &["run", "-i", "--rm", "busybox", "sh", "-c", "cat; hostname"],
        b"piped\n",
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("piped\n"));

    // Pack: the operator's choice fills one server before the next.
    assert!(
        a.operator_ok(&["placement"])
            .starts_with("strategy: spread\n")
    );
    let e = a.operator_err(&["placement", "--strategy", "random"]);
    assert!(
        e.contains("unknown placement strategy \"random\": spread or pack"),
        "{e}"
    );
    a.operator_ok(&["placement", "--strategy", "pack"]);
    for n in ["pack1", "pack2"] {
        a.docker_ok(&["run", "-d", "--name", n, "busybox", "sleep", "600"]);
    }
    assert_eq!(server_of(&a, "pack1"), server_of(&a, "pack2"));
    a.operator_ok(&["placement", "--strategy", "spread"]);

    // Volumes tie containers to their server: a named volume, --volumes-from;
    // two volumes on different servers cannot meet in one container.
    a.docker_ok(&["volume", "create", "va"]);
    a.docker_ok(&["volume", "create", "vb"]);
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "use-va",
        "-v",
        "va:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f; sleep 600",
    ]);
    a.docker_ok(&[
        "run", "-d", "--name", "use-vb", "-v", "vb:/data", "busybox", "sleep", "600",
    ]);
    let va_server = server_of(&a, "use-va");
    for i in 0..3 {
        let n = format!("va-again-{i}");
        a.docker_ok(&[
            "run", "-d", "--name", &n, "-v", "va:/data", "busybox", "sleep", "600",
        ]);
        assert_eq!(server_of(&a, &n), va_server);
    }
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "from-va",
        "--volumes-from",
        "use-va",
        "busybox",
        "sleep",
        "600",
    ]);
    assert_eq!(server_of(&a, "from-va"), va_server);
    assert_eq!(a.docker_ok(&["exec", "from-va", "cat", "/data/f"]), "kept");
    // New volumes spread too, so va and vb are on different servers.
    assert_ne!(server_of(&a, "use-vb"), va_server);
    let e = a.docker_err(&["run", "-d", "-v", "va:/a", "-v", "vb:/b", "busybox"]);
    assert!(e.contains("are on different servers"), "{e}");

    // Wait, stats and events work wherever the container runs.
    for n in ["dc1", "dc2", "dc3"] {
        let stats = a.docker_ok(&["stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", n]);
        assert!(stats.starts_with(n), "{stats}");
    }
    a.docker_ok(&[
        "run", "-d", "--name", "short", "busybox", "sh", "-c", "exit 3",
    ]);
    assert_eq!(a.docker_ok(&["wait", "short"]), "3");
    let until = format!(
        "{:.3}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            + 0.5
    );
    let events = a.docker_ok(&[
        "events",
        "--since",
        "1",
        "--until",
        &until,
        "--filter",
        "container=short",
        "--format",
        "{{.Action}}",
    ]);
    let actions: Vec<&str> = events.lines().collect();
    assert!(
        actions.contains(&"create") && actions.contains(&"start") && actions.contains(&"die"),
        "{actions:?}"
    );

    // Drain: no new containers there; what runs there keeps running.
    let drained = server_of(&a, "dc1");
    a.operator_ok(&["server", "drain", &drained]);
    for i in 0..4 {
        let n = format!("after-drain-{i}");
        a.docker_ok(&["run", "-d", "--name", &n, "busybox", "sleep", "600"]);
        assert_ne!(server_of(&a, &n), drained);
    }
    assert_eq!(a.docker_ok(&["exec", "dc1", "echo", "alive"]), "alive");
    a.operator_ok(&["server", "enable", &drained]);

    // A killed server shows down, placement avoids it, and it comes back with
    // its containers.
    let victim = server_of(&a, "dc2");
    let pattern = format!(
        "atoll agent --data-dir {}/nodes/{victim} ",
        a.data_dir().display()
    );
    let st = std::process::Command::new("pkill")
        .args(["-9", "-f", &pattern])
        .status()
        .unwrap();
    assert!(st.success(), "no agent matched {pattern}");
    wait_for(
        || a.server_state(&victim) == "down",
        Duration::from_secs(3),
        "the killed server to show down",
    );
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "while-down",
        "busybox",
        "sleep",
        "600",
    ]);
    assert_ne!(server_of(&a, "while-down"), victim);
    // Answered from the head's store, saying why.
    let err = a.docker_ok(&["inspect", "-f", "{{.State.Error}}", "dc2"]);
    assert!(err.contains("server is down"), "{err}");
    let status = a.docker_ok(&["ps", "--filter", "name=dc2", "--format", "{{.Status}}"]);
    assert!(status.ends_with("(server down)"), "{status}");
    assert_eq!(
        a.docker_ok(&["info", "--format", "{{.NCPU}}"]),
        (2 * host_cpus()).to_string()
    );
    wait_for(
        || a.server_state(&victim) == "up",
        Duration::from_secs(20),
        "the server to come back",
    );
    assert_eq!(a.docker_ok(&["exec", "dc2", "echo", "back"]), "back");
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.State.Running}}", "with-dc2"]),
        "true"
    );

    assert_eq!(
        a.docker_ok(&["info", "--format", "{{.NCPU}}"]),
        (3 * host_cpus()).to_string()
    );

    // A hung server (its agent stopped, its connections open) stops
    // heartbeating and is marked down within the bound; it is up again once it
    // answers.
    let hung = server_of(&a, "dc3");
    let pattern = format!(
        "atoll agent --data-dir {}/nodes/{hung} ",
        a.data_dir().display()
    );
    signal_processes("-STOP", &pattern);
    wait_for(
        || a.server_state(&hung) == "down",
        Duration::from_secs(10),
        "the hung server to show down",
    );
    signal_processes("-CONT", &pattern);
    wait_for(
        || a.server_state(&hung) == "up",
        Duration::from_secs(15),
        "the hung server to come back",
    );
    assert_eq!(a.docker_ok(&["exec", "dc3", "echo", "awake"]), "awake");

    // A restart of `atoll up` keeps every container, on its server.
    a.restart();
    for n in ["dc1", "dc2", "dc3", "apart"] {
        assert_eq!(
            a.docker_ok(&["inspect", "-f", "{{.State.Running}}", n]),
            "true"
        );
        assert_eq!(a.docker_ok(&["exec", n, "echo", "ok"]), "ok");
    }
    assert_eq!(server_of(&a, "apart"), server_of(&a, "dc3"));

    // Reset removes the servers' namespaces, links and data.
    a.stop();
    let out = a.operator(&["reset"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(underlay_links(&data_dir), BTreeSet::new());
    assert!(!a.data_dir().exists());
}

/// `pkill SIGNAL -f pattern`, which must find a process.
fn signal_processes(signal: &str, pattern: &str) {
    let st = std::process::Command::new("pkill")
        .args([signal, "-f", pattern])
        .status()
        .unwrap();
    assert!(st.success(), "pkill {signal} -f {pattern}: {st}");
}

fn host_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[test]
fn bad_server_options_are_refused_before_anything_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let out = std::process::Command::new(testkit::atoll_bin())
        .args(["agent", "--listen", "http://10.0.0.1:1"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--listen: expected tcp://ADDR:PORT or unix:///PATH"),
        "{err}"
    );
    assert!(!data.exists(), "a refused agent made its data dir");

    let data = dir.path().join("dc");
    let out = std::process::Command::new(testkit::atoll_bin())
        .args(["up", "--nodes", "201"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--docker-socket")
        .arg(dir.path().join("dc.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--nodes: at most 200 simulated servers"),
        "{err}"
    );
    assert!(!data.exists(), "a refused datacenter made its data dir");

    let out = std::process::Command::new(testkit::atoll_bin())
        .args(["up", "--nodes", "2", "--cluster-listen", "0.0.0.0:7071"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--docker-socket")
        .arg(dir.path().join("dc.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be combined with --nodes"), "{err}");
    assert!(!data.exists(), "a refused datacenter made its data dir");

    // An agent on the network must have a head to serve.
    let out = std::process::Command::new(testkit::atoll_bin())
        .args(["agent", "--listen", "tcp://127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("lonely"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs --head"), "{err}");
    assert!(!dir.path().join("lonely").exists());
}
