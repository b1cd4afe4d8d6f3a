//! A tenant attacking the server through atoll's own paths: the agent's file
//! operations on its container (`docker cp` both ways, `-u name`), the layer
//! store and container directories on the server's disk, its package's
//! limits, and `docker top`. Over TLS with the real docker CLI. Every refusal
//! is asserted on its text, next to a positive control showing the attack
//! really ran (the swap loop swapped, the FIFO is there, the host process
//! exists).

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use testkit::{AtollInstance, Tenant, test_images};

fn load_busybox(t: &Tenant) {
    let path = test_images().busybox.path.to_string_lossy().into_owned();
    t.docker_ok(&["load", "-i", &path]);
}

/// A root filesystem tar: static busybox with the applets the scripts use,
/// then whatever `extra` appends.
fn rootfs_tar(extra: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, p, std::io::empty()).expect("dir");
    };
    for d in ["bin", "etc", "tmp", "data", "dst", "proc", "sys", "dev"] {
        dir(&mut b, d);
    }
    let busybox = std::fs::read(testkit::testimages::busybox_binary()).expect("busybox");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    b.append_data(&mut h, "bin/busybox", &busybox[..])
        .expect("busybox");
    for applet in [
        "sh", "mv", "ln", "rm", "sleep", "cat", "ls", "stat", "true", "id", "echo", "test",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("applet");
    }
    extra(&mut b);
    b.into_inner().expect("tar")
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).expect("file");
}

fn special(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, dev: (u32, u32)) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o666);
    h.set_size(0);
    h.set_device_major(dev.0).expect("major");
    h.set_device_minor(dev.1).expect("minor");
    b.append_data(&mut h, path, std::io::empty())
        .expect("special");
}

fn import(t: &Tenant, tar: &[u8], name: &str) {
    let out = t.docker_stdin(&["import", "-", name], Some(tar));
    testkit::instance::expect_success(&["import"], &out);
}

/// The device of the server's root filesystem as a block device if it is
/// one, else /dev/zero: what a planted node would stream.
fn host_device() -> (tar::EntryType, (u32, u32)) {
    let dev = std::fs::metadata("/").expect("/").dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    if major != 0 {
        (tar::EntryType::Block, (major, minor))
    } else {
        (tar::EntryType::Char, (1, 5))
    }
}

#[test]
fn cp_out_never_reads_a_device_swapped_in_for_a_file() {
    let a = AtollInstance::start();
    let mallory = a.tenant("mallory");
    let (kind, dev) = host_device();
    let content = vec![b'A'; 256 * 1024];
    let tar = rootfs_tar(|b| {
        file(b, "data/file", 0o644, &content);
        special(b, "data/dev", kind, dev);
    });
    import(&mallory, &tar, "planted:1");
    // The container swaps the file and the device node as fast as it can.
    mallory.docker_ok(&[
        "run",
        "-d",
        "--name",
        "swapper",
        "planted:1",
        "sh",
        "-c",
        "while :; do mv /data/file /data/t; mv /data/dev /data/file; mv /data/file /data/dev; mv /data/t /data/file; done",
    ]);
    let (mut regular, mut device, mut missing) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline && (regular < 5 || device < 5 || regular + device < 40) {
        let out = mallory.docker(&["cp", "swapper:/data/file", "-"]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            // Missing at the moment of the copy, or swapped under it: a
            // copy the agent refuses ends in an error (the stream cut,
            // mid-way or before its first byte), never in a tar that looks
            // whole.
            assert!(
                err.contains("Could not find the file")
                    || err.contains("No such")
                    || err.contains("unexpected EOF")
                    || err.contains("connection closed before message completed"),
                "unexpected cp failure: {err}"
            );
            missing += 1;
            continue;
        }
        let mut ar = tar::Archive::new(&out.stdout[..]);
        for e in ar.entries().expect("tar") {
            let mut e = e.expect("entry");
            match e.header().entry_type() {
                tar::EntryType::Regular => {
                    let mut got = Vec::new();
                    e.read_to_end(&mut got).expect("read");
                    assert!(
                        got.len() == content.len() && got.iter().all(|&c| c == b'A'),
                        "a copy carried bytes that are not the file's ({} bytes)",
                        got.len()
                    );
                    regular += 1;
                }
                t if t == kind => {
                    // Described as a device, never read: no data in the tar.
                    assert_eq!(e.header().size().expect("size"), 0);
                    device += 1;
                }
                t => panic!("unexpected entry type {t:?}"),
            }
        }
    }
    // Positive control: the swap really ran under the copies (both kinds were
    // seen at the name).
    assert!(
        regular > 0 && device > 0,
        "the race did not happen: {regular} regular, {device} device, {missing} missing"
    );
    // The neighbour-visible effect of a device read would be gigabytes; the
    // agent is still well.
    mallory.docker_ok(&["rm", "-f", "swapper"]);
}

#[test]
fn cp_in_never_changes_a_host_file_through_a_swapped_symlink() {
    let a = AtollInstance::start();
    let mallory = a.tenant("mallory");
    load_busybox(&mallory);
    // A host file the tenant aims at: its mode must stay 0600.
    let victim_dir = tempfile::tempdir().expect("tempdir");
    let victim = victim_dir.path().join("victim");
    std::fs::write(&victim, "host secret\n").expect("victim");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let target = victim.to_string_lossy().into_owned();
    let script = format!("mkdir -p /dst; while :; do rm -f /dst/f; ln -s {target} /dst/f; done");
    mallory.docker_ok(&[
        "run", "-d", "--name", "swapper", "busybox", "sh", "-c", &script,
    ]);
    // A tar whose one file asks for mode 0777.
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "f", 0o777, &vec![b'x'; 512 * 1024]);
    let upload = b.into_inner().expect("tar");
    let (mut ok, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline && ok + refused < 30 {
        let out = mallory.docker_stdin(&["cp", "-", "swapper:/dst"], Some(&upload));
        if out.status.success() {
            ok += 1;
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("changed while it was being copied")
                    || err.contains("File exists")
                    || err.contains("No such file"),
                "unexpected cp failure: {err}"
            );
            refused += 1;
        }
    }
    assert!(ok + refused >= 5, "too few copies: {ok} + {refused}");
    // Positive control: the loop keeps swapping the name for a symlink to
    // the host file.
    let seen = mallory.docker_ok(&[
        "exec",
        "swapper",
        "sh",
        "-c",
        "for i in $(seq 1000); do readlink /dst/f && break; done",
    ]);
    assert_eq!(seen, target);
    let mode = std::fs::metadata(&victim)
        .expect("victim")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o600, "the host file's mode changed");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read"),
        "host secret\n"
    );
    // Device nodes are not copied into a tenant's container at all.
    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "disk", tar::EntryType::Block, (8, 0));
    let err = mallory.docker_stdin(
        &["cp", "-", "swapper:/tmp"],
        Some(&b.into_inner().expect("tar")),
    );
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr)
            .contains("device nodes cannot be copied into a container: disk"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
    mallory.docker_ok(&["rm", "-f", "swapper"]);
}

#[test]
fn hostile_user_databases_are_refused_without_stalling_anyone() {
    let a = AtollInstance::start();
    let mallory = a.tenant("mallory");
    let alice = a.tenant("alice");
    load_busybox(&alice);
    let tar = rootfs_tar(|b| special(b, "etc/passwd", tar::EntryType::Fifo, (0, 0)));
    import(&mallory, &tar, "fifo:1");
    let zero = rootfs_tar(|b| {
        file(b, "etc/passwd", 0o644, b"web:x:1000:1000::/:/bin/sh\n");
        special(b, "etc/group", tar::EntryType::Char, (1, 5));
    });
    import(&mallory, &zero, "zero:1");
    let linked = rootfs_tar(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "etc/passwd", "../../../../../../etc/shadow")
            .expect("link");
    });
    import(&mallory, &linked, "linked:1");
    // Positive control: the FIFO is really there.
    mallory.docker_ok(&["create", "--name", "probe", "fifo:1", "true"]);
    let out = mallory.docker(&["cp", "probe:/etc/passwd", "-"]);
    let mut ar = tar::Archive::new(&out.stdout[..]);
    let kinds: Vec<_> = ar
        .entries()
        .expect("tar")
        .map(|e| e.expect("entry").header().entry_type())
        .collect();
    assert_eq!(kinds, [tar::EntryType::Fifo]);

    let started = Instant::now();
    let err = mallory.docker_err(&["run", "--rm", "-u", "web", "fifo:1", "true"]);
    assert!(
        err.contains("unable to read the user database: /etc/passwd is not a regular file"),
        "{err}"
    );
    // A device as the group file (it would read zeros until memory ran out).
    let err = mallory.docker_err(&["run", "--rm", "-u", "web", "zero:1", "true"]);
    assert!(
        err.contains("unable to read the user database: /etc/group is not a regular file"),
        "{err}"
    );
    // And through an exec of a running container, a FIFO planted by cp.
    load_busybox(&mallory);
    mallory.docker_ok(&["run", "-d", "--name", "up", "busybox", "sleep", "600"]);
    let mut b = tar::Builder::new(Vec::new());
    special(&mut b, "group", tar::EntryType::Fifo, (0, 0));
    let out = mallory.docker_stdin(&["cp", "-", "up:/etc"], Some(&b.into_inner().expect("tar")));
    testkit::instance::expect_success(&["cp"], &out);
    let listed = mallory.docker_ok(&["exec", "up", "stat", "-c", "%F", "/etc/group"]);
    assert_eq!(listed, "fifo");
    let err = mallory.docker_err(&["exec", "-u", "nobody", "up", "true"]);
    assert!(err.contains("/etc/group is not a regular file"), "{err}");
    // The neighbour was never stalled.
    alice.docker_ok(&["run", "--rm", "busybox", "true"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // A symlink out of the rootfs resolves inside it: the host's root user is
    // not found (positive control: the host has one).
    assert!(
        std::fs::read_to_string("/etc/passwd")
            .expect("passwd")
            .starts_with("root:")
    );
    let err = mallory.docker_err(&["run", "--rm", "-u", "root", "linked:1", "true"]);
    assert!(
        err.contains("unable to find user root: no matching entries in passwd file"),
        "{err}"
    );
}

#[test]
fn the_package_is_a_ceiling_for_tenants() {
    let a = AtollInstance::start();
    let mallory = a.tenant("mallory");
    load_busybox(&mallory);
    let pkg = "sample-512M";
    for (args, text) in [
        (
            vec!["--pids-limit", "4000000"],
            format!("--pids-limit 4000000 is above the limit of package {pkg} (4096)"),
        ),
        (
            vec!["--cpu-shares", "262144"],
            format!("--cpu-shares 262144 is above the limit of package {pkg} (512)"),
        ),
        (
            vec!["--cpus", "2"],
            format!("--cpus 2.00 CPUs is above the limit of package {pkg} (1.00 CPUs)"),
        ),
        (
            vec!["--memory-swap", "-1"],
            format!("--memory-swap -1 (unlimited) is above the limit of package {pkg}"),
        ),
        (
            vec!["--ulimit", "rtprio=99"],
            format!("--ulimit rtprio 99 is above the limit of package {pkg} (0)"),
        ),
        (
            vec!["--ulimit", "nofile=99999999"],
            format!("--ulimit nofile 99999999 is above the limit of package {pkg} (1048576)"),
        ),
    ] {
        let mut cmd = vec!["run", "--rm"];
        cmd.extend(args.iter().copied());
        cmd.extend(["busybox", "true"]);
        let err = mallory.docker_err(&cmd);
        assert!(err.contains(&text), "{args:?}: {err}");
        assert!(err.contains("Error response from daemon"), "{err}");
    }
    // Nothing was left behind by the refusals.
    assert_eq!(mallory.docker_ok(&["ps", "-aq"]), "");
    // Positive controls: lower limits, and ulimits, apply.
    let out = mallory.docker_ok(&[
        "run",
        "--rm",
        "--pids-limit",
        "100",
        "--ulimit",
        "nofile=1024:2048",
        "busybox",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids/pids.max; ulimit -n; ulimit -Hn",
    ]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["100", "1024", "2048"]
    );
    // docker update is bounded the same way.
    mallory.docker_ok(&["run", "-d", "--name", "box", "busybox", "sleep", "600"]);
    let err = mallory.docker_err(&["update", "--cpu-shares", "262144", "box"]);
    assert!(
        err.contains("--cpu-shares 262144 is above the limit"),
        "{err}"
    );
    let err = mallory.docker_err(&["update", "--pids-limit", "4000000", "box"]);
    assert!(
        err.contains("--pids-limit 4000000 is above the limit"),
        "{err}"
    );
    mallory.docker_ok(&["update", "--pids-limit", "50", "box"]);
    assert_eq!(
        mallory.docker_ok(&["exec", "box", "cat", "/sys/fs/cgroup/pids/pids.max"]),
        "50"
    );
    // The operator is not bounded by packages.
    a.load_busybox();
    a.docker_ok(&["run", "--rm", "--pids-limit", "100000", "busybox", "true"]);
}

#[test]
fn top_shows_the_containers_processes_only() {
    let a = AtollInstance::start();
    let mallory = a.tenant("mallory");
    load_busybox(&mallory);
    mallory.docker_ok(&["run", "-d", "--name", "box", "busybox", "sleep", "777"]);
    // A process of the server with a recognisable command line.
    let mut host = std::process::Command::new("sleep")
        .arg("4242.5")
        .spawn()
        .expect("sleep");
    let cmdline = format!("/proc/{}/cmdline", host.id());
    testkit::wait_for(
        || std::fs::read(&cmdline).is_ok_and(|c| String::from_utf8_lossy(&c).contains("4242.5")),
        Duration::from_secs(10),
        "the server's process to run",
    );
    for args in [
        vec![],
        vec!["aux"],
        vec!["-ef"],
        vec!["-eo", "pid,args"],
        vec!["-A", "-o", "pid=PID,ppid,args"],
        vec!["-p", "1", "-o", "pid,args"],
    ] {
        let mut cmd = vec!["top", "box"];
        cmd.extend(args.iter().copied());
        let out = mallory.docker_ok(&cmd);
        assert!(out.contains("sleep 777"), "{args:?}: {out}");
        assert!(
            !out.contains("4242.5"),
            "{args:?} shows a server process: {out}"
        );
        assert_eq!(out.lines().count(), 2, "{args:?}: {out}");
    }
    let err = mallory.docker_err(&["top", "box", "--sort=pid"]);
    assert!(err.contains("unsupported option --sort=pid"), "{err}");
    let _ = host.kill();
    let _ = host.wait();
}

/// Runs `argv` as the server's `nobody`.
fn as_nobody(argv: &[&str]) -> (String, i32) {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .args(argv)
        .output()
        .expect("setpriv");
    testkit::combined(&out)
}

#[test]
fn tenant_files_are_out_of_reach_of_the_servers_users() {
    let a = AtollInstance::start();
    let mallory = a.tenant("mallory");
    let busybox = std::fs::read(testkit::testimages::busybox_binary()).expect("busybox");
    let tar = rootfs_tar(|b| file(b, "bin/rootshell", 0o4755, &busybox));
    import(&mallory, &tar, "suid:1");
    let id = mallory.docker_ok(&["run", "-d", "suid:1", "sleep", "600"]);
    let agent = a.data_dir().join("agent");
    // Positive control: the setuid-root file is on the server's disk.
    let in_layer =
        testkit::find_file(&agent.join("layers"), "rootshell").expect("the layer holds it");
    let md = std::fs::metadata(&in_layer).expect("stat");
    assert_eq!((md.uid(), md.mode() & 0o7777), (0, 0o4755));
    let in_rootfs = agent
        .join("containers")
        .join(&id)
        .join("rootfs/bin/rootshell");
    assert!(in_rootfs.exists());
    for p in [&in_layer, &in_rootfs] {
        let (out, code) = as_nobody(&["stat", "-c", "%a", &p.to_string_lossy()]);
        assert_ne!(code, 0, "{}: {out}", p.display());
        assert!(out.contains("Permission denied"), "{}: {out}", p.display());
    }
    // Positive control for the refusal: nobody can stat a path it may reach.
    let (out, code) = as_nobody(&["stat", "-c", "%a", "/tmp"]);
    assert_eq!((out.trim(), code), ("1777", 0));
    // The container still runs from there (its root reaches its rootfs).
    assert_eq!(mallory.docker_ok(&["exec", &id, "id", "-u"]), "0");
    // The sockets are root's alone (the docker socket: and its group's).
    for s in [a.socket().to_path_buf(), agent.join("agent.sock")] {
        let mode = std::fs::metadata(&s).expect("socket").mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "{}: {mode:o}", s.display());
    }
    let logs = agent.join("containers").join(&id);
    let (out, _) = as_nobody(&["ls", &logs.to_string_lossy()]);
    assert!(out.contains("Permission denied"), "{out}");
}

/// `nc` from a container of `t` to `addr`: its output and exit code.
fn connect_from_container(t: &Tenant, name: &str, addr: &str) -> (String, i32) {
    let (host, port) = addr.rsplit_once(':').expect("ADDR:PORT");
    let out = t.docker(&[
        "exec",
        name,
        "sh",
        "-c",
        &format!("echo | nc -w 2 {host} {port}"),
    ]);
    testkit::combined(&out)
}

#[test]
fn containers_reach_no_server_and_no_head() {
    let a = AtollInstance::start_with(testkit::StartOptions {
        args: vec!["--nodes".into(), "2".into()],
        ..Default::default()
    });
    let mallory = a.tenant("mallory");
    load_busybox(&mallory);
    let servers = testkit::json(&a.operator_ok(&["server", "ls", "--json"]));
    let agents: Vec<String> = servers
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            let addr = s["address"].as_str().expect("address");
            addr.trim_start_matches("tcp://").to_string()
        })
        .collect();
    assert_eq!(agents.len(), 2, "{servers}");
    // The head's cluster port is on the underlay bridge's first address.
    let underlay_host = agents[0].rsplit_once(':').expect("port").0;
    let mut octets: Vec<&str> = underlay_host.split('.').collect();
    octets[3] = "1";
    let head = format!("{}:7071", octets.join("."));
    let public = testkit::json(&a.operator_ok(&["network", "public", "--json"]));
    let gateway = public["gateway"].as_str().expect("gateway").to_string();
    let world = std::net::TcpListener::bind((gateway.as_str(), 0)).expect("listen");
    let world_addr = world.local_addr().expect("addr").to_string();
    world.set_nonblocking(true).expect("nonblocking");

    // One container on each server (spread).
    for n in ["m1", "m2"] {
        mallory.docker_ok(&["run", "-d", "--name", n, "busybox", "sleep", "600"]);
    }
    let node = |i: usize| a.data_dir().join(format!("nodes/node-{i}.netns"));
    for target in agents.iter().chain([&head]) {
        // Positive control: the port answers from the servers themselves.
        let (host, port) = target.rsplit_once(':').expect("port");
        let ok = std::process::Command::new("nsenter")
            .arg(format!("--net={}", node(1).display()))
            .args([
                "python3",
                "-c",
                &format!("import socket; socket.create_connection(('{host}', {port}), 2)"),
            ])
            .status()
            .expect("nsenter python3");
        assert!(ok.success(), "{target} does not answer from a server");
        for c in ["m1", "m2"] {
            let (out, code) = connect_from_container(&mallory, c, target);
            assert_ne!(code, 0, "{c} reached {target}: {out}");
            assert!(out.contains("timed out"), "{c} → {target}: {out}");
        }
    }
    // Positive control: the containers do reach the world (which hangs up
    // at once, so nc ends).
    let acceptor = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut accepted = 0;
        while accepted < 2 && Instant::now() < deadline {
            match world.accept() {
                Ok(_) => accepted += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        accepted
    });
    for c in ["m1", "m2"] {
        // A loaded machine may miss one 2 s window; the control polls.
        let mut tries = 0;
        let (out, code) = loop {
            tries += 1;
            let (out, code) = connect_from_container(&mallory, c, &world_addr);
            if code == 0 || tries == 5 {
                break (out, code);
            }
        };
        assert_eq!(code, 0, "{c} cannot reach the world at {world_addr}: {out}");
    }
    let accepted = acceptor.join().expect("acceptor");
    assert_eq!(accepted, 2);

    vxlan_only_from_servers_of_the_network(&a, &mallory, &agents, &head);
}

/// Sends `count` VXLAN packets to `vtep` from `source` (an address of the
/// namespace `netns`, or of the test's own when None), each carrying an
/// Ethernet frame from `(src_mac, src_ip)` to `(dst_mac, dst_ip)`, UDP port 9
/// (no listener: the receiver counts it in Udp NoPorts).
#[allow(clippy::too_many_arguments)]
fn send_vxlan(
    netns: Option<&std::path::Path>,
    source: &str,
    vtep: &str,
    vni: u32,
    (src_mac, src_ip): (&str, &str),
    (dst_mac, dst_ip): (&str, &str),
    count: u32,
) {
    let script = format!(
        r#"
import socket, struct
def mac(m): return bytes(int(x, 16) for x in m.split(":"))
src, dst = socket.inet_aton("{src_ip}"), socket.inet_aton("{dst_ip}")
udp = struct.pack("!HHHH", 40000, 9, 8 + 6, 0) + b"forged"
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
s = sum(struct.unpack("!10H", ip)); s = (s & 0xffff) + (s >> 16); s = (s & 0xffff) + (s >> 16)
ip = ip[:10] + struct.pack("!H", ~s & 0xffff) + ip[12:]
frame = mac("{dst_mac}") + mac("{src_mac}") + b"\x08\x00" + ip + udp
vxlan = struct.pack("!II", 0x08000000, {vni} << 8)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("{source}", 0))
for _ in range({count}): sock.sendto(vxlan + frame, ("{vtep}", {port}))
"#,
        port = net::fabric::VXLAN_PORT
    );
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("python3");
            c
        }
        None => std::process::Command::new("python3"),
    };
    let out = cmd.args(["-c", &script]).output().expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Udp NoPorts of container `name` (datagrams to a port nobody listens on).
fn udp_no_ports(t: &Tenant, name: &str) -> u64 {
    let snmp = t.docker_ok(&["exec", name, "cat", "/proc/net/snmp"]);
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().expect("Udp names"),
        udp.next().expect("Udp values"),
    );
    let at = names
        .split_whitespace()
        .position(|n| n == "NoPorts")
        .expect("NoPorts");
    values
        .split_whitespace()
        .nth(at)
        .expect("value")
        .parse()
        .expect("number")
}

/// Forged VXLAN into a network: dropped from an underlay address that is not
/// a server of that network (the head's, here), taken from one that is.
fn vxlan_only_from_servers_of_the_network(
    a: &AtollInstance,
    mallory: &Tenant,
    agents: &[String],
    head: &str,
) {
    let placed = testkit::json(&a.operator_ok(&["container", "ls", "--json"]));
    let server_of = |name: &str| -> String {
        let row = placed
            .as_array()
            .expect("containers")
            .iter()
            .find(|c| c["name"].as_str().map(|n| n.trim_start_matches('/')) == Some(name))
            .unwrap_or_else(|| panic!("{name} not in {placed}"));
        row["server"].as_str().expect("server").to_string()
    };
    let servers = testkit::json(&a.operator_ok(&["server", "ls", "--json"]));
    let underlay_of = |server: &str| -> String {
        let s = servers
            .as_array()
            .expect("servers")
            .iter()
            .find(|s| s["id"] == server)
            .unwrap_or_else(|| panic!("{server} not in {servers}"));
        let addr = s["address"].as_str().expect("address");
        let host = addr
            .trim_start_matches("tcp://")
            .rsplit_once(':')
            .expect("port")
            .0;
        assert!(agents.iter().any(|a| a.starts_with(host)));
        host.to_string()
    };
    let (s1, s2) = (server_of("m1"), server_of("m2"));
    assert_ne!(s1, s2, "spread puts them apart");
    let endpoint = |name: &str| -> (String, String) {
        let i = testkit::json(&mallory.docker_ok(&["inspect", name]));
        let n = &i[0]["NetworkSettings"]["Networks"]["bridge"];
        (
            n["MacAddress"].as_str().expect("mac").to_string(),
            n["IPAddress"].as_str().expect("ip").to_string(),
        )
    };
    let (m1, m2) = (endpoint("m1"), endpoint("m2"));
    // The network's VNI names its segment's router namespace on m2's server.
    let node_dir = a.data_dir().join("nodes").join(&s2);
    let vni = segment_vnis(&node_dir);
    assert_eq!(vni.len(), 1, "one segment on {s2}: {vni:?}");
    let vni = vni[0];
    let (vtep1, vtep2) = (underlay_of(&s1), underlay_of(&s2));
    let node1_ns = a.data_dir().join(format!("nodes/{s1}.netns"));
    assert!(node1_ns.exists(), "{}", node1_ns.display());
    let stranger = head.rsplit_once(':').expect("port").0;

    let before = udp_no_ports(mallory, "m2");
    // From a stranger on the underlay, as if from m1: dropped at m2's server.
    let m1_pair = (m1.0.as_str(), m1.1.as_str());
    let m2_pair = (m2.0.as_str(), m2.1.as_str());
    send_vxlan(None, stranger, &vtep2, vni, m1_pair, m2_pair, 5);
    // Positive control, sent after: the same frames from m1's server arrive.
    send_vxlan(Some(&node1_ns), &vtep1, &vtep2, vni, m1_pair, m2_pair, 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = 0;
    while Instant::now() < deadline {
        got = udp_no_ports(mallory, "m2") - before;
        if got >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        got, 3,
        "the 3 frames from {s1} arrive, none of the 5 from {stranger}"
    );
}

/// The VNIs of the segments (router namespaces `seg-<vni>`) under `dir`.
fn segment_vnis(dir: &std::path::Path) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(vni) = name.strip_prefix("seg-").and_then(|v| v.parse().ok()) {
                found.push(vni);
            } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    found
}

/// A docker CLI process of `t` left running (a stream).
fn spawn_stream(t: &Tenant, args: &[&str]) -> std::process::Child {
    let mut cmd = t.docker_command(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().expect("docker stream")
}

/// Waits (bounded) for every stream to end; how long it took.
fn all_end(streams: &mut [(&str, std::process::Child)], within: Duration) -> Duration {
    let started = Instant::now();
    for (what, child) in streams.iter_mut() {
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if started.elapsed() > within {
                let _ = child.kill();
                panic!("the {what} stream was still open {within:?} after the refusal");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    started.elapsed()
}

#[test]
fn a_refused_account_loses_its_open_streams() {
    let a = AtollInstance::start();
    let alice = a.tenant("alice");
    load_busybox(&alice);
    alice.docker_ok(&[
        "run",
        "-d",
        "-i",
        "--name",
        "ticker",
        "busybox",
        "sh",
        "-c",
        "while :; do echo tick; sleep 0.2; done",
    ]);
    let open = |alice: &Tenant| {
        vec![
            ("logs -f", spawn_stream(alice, &["logs", "-f", "ticker"])),
            ("events", spawn_stream(alice, &["events"])),
            ("attach", spawn_stream(alice, &["attach", "ticker"])),
            (
                "exec -i",
                spawn_stream(alice, &["exec", "-i", "ticker", "cat"]),
            ),
        ]
    };
    let mut streams = open(&alice);
    // Positive control: the streams are open and flowing.
    let mut logs = streams[0].1.stdout.take().expect("stdout");
    let mut first = [0u8; 5];
    logs.read_exact(&mut first).expect("a line of logs");
    assert_eq!(&first, b"tick\n");
    std::thread::sleep(Duration::from_millis(500));
    for (what, child) in streams.iter_mut() {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{what} ended early"
        );
    }
    a.operator_ok(&["account", "disable", "alice"]);
    let took = all_end(&mut streams, Duration::from_secs(10));
    eprintln!("streams of a disabled account ended in {took:?}");
    a.operator_ok(&["account", "enable", "alice"]);

    // The same when the certificate is revoked.
    let mut streams = open(&alice);
    let mut logs = streams[0].1.stdout.take().expect("stdout");
    logs.read_exact(&mut first).expect("a line of logs");
    let certs = testkit::json(&a.operator_ok(&["account", "certs", "alice", "--json"]));
    let serial = certs[0]["serial"].as_str().expect("serial").to_string();
    a.operator_ok(&["account", "revoke", &serial]);
    let took = all_end(&mut streams, Duration::from_secs(10));
    eprintln!("streams of a revoked certificate ended in {took:?}");
    let err = alice.docker_err(&["ps"]);
    assert!(err.contains("certificate refused"), "{err}");
    // The container itself runs on (disabling stops no one's work).
    let all = a.operator_ok(&["container", "ls"]);
    assert!(all.contains("ticker") && all.contains("running"), "{all}");
}

/// Bytes under `dir` (files only).
fn disk_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => total += disk_bytes(&e.path()),
            Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => {}
        }
    }
    total
}

/// A tar holding one file of `mb` MiB of incompressible bytes.
fn noise_tar(mb: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..mb << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "noise", &data[..]).expect("noise");
    b.into_inner().expect("tar")
}

#[test]
fn an_accounts_storage_is_bounded() {
    let a = AtollInstance::start();
    a.operator_ok(&[
        "package", "create", "small", "--memory", "64M", "--disk", "64M",
    ]);
    let alice = a.tenant("alice");
    let bob = a.tenant("bob");
    a.operator_ok(&["account", "limit", "alice", "--storage", "200M"]);
    load_busybox(&alice);
    load_busybox(&bob);
    // 64 MB of writable layer and 4 MB of logs.
    let small = [
        "--label",
        "com.joyent.package=small",
        "--log-opt",
        "max-size=4m",
        "--log-opt",
        "max-file=1",
    ];
    let run = |t: &Tenant, name: &str, extra: &[&str]| {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend(small);
        args.extend(extra);
        args.extend(["busybox", "sleep", "600"]);
        t.docker(&args)
    };
    testkit::instance::expect_success(&["run"], &run(&alice, "c1", &[]));
    alice.docker_ok(&["volume", "create", "--opt", "size=100M", "v1"]);
    // Now about 170 MB of 200: the next container, volume and image do not fit.
    let (err, _) = testkit::combined(&run(&alice, "c2", &[]));
    assert!(
        err.contains("account limit reached: 200 MB of storage in all")
            && err.contains("this container needs 68 MB"),
        "{err}"
    );
    let err = alice.docker_err(&["volume", "create", "--opt", "size=50M", "v2"]);
    assert!(err.contains("this volume needs 50 MB"), "{err}");
    // An anonymous volume is a tenant's default size (10 GB).
    let (err, _) = testkit::combined(&run(&alice, "c3", &["-v", "/data"]));
    assert!(err.contains("this container needs 10"), "{err}");
    // The existing volume costs nothing again.
    alice.docker_ok(&["volume", "create", "--opt", "size=100M", "v1"]);
    let before = disk_bytes(a.data_dir());
    let tar = noise_tar(40, 7);
    let out = alice.docker_stdin(&["import", "-", "noise:1"], Some(&tar));
    let (err, _) = testkit::combined(&out);
    assert!(err.contains("this image needs 40"), "{err}");
    // What the refused import wrote is gone.
    let grown = disk_bytes(a.data_dir()).saturating_sub(before);
    assert!(grown < 8 << 20, "the refused import left {grown} bytes");
    // Nothing was created by the refusals.
    assert!(
        !alice
            .docker_ok(&["ps", "-a", "--format", "{{.Names}}"])
            .contains("c2")
    );
    assert_eq!(
        alice
            .docker_ok(&["volume", "ls", "-q"])
            .lines()
            .collect::<Vec<_>>(),
        ["v1"]
    );
    // Another account is not bounded by alice's limit.
    testkit::instance::expect_success(&["run"], &run(&bob, "b1", &["-v", "/data"]));

    // Positive controls: with room, the same requests pass.
    a.operator_ok(&["account", "limit", "alice", "--storage", "400M"]);
    import(&alice, &tar, "noise:1");
    assert!(disk_bytes(a.data_dir()) >= before + (40 << 20));
    testkit::instance::expect_success(&["run"], &run(&alice, "c2", &[]));
    alice.docker_ok(&["volume", "create", "--opt", "size=50M", "v2"]);
    // Growing into a larger package (sample-128M: 1280 MB of disk) counts too,
    // and changes nothing when refused.
    let err = alice.docker_err(&["update", "-m", "100m", "c1"]);
    assert!(err.contains("this container needs 1.2 GB"), "{err}");
    assert_eq!(
        alice.docker_ok(&["inspect", "-f", "{{.HostConfig.Memory}}", "c1"]),
        (64u64 << 20).to_string()
    );
    let accounts = testkit::json(&a.operator_ok(&["account", "ls", "--json"]));
    let held = accounts
        .as_array()
        .expect("accounts")
        .iter()
        .find(|x| x["name"] == "alice")
        .expect("alice")["storage"]
        .clone();
    assert_eq!(held["volumes"], 150u64 << 20, "{held}");
    assert_eq!(held["containers"], 2 * (68u64 << 20), "{held}");
    assert!(
        held["images"].as_u64().expect("images") > 40 << 20,
        "{held}"
    );

    // Bad sizes and options are refused as such.
    let err = alice.docker_err(&["volume", "create", "--opt", "size=lots", "v3"]);
    assert!(err.contains("invalid volume size \"lots\""), "{err}");
    let err = alice.docker_err(&["volume", "create", "--opt", "type=nfs", "v3"]);
    assert!(
        err.contains("volume option \"type\" is not supported: only size"),
        "{err}"
    );
}
