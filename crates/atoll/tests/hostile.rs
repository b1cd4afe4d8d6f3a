//! A tenant trying to get out, or to hurt a neighbour on the same server: what a
//! hostile second tenant would try from inside its own container, over TLS with
//! the real docker CLI. Every attempt fails inside the container; the neighbour
//! stays healthy.

use std::time::{Duration, Instant};

use testkit::{AtollInstance, Tenant, test_images};

fn load_busybox(t: &Tenant) {
    let path = test_images().busybox.path.to_string_lossy().into_owned();
    t.docker_ok(&["load", "-i", &path]);
}

/// Runs `script` in a fresh container of `t`; its combined output and exit code.
fn attempt(t: &Tenant, script: &str) -> (String, i32) {
    let out = t.docker(&["run", "--rm", "busybox", "sh", "-c", script]);
    testkit::combined(&out)
}

#[test]
fn escape_attempts_fail_inside_the_container() {
    let a = AtollInstance::start();
    let mallory = a.tenant("mallory");
    load_busybox(&mallory);
    // Each attempt must meet its specific refusal: the refusal's text shows
    // the attempt ran (the binary exists, the path exists on this kernel).
    for (what, script, refusal) in [
        (
            "mount a filesystem",
            "mount -t tmpfs none /mnt",
            "mount: permission denied",
        ),
        (
            "mount the host's proc again",
            "mkdir -p /p && mount -t proc proc /p",
            "mount: permission denied",
        ),
        (
            "remount / read-write elsewhere",
            "mount -o remount,rw /proc/sys",
            "mount: permission denied",
        ),
        (
            "write a kernel setting",
            "test -e /proc/sys/kernel/panic && echo 1 > /proc/sys/kernel/panic",
            "can't create /proc/sys/kernel/panic: Read-only file system",
        ),
        (
            "write the kernel's core pattern",
            "test -e /proc/sys/kernel/core_pattern && echo '|/bin/sh' > /proc/sys/kernel/core_pattern",
            "can't create /proc/sys/kernel/core_pattern: Read-only file system",
        ),
        (
            "make a cgroup",
            "test -d /sys/fs/cgroup/memory && mkdir /sys/fs/cgroup/memory/escape",
            "can't create directory '/sys/fs/cgroup/memory/escape': Read-only file system",
        ),
        (
            "raise its own pids limit",
            "test -e /sys/fs/cgroup/pids/pids.max && echo max > /sys/fs/cgroup/pids/pids.max",
            "can't create /sys/fs/cgroup/pids/pids.max: Read-only file system",
        ),
        (
            "raise its file limit",
            "ulimit -n 99999999",
            "error setting limit: Operation not permitted",
        ),
        (
            "read the kernel log through a device node",
            "mknod /tmp/kmsg c 1 11 && head -c 1 /tmp/kmsg",
            "mknod: /tmp/kmsg: Operation not permitted",
        ),
        (
            "read raw memory",
            "mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem",
            "mknod: /tmp/mem: Operation not permitted",
        ),
        (
            "set the clock",
            // (busybox's `date -s` reports the refusal but exits 0)
            "date -s 2000-01-01 >/dev/null; test $(date +%Y) = 2000",
            "can't set date: Operation not permitted",
        ),
        // New namespaces (an unprivileged user namespace is the usual first
        // step of a kernel exploit): refused by the seccomp profile.
        (
            "make a user namespace",
            "unshare -U true",
            "unshare(0x10000000): Operation not permitted",
        ),
        (
            "make a network namespace",
            "unshare -n true",
            "unshare(0x40000000): Operation not permitted",
        ),
    ] {
        let (out, code) = attempt(&mallory, script);
        assert_ne!(code, 0, "{what} succeeded: {out}");
        assert!(
            out.contains(refusal),
            "{what}: expected {refusal:?}, got {out}"
        );
    }
    // Seccomp is on (mode 2: a filter) and CAP_SYS_MODULE (bit 16 of the
    // effective set) is not held.
    let (out, code) = attempt(
        &mallory,
        "grep '^Seccomp:' /proc/self/status; awk '/CapEff/{print $2}' /proc/self/status",
    );
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["Seccomp:", "2"],
        "{out}"
    );
    let eff = u64::from_str_radix(lines[1].trim(), 16).expect("CapEff in hex");
    assert_ne!(
        eff, 0,
        "positive control: some capabilities are held: {out}"
    );
    assert_eq!(eff >> 16 & 1, 0, "CAP_SYS_MODULE held: {out}");
    // An exec is confined like the container.
    mallory.docker_ok(&["run", "-d", "--name", "box", "busybox", "sleep", "600"]);
    let status = mallory.docker_ok(&["exec", "box", "cat", "/proc/self/status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2')),
        "{status}"
    );
    let out = mallory.docker(&["exec", "box", "unshare", "-U", "true"]);
    assert!(!out.status.success(), "an exec made a user namespace");
    // Only its own processes are visible (pid namespace): the host's are not.
    let (out, code) = attempt(&mallory, "ls /proc | grep -c '^[0-9]'");
    assert_eq!(code, 0, "{out}");
    let n: u32 = out.trim().parse().unwrap_or(99);
    assert!(n <= 3, "sees {n} processes: {out}");
    let atoll_pid = a.pid().unwrap();
    let (_, code) = attempt(
        &mallory,
        &format!("test -e /proc/{atoll_pid}/cmdline && grep -q atoll /proc/{atoll_pid}/cmdline"),
    );
    assert_ne!(code, 0, "sees the host's atoll process");
    // Host bind mounts are refused before anything runs.
    let err = mallory.docker_err(&["run", "--rm", "-v", "/:/host", "busybox", "true"]);
    assert!(err.contains("not allowed"), "{err}");
}

#[test]
fn a_noisy_neighbour_does_not_hurt_the_other_tenant() {
    let a = AtollInstance::start();
    let mallory = a.tenant("mallory");
    let alice = a.tenant("alice");
    load_busybox(&mallory);
    load_busybox(&alice);
    alice.docker_ok(&["run", "-d", "--name", "calm", "busybox", "sleep", "600"]);

    // A process flood, held by its pids limit. (It runs as an exec: a shell
    // whose fork fails exits, and as the container's first process it would
    // take the container, and the flood, with it.)
    mallory.docker_ok(&[
        "run",
        "-d",
        "--name",
        "bomb",
        "--pids-limit",
        "200",
        "busybox",
        "sleep",
        "600",
    ]);
    mallory.docker_ok(&[
        "exec",
        "-d",
        "bomb",
        "sh",
        "-c",
        "while :; do sleep 600 & done",
    ]);
    // A memory hog, held (and killed) by its memory limit.
    mallory.docker_ok(&[
        "run",
        "-d",
        "--name",
        "hog",
        "-m",
        "64m",
        "--memory-swap",
        "64m",
        "busybox",
        "sh",
        "-c",
        "tail /dev/zero",
    ]);
    testkit::wait_for(
        || mallory.docker_ok(&["inspect", "-f", "{{.State.OOMKilled}}", "hog"]) == "true",
        Duration::from_secs(60),
        "the hog killed by its memory limit",
    );
    // (`top` asks the server: an exec into the bomb may find no pid free.)
    testkit::wait_for(
        || mallory.docker_ok(&["top", "bomb"]).lines().count() > 150,
        Duration::from_secs(30),
        "the flood to fill its pids limit",
    );
    let pids = mallory.docker_ok(&["top", "bomb"]).lines().count() - 1;
    assert!(pids <= 200, "the bomb has {pids} processes");

    // The neighbour answers promptly throughout.
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(alice.docker_ok(&["exec", "calm", "echo", "fine"]), "fine");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "exec took {:?}",
            t.elapsed()
        );
    }
    assert_eq!(
        alice.docker_ok(&["inspect", "-f", "{{.State.Status}}", "calm"]),
        "running"
    );
    mallory.docker_ok(&["rm", "-f", "bomb", "hog"]);
}

/// The host's view of a file's owner.
fn host_uid(p: &std::path::Path) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(p).unwrap())
}

#[test]
fn container_root_is_not_host_root() {
    let a = AtollInstance::start();
    let alice = a.tenant("alice");
    let bob = a.tenant("bob");
    load_busybox(&alice);
    // Each account has its own range of host ids, recorded by the head.
    let ranges = testkit::json(&a.operator_ok(&["account", "ls", "--json"]));
    let base = |name: &str| -> u32 {
        let acc = ranges
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {ranges}"));
        assert_eq!(acc["userns"]["size"], 65536, "{acc}");
        acc["userns"]["host_base"].as_u64().unwrap() as u32
    };
    let (alice_base, bob_base) = (base("alice"), base("bob"));
    assert!(alice_base >= 65536 && bob_base >= 65536);
    assert!(alice_base.abs_diff(bob_base) >= 65536, "ranges overlap");
    let in_alices = |uid: u32| (alice_base..alice_base + 65536).contains(&uid);
    load_busybox(&bob);
    let bobs = bob.docker_ok(&["run", "--rm", "busybox", "cat", "/proc/self/uid_map"]);
    assert_eq!(
        bobs.split_whitespace().collect::<Vec<_>>(),
        ["0", &bob_base.to_string(), "65536"]
    );

    // Root inside, alice's base outside.
    alice.docker_ok(&["volume", "create", "data"]);
    let out = alice.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "data:/d",
        "busybox",
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; echo mine > /d/marker; stat -c %u /bin/busybox",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "{out}");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(map, ["0", &alice_base.to_string(), "65536"], "{out}");
    // The image's files (one shared copy on the server) are root's inside.
    assert_eq!(lines[2], "0", "{out}");
    // Without a network too (runc makes the user namespace then).
    let isolated = alice.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "cat /proc/self/uid_map; ls /sys/class/net",
    ]);
    assert!(isolated.contains(&alice_base.to_string()), "{isolated}");
    assert_eq!(isolated.lines().last(), Some("lo"), "{isolated}");
    // Its own sysfs: only its own interfaces, none of the server's.
    let sys = alice.docker_ok(&["run", "--rm", "busybox", "ls", "/sys/class/net"]);
    assert_eq!(
        sys.split_whitespace().collect::<Vec<_>>(),
        ["eth0", "lo"],
        "{sys}"
    );
    let marker = testkit::find_file(a.data_dir(), "marker").expect("the volume's file on the host");
    assert!(in_alices(host_uid(&marker)), "{}", host_uid(&marker));
    assert!(in_alices(host_uid(marker.parent().unwrap())));

    // A file only the host's root may read, placed where her root can reach.
    let secret = marker.with_file_name("secret");
    std::fs::write(&secret, "host secret\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = alice.docker(&[
        "run",
        "--rm",
        "-v",
        "data:/d",
        "busybox",
        "cat",
        "/d/secret",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "container root read the host's file");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(
        alice.docker_ok(&[
            "run",
            "--rm",
            "-v",
            "data:/d",
            "busybox",
            "cat",
            "/d/marker"
        ]),
        "mine"
    );

    // Seen from the host, her processes run as her range's ids; an exec too.
    alice.docker_ok(&["run", "-d", "--name", "box", "busybox", "sleep", "600"]);
    let pid = alice.docker_ok(&["inspect", "-f", "{{.State.Pid}}", "box"]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    for uid in uids.split_whitespace().skip(1) {
        assert_eq!(uid.parse::<u32>().unwrap(), alice_base, "{uids}");
    }
    let out = alice.docker_ok(&["exec", "box", "sh", "-c", "id -u; cat /proc/self/uid_map"]);
    assert!(out.starts_with("0\n"), "{out}");
    assert!(out.contains(&alice_base.to_string()), "{out}");

    // Files copied in, changed, committed and exported keep their
    // in-container owners (not the host's shifted ids).
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("note"), "hello\n").unwrap();
    alice.docker_ok(&[
        "cp",
        &tmp.path().join("note").to_string_lossy(),
        "box:/note",
    ]);
    alice.docker_ok(&[
        "exec",
        "box",
        "sh",
        "-c",
        "echo x > /made && chown 1234:1234 /made",
    ]);
    assert_eq!(
        alice.docker_ok(&["exec", "box", "stat", "-c", "%u %g", "/note", "/made"]),
        "0 0\n1234 1234"
    );
    let listing = |args: &[&str]| -> String {
        let out = alice.docker_command(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut tar = std::process::Command::new("tar")
            .args(["-tv", "--numeric-owner", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        tar.stdin.take().unwrap().write_all(&out.stdout).unwrap();
        String::from_utf8_lossy(&tar.wait_with_output().unwrap().stdout).into_owned()
    };
    let copied = listing(&["cp", "box:/made", "-"]);
    assert!(copied.contains(" 1234/1234 "), "{copied}");
    let exported = listing(&["export", "box"]);
    let line = |name: &str| {
        exported
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not exported: {exported}"))
            .to_string()
    };
    assert!(line(" made").contains(" 1234/1234 "), "{}", line(" made"));
    assert!(
        line(" bin/busybox").contains(" 0/0 "),
        "{}",
        line(" bin/busybox")
    );
    // Across a restart of atoll (the container keeps running), a stop and a
    // start (a new user and network namespace), the mapping and files hold.
    let mut a = a;
    a.restart();
    let mut alice = alice;
    alice.set_address(&a.tls_address());
    let out = alice.docker_ok(&["exec", "box", "cat", "/proc/self/uid_map", "/made"]);
    assert!(
        out.contains(&alice_base.to_string()) && out.ends_with('x'),
        "{out}"
    );
    alice.docker_ok(&["restart", "-t", "0", "box"]);
    let out = alice.docker_ok(&[
        "exec",
        "box",
        "sh",
        "-c",
        "stat -c %u /made; cat /proc/1/uid_map",
    ]);
    assert!(
        out.starts_with("1234\n") && out.contains(&alice_base.to_string()),
        "{out}"
    );
    alice.docker_ok(&["commit", "box", "mine:1"]);
    assert_eq!(
        alice.docker_ok(&[
            "run", "--rm", "mine:1", "stat", "-c", "%u", "/made", "/note"
        ]),
        "1234\n0"
    );
    alice.docker_ok(&["rm", "-f", "box"]);
}

#[test]
fn a_disk_filler_hits_its_package_size_not_the_servers_disk() {
    // Containers' writable layers are limited where the server's filesystem
    // can (btrfs quota groups): a server whose data dir is on btrfs.
    let fs = testkit::BtrfsMount::new(16 << 10); // sparse: room for the default package
    let a = AtollInstance::start_with(testkit::StartOptions {
        data_dir: Some(fs.path().join("d")),
        ..Default::default()
    });
    a.operator_ok(&[
        "package", "create", "tiny", "--memory", "64M", "--disk", "32M",
    ]);
    let mallory = a.tenant("mallory");
    let alice = a.tenant("alice");
    load_busybox(&mallory);
    load_busybox(&alice);
    alice.docker_ok(&["run", "-d", "--name", "calm", "busybox", "sleep", "600"]);
    let out = mallory.docker(&[
        "run",
        "--label",
        "com.joyent.package=tiny",
        "--name",
        "filler",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/fill",
        "bs=1M",
        "count=200",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the filler wrote 200 MB: {err}");
    assert!(err.contains("Disk quota exceeded"), "{err}");
    // What it managed to write stays within its package's disk.
    let written = std::fs::metadata(
        testkit::find_file(&fs.path().join("d"), "fill").expect("the filler's file"),
    )
    .unwrap()
    .len();
    assert!(
        (16 << 20..=32 << 20).contains(&written),
        "wrote {written} bytes"
    );
    // The neighbour writes on as before.
    alice.docker_ok(&[
        "exec",
        "calm",
        "dd",
        "if=/dev/zero",
        "of=/data",
        "bs=1M",
        "count=64",
    ]);
    assert_eq!(
        alice.docker_ok(&["exec", "calm", "stat", "-c", "%s", "/data"]),
        (64u64 << 20).to_string()
    );
    mallory.docker_ok(&["rm", "-f", "filler"]);
    alice.docker_ok(&["rm", "-f", "calm"]);

    // A volume holds its size, not the server's disk.
    mallory.docker_ok(&["volume", "create", "--opt", "size=16M", "bounded"]);
    let out = mallory.docker(&[
        "run",
        "--rm",
        "-v",
        "bounded:/v",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/v/vfill",
        "bs=1M",
        "count=64",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Disk quota exceeded"), "{err}");
    let written = std::fs::metadata(
        testkit::find_file(&fs.path().join("d"), "vfill").expect("the volume's file"),
    )
    .unwrap()
    .len();
    assert!(
        (8 << 20..=16 << 20).contains(&written),
        "wrote {written} bytes"
    );
}

#[test]
fn tenants_cannot_reach_each_others_containers_on_a_server() {
    let a = AtollInstance::start();
    let alice = a.tenant("alice");
    let bob = a.tenant("bob");
    load_busybox(&alice);
    load_busybox(&bob);
    a.load_busybox();
    alice.docker_ok(&[
        "run", "-d", "--name", "srv", "busybox", "nc", "-ll", "-p", "8000", "-e", "echo", "hi",
    ]);
    // Bob's own network has the same subnet: his first container gets the
    // very address of alice's server.
    bob.docker_ok(&[
        "run", "-d", "--name", "decoy", "busybox", "nc", "-ll", "-p", "8000", "-e", "echo", "bob",
    ]);
    let ip = alice.docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "srv"]);
    assert!(!ip.is_empty());
    assert_eq!(
        bob.docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "decoy"]),
        ip
    );
    let probe = format!("nc -w 2 {ip} 8000 </dev/null");
    let ping = format!("ping -c 1 -W 1 {ip}");
    // Her own containers reach it (same server, same bridge)...
    testkit::wait_for(
        || attempt(&alice, &probe).0.trim() == "hi",
        Duration::from_secs(10),
        "alice's server to answer alice",
    );
    // (A fresh container's first echo can be slow under load: retried.)
    testkit::wait_for(
        || attempt(&alice, &ping).1 == 0,
        Duration::from_secs(20),
        "alice's ping to answer",
    );
    // ...bob's reach his own container at that address, never hers...
    testkit::wait_for(
        || attempt(&bob, &probe).0.trim() == "bob",
        Duration::from_secs(10),
        "bob's decoy to answer bob",
    );
    assert!(!attempt(&bob, &probe).0.contains("hi"));
    // ...and the operator's nothing (its first container holds the address
    // itself, with nothing listening).
    let o = a.docker(&["run", "--rm", "busybox", "sh", "-c", &probe]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !out.contains("hi") && !o.status.success(),
        "the operator reached alice: {out}"
    );
    alice.docker_ok(&["rm", "-f", "srv"]);
    bob.docker_ok(&["rm", "-f", "decoy"]);
}

/// A tree nested as deep as paths allow (about 2000 levels) once aborted the
/// server on a stack overflow when exported; now every walk of a container's
/// tree (export, cp, diff, commit) stops at its depth bound with an error,
/// and the server keeps serving. Control: the same walks of a tree within the
/// bound succeed.
#[test]
fn deep_directory_trees_are_refused_not_fatal() {
    let a = AtollInstance::start();
    let t = a.tenant("mallory");
    load_busybox(&t);
    let nest = |name: &str, levels: &str| {
        t.docker_ok(&[
            "run",
            "-d",
            "--name",
            name,
            "busybox",
            "sh",
            "-c",
            &format!(
                "cd /tmp; i=0; while [ $i -lt {levels} ] && mkdir d 2>/dev/null && cd d; do i=$((i+1)); done; echo depth=$i; sleep 600"
            ),
        ]);
        testkit::wait_for_some(
            || {
                let logs = t.docker_ok(&["logs", name]);
                logs.strip_prefix("depth=").map(|d| d.trim().to_string())
            },
            Duration::from_secs(60),
            "the tree to be made",
        )
    };
    assert_eq!(nest("shallow", "200"), "200");
    let deep: usize = nest("deep", "100000").parse().unwrap();
    assert!(deep > 1500, "only {deep} levels");

    // Control: within the bound, every walk works.
    assert!(t.docker_ok(&["diff", "shallow"]).contains("A /tmp/d/d/d"));
    let export = t.docker(&["export", "shallow"]);
    assert!(export.status.success() && export.stdout.len() > 100_000);
    t.docker_ok(&["commit", "shallow", "shallow-img"]);
    t.docker_ok(&["cp", "shallow:/tmp", "-"]);

    let bound = "nested deeper than 256 levels";
    let err = t.docker_err(&["diff", "deep"]);
    assert!(err.contains(bound), "{err}");
    // A layer cut short is an error, not half a layer taken for a whole one.
    t.docker_err(&["commit", "deep", "deep-img"]);
    t.docker_err(&["image", "inspect", "deep-img"]);
    let export = t.docker(&["export", "deep"]);
    assert!(!export.status.success(), "a deep export cannot be whole");
    let cp = t.docker(&["cp", "deep:/tmp", "-"]);
    assert!(!cp.status.success(), "a deep copy cannot be whole");
    // The server is still there, and so are the containers.
    assert_eq!(
        t.docker_ok(&["inspect", "-f", "{{.State.Status}}", "deep"]),
        "running"
    );
    assert!(t.docker_ok(&["diff", "shallow"]).contains("A /tmp/d"));
    // And it goes away whole.
    t.docker_ok(&["rm", "-f", "deep"]);
    assert!(
        !t.docker_ok(&["ps", "-a", "--format", "{{.Names}}"])
            .contains("deep")
    );
}
