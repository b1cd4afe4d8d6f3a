//! Packages, affinity and the operator's server commands, with the real docker
//! CLI and the `atoll` operator commands (issue 4). Multi-server spreading is
//! covered by the scheduler's own tests (`crates/placement`); here the rules and
//! the errors go end to end through one server.

use testkit::{AtollInstance, json};

const MB: u64 = 1 << 20;

fn started() -> AtollInstance {
    let a = AtollInstance::start();
    a.load_busybox();
    a
}

/// (package, server) of a container, from the operator's view.
fn placement_of(a: &AtollInstance, name: &str) -> (String, String) {
    let list = json(&a.operator_ok(&["container", "ls", "--json"]));
    let c = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list}"));
    (
        c["package"].as_str().unwrap().to_string(),
        c["server"].as_str().unwrap().to_string(),
    )
}

#[test]
fn packages_size_containers() {
    let a = started();
    let pkgs = json(&a.operator_ok(&["package", "ls", "--json"]));
    let names: Vec<&str> = pkgs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"sample-128M") && names.contains(&"sample-512M"),
        "{names:?}"
    );
    let table = a.operator_ok(&["package", "ls"]);
    assert!(table.starts_with("NAME"), "{table}");

    // -m picks the smallest package that holds it; the limit is the user's.
    a.docker_ok(&[
        "run", "-d", "--name", "small", "-m", "100m", "busybox", "sleep", "300",
    ]);
    assert_eq!(placement_of(&a, "small").0, "sample-128M");
    assert_eq!(
        a.docker_ok(&["inspect", "-f", "{{.HostConfig.Memory}}", "small"]),
        (100 * MB).to_string()
    );
    // Nothing asked: the default package, whose limits are applied and shown.
    a.docker_ok(&["run", "-d", "--name", "plain", "busybox", "sleep", "300"]);
    assert_eq!(placement_of(&a, "plain").0, "sample-512M");
    assert_eq!(
        a.docker_ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}",
            "plain"
        ]),
        format!("{} 4096", 512 * MB)
    );
    assert_eq!(
        a.docker_ok(&[
            "exec",
            "plain",
            "cat",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes"
        ]),
        (512 * MB).to_string()
    );
    assert_eq!(
        a.docker_ok(&[
            "exec",
            "plain",
            "cat",
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
        ]),
        "100000"
    );
    // The label picks by name.
    a.docker_ok(&[
        "create",
        "--name",
        "named",
        "--label",
        "com.joyent.package=sample-1G",
        "busybox",
    ]);
    assert_eq!(placement_of(&a, "named").0, "sample-1G");

    // Clear errors, nothing created.
    let e = a.docker_err(&["run", "-d", "--name", "huge", "-m", "64g", "busybox"]);
    assert!(e.contains("no package offers 64 GB memory or more"), "{e}");
    let e = a.docker_err(&[
        "create",
        "--label",
        "com.joyent.package=sample-128M",
        "-m",
        "200m",
        "busybox",
    ]);
    assert!(
        e.contains("package sample-128M has 128 MB memory, less than the 200 MB asked for"),
        "{e}"
    );
    let e = a.docker_err(&["create", "--label", "com.joyent.package=nope", "busybox"]);
    assert!(e.contains("no such package: nope"), "{e}");
    // A limit grows past the package by moving to a larger one, which the
    // server must hold; it shrinks within the package.
    a.docker_ok(&["update", "-m", "200m", "small"]);
    assert_eq!(placement_of(&a, "small").0, "sample-256M");
    let e = a.docker_err(&["update", "-m", "64g", "small"]);
    assert!(e.contains("no package offers 64 GB memory or more"), "{e}");
    a.docker_ok(&["update", "-m", "64m", "small"]);
    assert_eq!(placement_of(&a, "small").0, "sample-256M");
    // The server's reservations add up the packages: 256M + 512M + 1G.
    let servers = json(&a.operator_ok(&["server", "ls", "--json"]));
    assert_eq!(servers[0]["memory_reserved"], (256 + 512 + 1024) * MB);
    assert_eq!(servers[0]["containers"], 3);
    let names = a.docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!names.contains("huge"), "{names}");
}

#[test]
fn the_operator_manages_packages() {
    let a = started();
    a.operator_ok(&[
        "package",
        "create",
        "tiny",
        "--memory",
        "32M",
        "--cpu-cap",
        "50",
        "--pids",
        "64",
    ]);
    let e = a.operator_err(&["package", "create", "tiny", "--memory", "32M"]);
    assert!(e.contains("exists already"), "{e}");
    let e = a.operator_err(&["package", "create", "bad name", "--memory", "32M"]);
    assert!(e.contains("invalid package name"), "{e}");
    let e = a.operator_err(&["package", "create", "x", "--memory", "1M"]);
    assert!(e.contains("at least 6 MB"), "{e}");
    let e = a.operator_err(&["package", "create", "y"]);
    assert!(e.contains("--memory is required"), "{e}");

    // `tiny` is now the smallest: -m 20m lands in it, with its cap and pids.
    a.docker_ok(&[
        "run", "-d", "--name", "tt", "-m", "20m", "busybox", "sleep", "300",
    ]);
    assert_eq!(placement_of(&a, "tt").0, "tiny");
    assert_eq!(
        a.docker_ok(&["exec", "tt", "cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"]),
        "50000"
    );
    assert_eq!(
        a.docker_ok(&["exec", "tt", "cat", "/sys/fs/cgroup/pids/pids.max"]),
        "64"
    );

    // Made the default; only one default at a time.
    a.operator_ok(&["package", "update", "tiny", "--default"]);
    let pkgs = json(&a.operator_ok(&["package", "ls", "--json"]));
    let defaults: Vec<&str> = pkgs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["default"] == true)
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(defaults, ["tiny"]);
    a.docker_ok(&["create", "--name", "dd", "busybox"]);
    assert_eq!(placement_of(&a, "dd").0, "tiny");

    // Restricted to alice: the operator account no longer sees it.
    a.operator_ok(&["package", "update", "tiny", "--account", "alice"]);
    let e = a.docker_err(&["create", "--label", "com.joyent.package=tiny", "busybox"]);
    assert!(e.contains("no such package: tiny"), "{e}");

    a.operator_ok(&["package", "rm", "tiny"]);
    let e = a.operator_err(&["package", "rm", "tiny"]);
    assert!(e.contains("No such package: tiny"), "{e}");
    // Containers sized by it keep running with their limits.
    assert_eq!(
        a.docker_ok(&["exec", "tt", "cat", "/sys/fs/cgroup/pids/pids.max"]),
        "64"
    );
}

#[test]
fn affinity_rules_are_honoured_or_refused_clearly() {
    let a = started();
    a.docker_ok(&[
        "run", "-d", "--name", "db1", "--label", "role=db", "busybox", "sleep", "300",
    ]);
    let id = a.docker_ok(&["inspect", "-f", "{{.Id}}", "db1"]);
    let server = placement_of(&a, "db1").1;
    for (name, rule) in [
        ("by-name", "affinity:container==db1".to_string()),
        ("by-glob", "affinity:container==db*".to_string()),
        ("by-regex", "affinity:container==/^d.1$/".to_string()),
        ("by-id", format!("affinity:container=={}", &id[..12])),
        ("by-label", "affinity:role==db".to_string()),
        ("soft-apart", "affinity:container!=~db1".to_string()),
    ] {
        a.docker_ok(&[
            "run", "-d", "--name", name, "-e", &rule, "-e", "KEEP=1", "busybox", "sleep", "300",
        ]);
        assert_eq!(placement_of(&a, name).1, server, "{rule}");
        // The rule is for the scheduler, not the program.
        let env = a.docker_ok(&["inspect", "-f", "{{json .Config.Env}}", name]);
        assert!(
            !env.contains("affinity:") && env.contains("KEEP=1"),
            "{env}"
        );
    }
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "by-label-list",
        "--label",
        r#"com.docker.swarm.affinities=["container==db1"]"#,
        "busybox",
        "sleep",
        "300",
    ]);
    assert_eq!(placement_of(&a, "by-label-list").1, server);

    // One server: "apart from db1" cannot be met.
    let e = a.docker_err(&["run", "-d", "-e", "affinity:container!=db1", "busybox"]);
    assert!(
        e.contains("no server satisfies the affinity rules (container!=db1)"),
        "{e}"
    );
    let e = a.docker_err(&["run", "-d", "-e", "affinity:container==nothere", "busybox"]);
    assert!(
        e.contains("no container matches the affinity rule \"container==nothere\""),
        "{e}"
    );
    let e = a.docker_err(&["run", "-d", "-e", "affinity:container=db1", "busybox"]);
    assert!(e.contains("invalid affinity rule"), "{e}");
    let e = a.docker_err(&[
        "run",
        "-d",
        "--label",
        "com.docker.swarm.affinities=container==db1",
        "busybox",
    ]);
    assert!(e.contains("JSON array"), "{e}");
    let all = a.docker_ok(&["ps", "-aq"]);
    assert_eq!(
        all.lines().count(),
        8,
        "refused creates left nothing: {all}"
    );
}

#[test]
fn drained_servers_take_no_new_containers() {
    let a = started();
    a.docker_ok(&["run", "-d", "--name", "before", "busybox", "sleep", "300"]);
    let table = a.operator_ok(&["server", "ls"]);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("local") && l.contains(" up ")),
        "{table}"
    );

    let drained = json(&a.operator_ok(&["server", "drain", "local", "--json"]));
    assert_eq!(drained[0]["state"], "draining");
    let e = a.docker_err(&["run", "-d", "busybox", "true"]);
    assert!(
        e.contains("no server is available to run containers"),
        "{e}"
    );
    // What runs keeps running and answers.
    assert_eq!(a.docker_ok(&["exec", "before", "echo", "hi"]), "hi");
    let e = a.operator_err(&["server", "forget", "local"]);
    assert!(
        e.contains("is up: only a server that is down can be forgotten"),
        "{e}"
    );
    let e = a.operator_err(&["server", "drain", "nope"]);
    assert!(e.contains("No such server: nope"), "{e}");

    a.operator_ok(&["server", "enable", "local"]);
    a.docker_ok(&["run", "-d", "--name", "after", "busybox", "sleep", "300"]);
    assert_eq!(placement_of(&a, "after").1, "local");
}

#[test]
fn operator_commands_need_a_running_instance() {
    let e = std::process::Command::new(testkit::atoll_bin())
        .args(["server", "ls", "--data-dir", "/nonexistent/atoll"])
        .output()
        .unwrap();
    assert!(!e.status.success());
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.contains("no atoll instance at /nonexistent/atoll"),
        "{err}"
    );
}
