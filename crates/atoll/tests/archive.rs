//! `docker cp`, `export` and `diff` through the real docker CLI.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use testkit::AtollInstance;

fn started() -> AtollInstance {
    let a = AtollInstance::start();
    a.load_busybox();
    a
}

#[test]
fn cp_both_ways_keeps_modes_links_and_works_on_stopped_containers() {
    let a = started();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("dir");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "hello").unwrap();
    std::fs::set_permissions(src.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    a.docker_ok(&["run", "-d", "--name", "cpc", "busybox", "sleep", "1000"]);
    a.docker_ok(&["cp", src.to_str().unwrap(), "cpc:/tmp/"]);
    let ls = a.docker_ok(&["exec", "cpc", "ls", "-l", "/tmp/dir"]);
    assert!(
        ls.contains("-rw-r-----") && ls.contains("link -> a.txt"),
        "{ls}"
    );
    assert_eq!(
        a.docker_ok(&["exec", "cpc", "cat", "/tmp/dir/link"]),
        "hello"
    );
    // And back out, with a new name.
    let back = tmp.path().join("back");
    a.docker_ok(&["cp", "cpc:/tmp/dir", back.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(back.join("a.txt")).unwrap(),
        "hello"
    );
    assert_eq!(
        std::fs::metadata(back.join("a.txt")).unwrap().mode() & 0o777,
        0o640
    );
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap().to_str(),
        Some("a.txt")
    );
    // A single file to a new name, and `-` tar streams both ways.
    a.docker_ok(&[
        "cp",
        "cpc:/etc/passwd",
        tmp.path().join("pw").to_str().unwrap(),
    ]);
    assert!(
        std::fs::read_to_string(tmp.path().join("pw"))
            .unwrap()
            .contains("root:")
    );
    let out = Command::new(testkit::docker_cli())
        .args(["cp", "cpc:/etc/hostname", "-"])
        .env("DOCKER_HOST", a.docker_host())
        .output()
        .unwrap();
    let mut ar = tar::Archive::new(&out.stdout[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["hostname"]);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o600);
    h.set_uid(1234);
    h.set_gid(4321);
    b.append_data(&mut h, "owned.txt", &b"data"[..]).unwrap();
    let tarball = b.into_inner().unwrap();
    a.docker_stdin(&["cp", "-", "cpc:/tmp"], &tarball);
    assert_eq!(
        a.docker_ok(&["exec", "cpc", "stat", "-c", "%u:%g", "/tmp/owned.txt"]),
        "0:0"
    );
    a.docker_ok(&["exec", "cpc", "mkdir", "/srv"]);
    let out = a.docker_stdin(&["cp", "-a", "-", "cpc:/srv"], &tarball);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        a.docker_ok(&["exec", "cpc", "stat", "-c", "%u:%g %a", "/srv/owned.txt"]),
        "1234:4321 600"
    );

    let err = a.docker_err(&["cp", "cpc:/nonexistent", tmp.path().to_str().unwrap()]);
    assert!(
        err.contains("Could not find the file /nonexistent in container cpc"),
        "{err}"
    );
    let err = a.docker_err(&[
        "cp",
        src.join("a.txt").to_str().unwrap(),
        "cpc:/no/such/dir/",
    ]);
    assert!(!err.is_empty());

    // Stopped, and never started.
    a.docker_ok(&["stop", "-t", "0", "cpc"]);
    a.docker_ok(&[
        "cp",
        src.join("a.txt").to_str().unwrap(),
        "cpc:/tmp/while-stopped",
    ]);
    a.docker_ok(&[
        "cp",
        "cpc:/tmp/dir/a.txt",
        tmp.path().join("from-stopped").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("from-stopped")).unwrap(),
        "hello"
    );
    a.docker_ok(&["start", "cpc"]);
    assert_eq!(
        a.docker_ok(&["exec", "cpc", "cat", "/tmp/while-stopped"]),
        "hello"
    );
    a.docker_ok(&["create", "--name", "fresh", "busybox", "cat", "/seeded"]);
    a.docker_ok(&["cp", src.join("a.txt").to_str().unwrap(), "fresh:/seeded"]);
    assert_eq!(a.docker_ok(&["start", "-a", "fresh"]), "hello");
}

#[test]
fn cp_cannot_reach_host_files_through_container_symlinks() {
    let a = started();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("secret"), "host only").unwrap();
    let h = host.path().display().to_string();
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "evil",
        "busybox",
        "sh",
        "-c",
        "ln -s / /tmp/hostroot; ln -s ../../../../../.. /tmp/up; sleep 1000",
    ]);
    let tmp = tempfile::tempdir().unwrap();
    for via in [
        format!("/tmp/hostroot{h}/secret"),
        format!("/tmp/up{h}/secret"),
    ] {
        let out = a.docker(&["cp", &format!("evil:{via}"), tmp.path().to_str().unwrap()]);
        assert!(!out.status.success(), "read a host file through {via}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Could not find the file"));
    }
    // Writing through them lands in the container (or fails), never on the host.
    let f = tmp.path().join("planted");
    std::fs::write(&f, "x").unwrap();
    let _ = a.docker(&[
        "cp",
        f.to_str().unwrap(),
        &format!("evil:/tmp/hostroot{h}/"),
    ]);
    let _ = a.docker(&["cp", f.to_str().unwrap(), "evil:/tmp/up/tmp/"]);
    assert!(!host.path().join("planted").exists());
    assert!(!std::path::Path::new("/tmp/planted").exists());
    assert_eq!(a.docker_ok(&["exec", "evil", "cat", "/tmp/planted"]), "x");
}

#[test]
fn export_and_diff() {
    let a = started();
    a.docker_ok(&[
        "run",
        "--name",
        "ch",
        "busybox",
        "sh",
        "-c",
        "echo new > /tmp/added; rm /etc/group; echo x >> /etc/passwd",
    ]);
    let diff = a.docker_ok(&["diff", "ch"]);
    let lines: Vec<&str> = diff.lines().collect();
    for want in [
        "C /etc",
        "D /etc/group",
        "C /etc/passwd",
        "C /tmp",
        "A /tmp/added",
    ] {
        assert!(lines.contains(&want), "{want} missing from:\n{diff}");
    }
    assert!(
        !diff.contains("hostname") && !diff.contains("resolv.conf"),
        "{diff}"
    );
    let out = Command::new(testkit::docker_cli())
        .args(["export", "ch"])
        .env("DOCKER_HOST", a.docker_host())
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut ar = tar::Archive::new(&out.stdout[..]);
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        if p == "tmp/added" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            assert_eq!(s, "new\n");
        }
        names.push(p);
    }
    assert!(names.iter().any(|n| n == "bin/busybox"), "{names:?}");
    assert!(names.iter().any(|n| n == "tmp/added"));
    assert!(!names.iter().any(|n| n == "etc/group"));
    let err = a.docker_err(&["diff", "nosuch"]);
    assert!(err.contains("No such container"), "{err}");
}

#[test]
fn commit_makes_an_image_that_runs_with_the_changes() {
    let a = started();
    a.docker_ok(&[
        "run",
        "--name",
        "base",
        "-e",
        "KEEP=yes",
        "busybox",
        "sh",
        "-c",
        "echo committed > /data.txt; rm /etc/group; mkdir /opq; touch /opq/x",
    ]);
    let id = a.docker_ok(&[
        "commit",
        "-m",
        "a message",
        "-a",
        "me",
        "-c",
        "CMD [\"cat\", \"/data.txt\"]",
        "-c",
        "ENV ADDED=1",
        "base",
        "mine:v1",
    ]);
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(a.docker_ok(&["run", "--rm", "mine:v1"]), "committed");
    assert_eq!(
        a.docker_ok(&[
            "run",
            "--rm",
            "mine:v1",
            "sh",
            "-c",
            "echo $KEEP $ADDED; test -e /etc/group || echo gone"
        ]),
        "yes 1\ngone"
    );
    let hist = a.docker_ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.Comment}}",
        "mine:v1",
    ]);
    assert!(hist.lines().next().unwrap().contains("a message"), "{hist}");
    assert_eq!(
        a.docker_ok(&["image", "inspect", "-f", "{{.Author}}", "mine:v1"]),
        "me"
    );
    // Committing a running container, and bad changes.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "live",
        "busybox",
        "sh",
        "-c",
        "echo live > /l; sleep 1000",
    ]);
    wait_for_file(&a, "live", "/l");
    a.docker_ok(&["commit", "live", "live:snap"]);
    assert_eq!(
        a.docker_ok(&["run", "--rm", "live:snap", "cat", "/l"]),
        "live"
    );
    let err = a.docker_err(&["commit", "-c", "RUN rm -rf /", "live", "bad:1"]);
    assert!(err.contains("not a valid change command"), "{err}");
    let err = a.docker_err(&["commit", "nosuch", "x:1"]);
    assert!(err.contains("No such container"), "{err}");
}

fn wait_for_file(a: &AtollInstance, c: &str, path: &str) {
    testkit::wait_for(
        || a.docker(&["exec", c, "test", "-f", path]).status.success(),
        std::time::Duration::from_secs(10),
        "the container to write its file",
    );
}

/// `docker cp` sees what the container's processes see: volumes and binds
/// over its root filesystem, running or not, read-only ones refused.
#[test]
fn cp_reaches_volumes_and_binds_as_the_container_sees_them() {
    let a = started();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("note");
    std::fs::write(&file, "in the volume").unwrap();
    let f = file.to_str().unwrap();
    let host = tmp.path().join("hostdir");
    std::fs::create_dir(&host).unwrap();
    let bind = format!("{}:/host", host.display());
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "vc",
        "-v",
        "vdata:/data",
        "-v",
        "vro:/ro:ro",
        "-v",
        "vdeep:/mnt/deep/vol",
        "-v",
        &bind,
        "busybox",
        "sleep",
        "1000",
    ]);
    // In: the file lands in the volume (another container of it sees it),
    // and in the bind's host directory.
    a.docker_ok(&["cp", f, "vc:/data/"]);
    assert_eq!(
        a.docker_ok(&["exec", "vc", "cat", "/data/note"]),
        "in the volume"
    );
    assert_eq!(
        a.docker_ok(&["run", "--rm", "-v", "vdata:/d", "busybox", "cat", "/d/note"]),
        "in the volume"
    );
    a.docker_ok(&["cp", f, "vc:/host/"]);
    assert_eq!(
        std::fs::read_to_string(host.join("note")).unwrap(),
        "in the volume"
    );
    let err = a.docker_err(&["cp", f, "vc:/ro/"]);
    assert!(err.contains("mounted volume is marked read-only"), "{err}");

    // Out: a file in a volume, a volume whole, and a tree with one below.
    a.docker_ok(&[
        "exec",
        "vc",
        "sh",
        "-c",
        "echo deep > /mnt/deep/vol/x; ln -s / /data/up",
    ]);
    let out = tmp.path().join("out");
    a.docker_ok(&["cp", "vc:/data/note", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "in the volume");
    let tree = tmp.path().join("tree");
    a.docker_ok(&["cp", "vc:/mnt", tree.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(tree.join("deep/vol/x")).unwrap(),
        "deep\n"
    );
    // A volume is a root of its own: its symlink to / stays inside it.
    let err = a.docker_err(&[
        "cp",
        "vc:/data/up/etc/hostname",
        tmp.path().to_str().unwrap(),
    ]);
    assert!(err.contains("Could not find the file"), "{err}");

    // A container that never ran: its volume is made for the copy, and a
    // read-only root still takes files into a writable volume.
    a.docker_ok(&[
        "create",
        "--name",
        "vs",
        "--read-only",
        "-v",
        "vfresh:/fresh",
        "busybox",
        "true",
    ]);
    a.docker_ok(&["cp", f, "vs:/fresh/"]);
    let err = a.docker_err(&["cp", f, "vs:/tmp/"]);
    assert!(
        err.contains("container rootfs is marked read-only"),
        "{err}"
    );
    assert_eq!(
        a.docker_ok(&[
            "run",
            "--rm",
            "-v",
            "vfresh:/f",
            "busybox",
            "cat",
            "/f/note"
        ]),
        "in the volume"
    );
    // Stopped: still the volume's files, not the directory under it.
    a.docker_ok(&["stop", "-t", "0", "vc"]);
    a.docker_ok(&[
        "cp",
        "vc:/data/note",
        tmp.path().join("stopped").to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("stopped")).unwrap(),
        "in the volume"
    );

    // A tenant's volume holds its user namespace's ids: what `cp` writes
    // there is owned by the container's root, as the rootfs's files are.
    let alice = a.tenant("alice");
    let image = testkit::test_images()
        .busybox
        .path
        .to_string_lossy()
        .into_owned();
    alice.docker_ok(&["load", "-i", &image]);
    alice.docker_ok(&[
        "run", "-d", "--name", "tv", "-v", "td:/d", "busybox", "sleep", "1000",
    ]);
    alice.docker_ok(&["cp", f, "tv:/d/"]);
    assert_eq!(
        alice.docker_ok(&["exec", "tv", "stat", "-c", "%u:%g %s", "/d/note"]),
        "0:0 13"
    );
    alice.docker_ok(&[
        "exec",
        "tv",
        "sh",
        "-c",
        "echo mine > /d/own; chown 1234:4321 /d/own",
    ]);
    let out = alice.docker(&["cp", "tv:/d/own", "-"]);
    assert!(out.status.success(), "{out:?}");
    let mut ar = tar::Archive::new(&out.stdout[..]);
    let owners: Vec<(u64, u64)> = ar
        .entries()
        .unwrap()
        .map(|e| {
            let h = e.unwrap().header().clone();
            (h.uid().unwrap(), h.gid().unwrap())
        })
        .collect();
    assert_eq!(owners, [(1234, 4321)]);
}
