//! Volumes through the real docker CLI against a temporary `atoll up`.

use testkit::AtollInstance;

fn started() -> AtollInstance {
    let a = AtollInstance::start();
    a.load_busybox();
    a
}

#[test]
fn named_volumes_keep_data_across_containers_and_refuse_removal_in_use() {
    let a = started();
    assert_eq!(
        a.docker_ok(&["volume", "create", "--label", "team=x", "data"]),
        "data"
    );
    // Idempotent, as in Docker.
    assert_eq!(a.docker_ok(&["volume", "create", "data"]), "data");
    a.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    assert_eq!(
        a.docker_ok(&["run", "--rm", "-v", "data:/d:ro", "busybox", "cat", "/d/f"]),
        "kept"
    );
    let out = a.docker(&[
        "run",
        "--rm",
        "-v",
        "data:/d:ro",
        "busybox",
        "touch",
        "/d/g",
    ]);
    assert!(!out.status.success(), "a read-only volume was writable");
    // --mount, and a volume made on first use.
    a.docker_ok(&[
        "run",
        "-d",
        "--name",
        "user",
        "--mount",
        "type=volume,source=auto,target=/auto",
        "-v",
        "data:/data",
        "busybox",
        "sleep",
        "1000",
    ]);
    let names = a.docker_ok(&["volume", "ls", "-q"]);
    assert!(
        names.lines().any(|l| l == "auto") && names.lines().any(|l| l == "data"),
        "{names}"
    );
    assert_eq!(
        a.docker_ok(&["volume", "ls", "-q", "--filter", "label=team=x"]),
        "data"
    );
    assert_eq!(
        a.docker_ok(&["volume", "ls", "-q", "--filter", "dangling=true"]),
        ""
    );
    let v: serde_json::Value =
        serde_json::from_str(&a.docker_ok(&["volume", "inspect", "data"])).unwrap();
    assert_eq!(v[0]["Driver"], "local");
    assert_eq!(v[0]["Labels"]["team"], "x");
    let mounts = a.docker_ok(&["inspect", "-f", "{{json .Mounts}}", "user"]);
    assert!(
        mounts.contains("\"Name\":\"data\"") && mounts.contains("\"Destination\":\"/data\""),
        "{mounts}"
    );
    assert_eq!(
        a.docker_ok(&["ps", "-q", "--filter", "volume=data"])
            .lines()
            .count(),
        1
    );

    let err = a.docker_err(&["volume", "rm", "data"]);
    assert!(err.contains("volume is in use"), "{err}");
    a.docker_ok(&["rm", "-f", "user"]);
    assert_eq!(a.docker_ok(&["volume", "rm", "data"]), "data");
    let err = a.docker_err(&["volume", "inspect", "data"]);
    assert!(err.contains("no such volume"), "{err}");
    // A new volume of the same name starts empty.
    let out = a.docker(&[
        "run",
        "--rm",
        "-v",
        "data:/data",
        "busybox",
        "cat",
        "/data/f",
    ]);
    assert!(!out.status.success());

    let err = a.docker_err(&["volume", "create", "-d", "nfs-plugin", "x1"]);
    assert!(err.contains("plugin"), "{err}");
    let err = a.docker_err(&["run", "--rm", "-v", "b@d:/x", "busybox", "true"]);
    assert!(
        err.contains("invalid characters for a local volume name"),
        "{err}"
    );
    let err = a.docker_err(&[
        "run", "--rm", "-v", "data:/x", "-v", "other:/x", "busybox", "true",
    ]);
    assert!(err.contains("Duplicate mount point"), "{err}");
}

#[test]
fn anonymous_volumes_image_copy_up_volumes_from_and_prune() {
    let a = started();
    // An anonymous volume over an image directory starts with the image's files.
    let cid = a.docker_ok(&["run", "-d", "-v", "/etc", "busybox", "sleep", "1000"]);
    assert!(
        a.docker_ok(&["exec", &cid, "cat", "/etc/passwd"])
            .contains("root:")
    );
    a.docker_ok(&["exec", &cid, "sh", "-c", "echo shared > /etc/marker"]);
    // --volumes-from sees the same volume.
    assert_eq!(
        a.docker_ok(&[
            "run",
            "--rm",
            "--volumes-from",
            &cid,
            "busybox",
            "cat",
            "/etc/marker"
        ]),
        "shared"
    );
    let out = a.docker(&[
        "run",
        "--rm",
        "--volumes-from",
        &format!("{cid}:ro"),
        "busybox",
        "touch",
        "/etc/x",
    ]);
    assert!(!out.status.success());
    let anon = a.docker_ok(&["volume", "ls", "-q"]);
    assert_eq!(anon.lines().count(), 1, "{anon}");
    assert_eq!(anon.len(), 64);
    // Prune leaves volumes in use; rm -v takes the anonymous volume with it.
    assert!(!a.docker_ok(&["volume", "prune", "-f"]).contains(&anon));
    a.docker_ok(&["rm", "-f", "-v", &cid]);
    assert_eq!(a.docker_ok(&["volume", "ls", "-q"]), "");

    // --rm containers take their anonymous volumes along; named ones stay.
    a.docker_ok(&[
        "run",
        "--rm",
        "-v",
        "/scratch",
        "-v",
        "keep:/keep",
        "busybox",
        "true",
    ]);
    assert_eq!(a.docker_ok(&["volume", "ls", "-q"]), "keep");
    // Prune: anonymous only by default, all unused with all=true.
    a.docker_ok(&["create", "-v", "/tmpvol", "busybox", "true"]);
    a.docker_ok(&["container", "prune", "-f"]);
    assert_eq!(a.docker_ok(&["volume", "ls", "-q"]).lines().count(), 2);
    a.docker_ok(&["volume", "prune", "-f"]);
    assert_eq!(a.docker_ok(&["volume", "ls", "-q"]), "keep");
    a.docker_ok(&["volume", "prune", "-f", "--all"]);
    assert_eq!(a.docker_ok(&["volume", "ls", "-q"]), "");
}

#[test]
fn host_binds_and_tmpfs_mounts_for_the_operator() {
    let a = started();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "from host").unwrap();
    let d = dir.path().display().to_string();
    assert_eq!(
        a.docker_ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{d}:/h"),
            "busybox",
            "sh",
            "-c",
            "cat /h/in.txt; echo back > /h/out.txt"
        ]),
        "from host"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "back\n"
    );
    let out = a.docker(&[
        "run",
        "--rm",
        "--mount",
        &format!("type=bind,source={d},target=/h,readonly"),
        "busybox",
        "touch",
        "/h/x",
    ]);
    assert!(!out.status.success());
    let err = a.docker_err(&[
        "run",
        "--rm",
        "--mount",
        "type=bind,source=/no/such/dir,target=/h",
        "busybox",
        "true",
    ]);
    assert!(err.contains("bind source path does not exist"), "{err}");
    // `-v` makes a missing host directory instead, as Docker does.
    let made = tempfile::tempdir().unwrap();
    let missing = made.path().join("a/b");
    a.docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/m", missing.display()),
        "busybox",
        "touch",
        "/m/x",
    ]);
    assert!(missing.join("x").exists());
    assert!(
        a.docker_ok(&[
            "run",
            "--rm",
            "--mount",
            "type=tmpfs,target=/t,tmpfs-size=1m",
            "busybox",
            "sh",
            "-c",
            "mount | grep ' /t '"
        ])
        .contains("tmpfs")
    );
}
