//! Images through the real docker CLI against a temporary `atoll up`.

use testkit::{AtollInstance, Registry, StartOptions, TokenIssuer, TokenUser, test_images};

#[test]
fn load_list_inspect_tag_rmi_history() {
    let a = AtollInstance::start();
    let imgs = test_images();
    let out = a.load_busybox();
    assert!(out.contains("Loaded image: busybox:latest"), "{out}");

    let list = a.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    let short = &imgs.busybox.id["sha256:".len()..][..12];
    assert_eq!(list, format!("busybox:latest {short}"));
    let id = a.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "busybox"]);
    assert_eq!(id, imgs.busybox.id);
    let layers = a.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{len .RootFS.Layers}}",
        "busybox",
    ]);
    assert_eq!(layers, imgs.busybox.diff_ids.len().to_string());

    // tag, filters, untag vs delete
    a.docker_ok(&["tag", "busybox", "example/bb:1"]);
    let refs = a.docker_ok(&[
        "images",
        "--filter",
        "reference=example/*",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    assert_eq!(refs, "example/bb:1");
    let untag = a.docker_ok(&["rmi", "example/bb:1"]);
    assert!(untag.contains("Untagged: example/bb:1"), "{untag}");
    assert!(!untag.contains("Deleted"), "{untag}");
    assert!(
        a.docker_ok(&["history", "-q", "busybox"])
            .starts_with(short)
    );

    // in use: 409, then delete once the container is gone
    a.docker_ok(&["create", "--name", "user", "busybox", "true"]);
    let err = a.docker_err(&["rmi", "busybox"]);
    assert!(
        err.contains("container") && err.contains("is using its referenced image"),
        "{err}"
    );
    a.docker_ok(&["rm", "user"]);
    let del = a.docker_ok(&["rmi", "busybox"]);
    assert!(del.contains("Deleted: sha256:"), "{del}");
    assert_eq!(a.docker_ok(&["images", "-q"]), "");
    let err = a.docker_err(&["image", "inspect", "busybox"]);
    assert!(err.contains("No such image"), "{err}");
}

#[test]
fn save_then_load_round_trip_and_oci_archive() {
    let a = AtollInstance::start();
    let imgs = test_images();
    let out = a.load_image(&imgs.busybox_oci);
    assert!(out.contains("busybox:latest"), "{out}");
    let dir = tempfile_dir();
    let tar = dir.join("saved.tar");
    a.docker_ok(&["save", "-o", tar.to_str().unwrap(), "busybox:latest"]);
    a.docker_ok(&["rmi", "busybox"]);
    let out = a.docker_ok(&["load", "-i", tar.to_str().unwrap()]);
    assert!(out.contains("Loaded image: busybox:latest"), "{out}");
    assert_eq!(
        a.docker_ok(&["run", "--rm", "busybox", "echo", "round trip"]),
        "round trip"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn corrupt_and_truncated_archives_fail_cleanly() {
    let a = AtollInstance::start();
    let bytes = std::fs::read(&test_images().busybox.path).unwrap();
    let truncated = &bytes[..bytes.len() / 2];
    let out = a.docker_stdin(&["load"], truncated);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    let out = a.docker_stdin(
        &["load"],
        b"this is not a tarball at all, not even close....",
    );
    assert!(!out.status.success());
    // Nothing half-loaded is left behind.
    assert_eq!(a.docker_ok(&["images", "-q", "-a"]), "");
    let blobs = a.data_dir().join("head/blobs/sha256");
    let n = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0, "blobs left behind in {}", blobs.display());
}

#[test]
fn import_with_changes_runs() {
    let a = AtollInstance::start();
    // A rootfs tarball: export the busybox layer via save, take its layer.
    let root = tempfile_dir();
    let rootfs = root.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for app in ["sh", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(app)).unwrap();
    }
    let tar = root.join("rootfs.tar");
    let st = std::process::Command::new("tar")
        .args([
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let data = std::fs::read(&tar).unwrap();
    let out = a.docker_stdin(
        &[
            "import",
            "-c",
            "CMD [\"echo\", \"imported\"]",
            "-c",
            "ENV GREETING=hi",
            "-c",
            "LABEL team=imports",
            "-m",
            "from test",
            "-",
            "imp:1",
        ],
        &data,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(a.docker_ok(&["run", "--rm", "imp:1"]), "imported");
    assert_eq!(
        a.docker_ok(&["run", "--rm", "imp:1", "sh", "-c", "echo $GREETING"]),
        "hi"
    );
    let comment = a.docker_ok(&["history", "--format", "{{.Comment}}", "imp:1"]);
    assert_eq!(comment, "from test");
    // Label filters read the image config's labels.
    let by_label = a.docker_ok(&[
        "images",
        "--filter",
        "label=team=imports",
        "--format",
        "{{.Repository}}",
    ]);
    assert_eq!(by_label, "imp");
    assert_eq!(
        a.docker_ok(&["images", "-q", "--filter", "label=team=other"]),
        ""
    );
    let err = a.docker_stdin(&["import", "-c", "FROBNICATE x", "-", "bad:1"], &data);
    assert!(!err.status.success());
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn whiteouts_and_opaque_dirs_in_a_running_container() {
    let a = AtollInstance::start();
    a.load_image(&test_images().multilayer);
    let out = a.docker_ok(&[
        "run", "--rm", "multilayer", "sh", "-c",
        "ls /data | sort | tr '\\n' ' '; echo; ls /opq; test -e /data/gone && echo GONE-EXISTS; cat /data/keep",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].trim(), "keep third", "{out}");
    assert_eq!(lines[1].trim(), "new", "{out}");
    assert!(!out.contains("GONE-EXISTS"), "{out}");
    assert_eq!(lines[2].trim(), "keep v3", "{out}");
}

#[test]
fn pull_from_a_local_registry() {
    let a = AtollInstance::start();
    let reg = Registry::start();
    let name = reg.push_archive(&test_images().busybox.path, "test/busybox:1");
    let out = a.docker_ok(&["pull", &name]);
    assert!(
        out.contains("Downloaded newer image") || out.contains("Pull complete"),
        "{out}"
    );
    assert_eq!(
        a.docker_ok(&["run", "--rm", &name, "echo", "pulled"]),
        "pulled"
    );
    let again = a.docker_ok(&["pull", &name]);
    assert!(again.contains("Image is up to date"), "{again}");
    let err = a.docker_err(&["pull", &format!("{}/test/busybox:nope", reg.addr())]);
    assert!(
        err.contains("not found") || err.contains("manifest unknown"),
        "{err}"
    );
    let err = a.docker_err(&["pull", "127.0.0.1:1/nothing/here:1"]);
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

/// A private registry over TLS (its CA in atoll's default certs dir) with
/// basic auth: `docker login` checks the credentials, the CLI's stored ones
/// then ride along each pull, and an account without them gets nothing —
/// not even from the blobs another account pulled.
#[test]
fn login_and_pull_from_a_private_tls_registry() {
    let a = AtollInstance::start();
    let reg = Registry::start_secure("alice", "s3cret");
    let name = reg.push_archive(&test_images().busybox.path, "private/busybox:1");
    let alice = a.tenant("alice");
    let bob = a.tenant("bob");
    let server = reg.addr();

    let err = alice.docker_err(&["login", &server, "-u", "alice", "-p", "wrong"]);
    assert!(
        err.contains(&format!(
            "login attempt to https://{server}/v2/ failed with status: 401 Unauthorized"
        )),
        "{err}"
    );
    // Not logged in: the registry refuses the pull.
    let err = alice.docker_err(&["pull", &name]);
    assert!(err.contains("unauthorized"), "{err}");
    let out = alice.docker_ok(&["login", &server, "-u", "alice", "-p", "s3cret"]);
    assert!(out.contains("Login Succeeded"), "{out}");
    let out = alice.docker_ok(&["pull", &name]);
    assert!(out.contains("Downloaded newer image"), "{out}");
    assert_eq!(
        alice.docker_ok(&["run", "--rm", &name, "echo", "pulled"]),
        "pulled"
    );
    // Bob has the blobs on the same head, but no credentials: nothing.
    let downloads = reg.blob_downloads();
    let err = bob.docker_err(&["pull", &name]);
    assert!(err.contains("unauthorized"), "{err}");
    assert!(bob.docker_ok(&["images", "-q"]).is_empty());
    assert_eq!(reg.blob_downloads(), downloads);
    // With his own (the same user, as if he had been given it), the registry
    // confirms each blob and none is downloaded again.
    bob.docker_ok(&["login", &server, "-u", "alice", "-p", "s3cret"]);
    let out = bob.docker_ok(&["pull", &name]);
    assert!(out.contains("Already exists"), "{out}");
    assert_eq!(reg.blob_downloads(), downloads);
}

/// `docker push` of an image committed in atoll: refused without a login,
/// then uploaded; skopeo reads exactly what was pushed; `--all-tags` finds
/// the layers already there; another account pulls it back bit-identical.
#[test]
fn push_a_committed_image_and_pull_it_back_elsewhere() {
    let a = AtollInstance::start();
    let reg = Registry::start_secure("alice", "s3cret");
    let server = reg.addr();
    let alice = a.tenant("alice");
    let bob = a.tenant("bob");
    let busybox = test_images().busybox.path.display().to_string();
    alice.docker_ok(&["load", "-i", &busybox]);
    alice.docker_ok(&[
        "run",
        "--name",
        "maker",
        "busybox",
        "sh",
        "-c",
        "echo made-by-alice > /made",
    ]);
    let app = format!("{server}/alice/app");
    alice.docker_ok(&["commit", "maker", &format!("{app}:1")]);
    alice.docker_ok(&["tag", &format!("{app}:1"), &format!("{app}:2")]);
    let id = alice.docker_ok(&["image", "inspect", "-f", "{{.Id}}", &format!("{app}:1")]);

    let err = alice.docker_err(&["push", &format!("{app}:1")]);
    assert!(err.contains("authentication required"), "{err}");
    let err = alice.docker_err(&["push", &format!("{server}/alice/nothing:1")]);
    assert!(
        err.contains(&format!(
            "An image does not exist locally with the tag: {server}/alice/nothing"
        )),
        "{err}"
    );
    // Positive control: logged in, the push goes through.
    alice.docker_ok(&["login", &server, "-u", "alice", "-p", "s3cret"]);
    let out = alice.docker_ok(&["push", &format!("{app}:1")]);
    assert!(
        out.contains(&format!("The push refers to repository [{app}]")),
        "{out}"
    );
    assert!(out.contains("Pushed"), "{out}");
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("1: digest: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest line in {out}"))
        .to_string();

    // skopeo, an independent client, reads what was pushed.
    let inspect = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds=alice:s3cret",
        ])
        .arg(format!("docker://{app}:1"))
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{inspect:?}");
    assert_eq!(
        format!("sha256:{}", sha256_hex(&inspect.stdout)),
        digest,
        "manifest digest"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(manifest["config"]["digest"], id.as_str());

    let repo_digests = alice.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .RepoDigests}}",
        &format!("{app}:1"),
    ]);
    assert!(
        repo_digests.contains(&format!("{app}@{digest}")),
        "{repo_digests}"
    );

    let out = alice.docker_ok(&["push", "--all-tags", &app]);
    assert!(out.contains("Layer already exists"), "{out}");
    assert!(out.contains(&format!("2: digest: {digest}")), "{out}");

    // Bob pulls it with his own login: the same image, bit for bit.
    let err = bob.docker_err(&["pull", &format!("{app}:2")]);
    assert!(err.contains("unauthorized"), "{err}");
    bob.docker_ok(&["login", &server, "-u", "alice", "-p", "s3cret"]);
    bob.docker_ok(&["pull", &format!("{app}:2")]);
    assert_eq!(
        bob.docker_ok(&["image", "inspect", "-f", "{{.Id}}", &format!("{app}:2")]),
        id
    );
    assert_eq!(
        bob.docker_ok(&["run", "--rm", &format!("{app}:2"), "cat", "/made"]),
        "made-by-alice"
    );
}

/// Token authentication, as Docker Hub runs it: each account's pulls and
/// pushes carry tokens issued to its own login, scoped to what the issuer
/// grants that user. Bob cannot read alice's repository, nor have her blobs
/// mounted into his, through anything atoll holds.
#[test]
fn token_auth_scopes_every_pull_and_push_to_its_account() {
    let issuer = TokenIssuer::start(vec![
        TokenUser::owner("alice", "alice-pw"),
        TokenUser::owner("bob", "bob-pw"),
    ]);
    let reg = Registry::start_token(&issuer, "alice");
    let server = reg.addr();
    let a = AtollInstance::start();
    let alice = a.tenant("alice");
    let bob = a.tenant("bob");
    let busybox = test_images().busybox.path.display().to_string();
    for t in [&alice, &bob] {
        t.docker_ok(&["load", "-i", &busybox]);
    }

    let err = bob.docker_err(&["login", &server, "-u", "bob", "-p", "wrong"]);
    assert!(err.contains("incorrect username or password"), "{err}");
    for (t, user, pw) in [(&alice, "alice", "alice-pw"), (&bob, "bob", "bob-pw")] {
        let out = t.docker_ok(&["login", &server, "-u", user, "-p", pw]);
        assert!(out.contains("Login Succeeded"), "{out}");
    }
    // The login gave the CLI an identity token, which it keeps instead of
    // the password and sends from then on.
    let config = std::fs::read_to_string(alice.docker_config_dir().join("config.json")).unwrap();
    assert!(config.contains("identitytoken"), "{config}");
    let mine = format!("{server}/alice/bb:1");
    alice.docker_ok(&["tag", "busybox", &mine]);
    let out = alice.docker_ok(&["push", &mine]);
    assert!(out.contains("Pushed"), "{out}");
    let pushes: Vec<_> = issuer
        .issued()
        .into_iter()
        .filter(|i| {
            i.granted
                .contains(&"repository:alice/bb:pull,push".to_string())
        })
        .collect();
    assert!(
        !pushes.is_empty()
            && pushes
                .iter()
                .all(|i| i.user.as_deref() == Some("alice") && i.by_refresh),
        "{pushes:?}"
    );
    // Alice's second repository gets the blobs mounted, not uploaded.
    alice.docker_ok(&["tag", "busybox", &format!("{server}/alice/copy:1")]);
    let out = alice.docker_ok(&["push", &format!("{server}/alice/copy:1")]);
    assert!(out.contains("Mounted from alice/bb"), "{out}");

    // Bob, logged in as himself: alice's repository is not his to read.
    let before = issuer.issued().len();
    let err = bob.docker_err(&["pull", &mine]);
    assert!(err.contains("pull access denied for"), "{err}");
    let asked: Vec<_> = issuer.issued()[before..].to_vec();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|i| i.user.as_deref() == Some("bob") && i.granted.is_empty()),
        "{asked:?}"
    );
    // An identity token that the issuer never gave is refused.
    let bob_config = bob.docker_config_dir().join("config.json");
    let real = std::fs::read_to_string(&bob_config).unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&real).unwrap();
    forged["auths"][server.as_str()]["identitytoken"] = "refresh-alice-0".into();
    std::fs::write(&bob_config, forged.to_string()).unwrap();
    let err = bob.docker_err(&["pull", &mine]);
    assert!(err.contains("invalid refresh token"), "{err}");
    std::fs::write(&bob_config, real).unwrap();
    // His own repository: the same blobs are uploaded (the registry would
    // not mount them from alice's for him), and pulled back.
    let his = format!("{server}/bob/bb:1");
    bob.docker_ok(&["tag", "busybox", &his]);
    let out = bob.docker_ok(&["push", &his]);
    assert!(out.contains("Pushed") && !out.contains("Mounted"), "{out}");
    bob.docker_ok(&["rmi", &his]);
    let out = bob.docker_ok(&["pull", &his]);
    assert!(out.contains("Downloaded newer image"), "{out}");
}

/// `docker pull --platform` picks from a manifest list, refuses a platform
/// it lacks and an image manifest for another platform; a pull by digest
/// records the digest in `RepoDigests`.
#[test]
fn pull_picks_the_requested_platform() {
    let reg = Registry::start();
    let imgs = test_images();
    let amd64 = reg.push_archive(&imgs.busybox.path, "test/multi:amd64");
    reg.push_archive(&imgs.multilayer.path, "test/multi:arm64");
    let list_digest = reg.put_manifest_list(
        "test/multi",
        "multi",
        &[("arm64", "linux/arm64/v8"), ("amd64", "linux/amd64")],
    );
    let a = AtollInstance::start();
    let multi = format!("{}/test/multi:multi", reg.addr());
    let id = |r: &str| a.docker_ok(&["image", "inspect", "-f", "{{.Id}}", r]);

    a.docker_ok(&["pull", "--platform", "linux/arm64", &multi]);
    assert_eq!(id(&multi), imgs.multilayer.id);
    a.docker_ok(&["pull", "--platform", "linux/amd64", &multi]);
    assert_eq!(id(&multi), imgs.busybox.id);
    let err = a.docker_err(&["pull", "--platform", "linux/s390x", &multi]);
    assert!(
        err.contains("no matching manifest for linux/s390x in the manifest list entries"),
        "{err}"
    );
    // A single-platform image for another platform than the one asked for.
    let err = a.docker_err(&["pull", "--platform", "linux/arm64", &amd64]);
    assert!(
        err.contains(
            "does not match the specified platform: wanted linux/arm64, actual: linux/amd64"
        ),
        "{err}"
    );
    a.docker_ok(&["pull", "--platform", "linux/amd64", &amd64]);
    let r = a.api(
        "POST",
        &format!(
            "/images/create?fromImage={}&platform=linux%2F",
            amd64.replace('/', "%2F")
        ),
        None,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("invalid platform"), "{}", r.text());

    let by_digest = format!("{}/test/multi@{list_digest}", reg.addr());
    a.docker_ok(&["pull", &by_digest]);
    let digests = a.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .RepoDigests}}",
        &by_digest,
    ]);
    assert!(
        digests.contains(&format!("{}/test/multi@{list_digest}", reg.addr())),
        "{digests}"
    );
}

/// Docker Hub names resolve through the operator's mirrors, in order (the
/// config file's, then the flags'), a dead one skipped; what no mirror has
/// falls back to Docker Hub itself. `docker info` lists the mirrors.
#[test]
fn docker_hub_pulls_go_through_the_mirrors_in_order() {
    let mirror = Registry::start();
    mirror.push_archive(&test_images().busybox.path, "library/busybox:latest");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        format!(r#"{{"registry-mirrors": ["http://127.0.0.1:{dead}"], "insecure-registries": ["10.9.0.0/16", "reg.internal:5000"]}}"#),
    )
    .unwrap();
    let a = AtollInstance::start_with(StartOptions {
        args: vec![
            "--config".into(),
            config.display().to_string(),
            "--registry-mirror".into(),
            format!("http://{}", mirror.addr()),
        ],
        ..Default::default()
    });
    let info = a.docker_ok(&["info"]);
    let mirrors = format!(
        "Registry Mirrors:\n  http://127.0.0.1:{dead}/\n  http://{}/",
        mirror.addr()
    );
    assert!(info.contains(&mirrors), "{info}");
    assert!(
        info.contains("10.9.0.0/16") && info.contains("reg.internal:5000"),
        "{info}"
    );

    let out = a.docker_ok(&["pull", "busybox"]);
    assert!(
        out.contains("Downloaded newer image for busybox:latest"),
        "{out}"
    );
    assert_eq!(
        a.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "busybox"]),
        test_images().busybox.id
    );
    let log = mirror.access_log();
    assert!(
        log.contains("GET /v2/library/busybox/manifests/latest"),
        "{log}"
    );

    // Not on the mirror: asked there, then at Docker Hub (unreachable here).
    let err = a.docker_err(&["pull", "nosuchimage"]);
    assert!(
        mirror
            .access_log()
            .contains("/v2/library/nosuchimage/manifests/latest")
    );
    assert!(err.contains("registry-1.docker.io"), "{err}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn image_prune_removes_dangling_only() {
    let a = AtollInstance::start();
    a.load_busybox();
    a.load_image(&test_images().multilayer);
    a.docker_ok(&["tag", "multilayer", "keepme:1"]);
    a.docker_ok(&["rmi", "multilayer"]);
    // Still tagged keepme: not dangling.
    let out = a.docker_ok(&["image", "prune", "-f"]);
    assert!(!out.contains("Deleted"), "{out}");
    let out = a.docker_ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("Deleted"), "{out}");
    assert_eq!(a.docker_ok(&["images", "-q"]), "");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "atoll-it-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
