//! `docker build` through the real docker CLI (classic builder API) against a
//! temporary `atoll up`.

use std::path::Path;

use testkit::{AtollInstance, FileServer, Registry, Route, StartOptions, Tenant, test_images};

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// `docker build` with the classic builder, as a CLI without buildx does.
fn build(a: &AtollInstance, args: &[&str]) -> std::process::Output {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    a.docker(&all)
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Owner and group of `path` in `ls -ln` output.
fn owners<'a>(ls: &'a str, path: &str) -> (&'a str, &'a str) {
    let line = ls
        .lines()
        .find(|l| l.starts_with('-') && l.ends_with(path))
        .unwrap_or("");
    let f: Vec<&str> = line.split_whitespace().collect();
    (
        f.get(2).copied().unwrap_or(""),
        f.get(3).copied().unwrap_or(""),
    )
}

#[test]
fn build_runs_every_kind_of_step_then_reuses_the_cache() {
    let a = AtollInstance::start();
    a.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let d = ctx.path();
    write(d, "files/a.txt", "alpha\n");
    write(d, "files/sub/b.txt", "beta\n");
    write(
        d,
        "run.sh",
        "#!/bin/sh\ncat /app/greeting /app/heredoc /app/note.txt /app/files/a.txt /app/files/sub/b.txt /app/unpacked/inner.txt\nls -ln /app/owned.txt\necho user=$(id -u)\n",
    );
    // A tarball ADD unpacks.
    let tarball = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(6);
        h.set_mode(0o644);
        b.append_data(&mut h, "inner.txt", &b"inner\n"[..]).unwrap();
        b.into_inner().unwrap()
    };
    std::fs::write(d.join("bundle.tar"), tarball).unwrap();
    write(
        d,
        "Dockerfile",
        r#"# a comment
FROM busybox AS base
ARG GREETING=hello
ENV APP=/app
WORKDIR $APP
COPY files/ ./files/
COPY --chmod=755 run.sh /usr/local/bin/run.sh
RUN echo "$GREETING from build" > /app/greeting \
 && cat /app/greeting
RUN <<EOF
echo heredoc-ran > /app/heredoc
EOF
COPY <<EOT /app/note.txt
note $APP
EOT
ADD bundle.tar /app/unpacked/
COPY --chown=1234:55 files/a.txt /app/owned.txt
USER 1000
LABEL stage=final
CMD ["run.sh"]
"#,
    );
    let dir = d.to_str().unwrap();
    let out = build(&a, &["-t", "app:1", "--build-arg", "GREETING=hi", dir]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("Step 1/14 : FROM busybox AS base"), "{t}");
    assert!(t.contains("hi from build"), "{t}");
    assert!(t.contains(" ---> Running in "), "{t}");
    assert!(t.contains("Successfully tagged app:1"), "{t}");
    assert!(!t.contains("Using cache"), "{t}");
    let id = a.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "app:1"]);
    assert!(
        t.contains(&format!("Successfully built {}", &id[7..19])),
        "{t}"
    );

    let run = a.docker_ok(&["run", "--rm", "app:1"]);
    for want in [
        "hi from build",
        "heredoc-ran",
        "note /app",
        "alpha",
        "beta",
        "inner",
        "user=1000",
    ] {
        assert!(run.contains(want), "{want:?} missing from {run}");
    }
    assert!(owners(&run, "/app/owned.txt") == ("1234", "55"), "{run}");
    let cfg = a.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.WorkingDir}} {{.Config.User}} {{json .Config.Cmd}} {{.Config.Labels.stage}}",
        "app:1",
    ]);
    assert_eq!(cfg, r#"/app 1000 ["run.sh"] final"#);

    // Same inputs: every step after FROM and ARG comes from the cache, and
    // the image is the same, a clock second later too (times made during a
    // build, such as a heredoc file's, are not inputs).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = build(&a, &["-t", "app:2", "--build-arg", "GREETING=hi", dir]);
    let t2 = text(&again);
    assert!(again.status.success(), "{t2}");
    assert_eq!(t2.matches(" ---> Using cache").count(), 12, "{t2}");
    assert!(!t2.contains("Running in"), "{t2}");
    assert_eq!(
        a.docker_ok(&["image", "inspect", "-f", "{{.Id}}", "app:2"]),
        id
    );

    // A changed file misses from its COPY on; a changed arg from its RUN on.
    write(d, "files/a.txt", "alpha two\n");
    let changed = build(&a, &["-t", "app:3", "--build-arg", "GREETING=hi", dir]);
    let t3 = text(&changed);
    assert!(changed.status.success(), "{t3}");
    assert_eq!(t3.matches(" ---> Using cache").count(), 2, "{t3}");
    assert!(a.docker_ok(&["run", "--rm", "app:3"]).contains("alpha two"));
    let other_arg = build(&a, &["-q", "--build-arg", "GREETING=yo", dir]);
    let t4 = text(&other_arg);
    assert!(other_arg.status.success(), "{t4}");
    let new_id = String::from_utf8_lossy(&other_arg.stdout)
        .trim()
        .to_string();
    assert!(new_id.starts_with("sha256:") && new_id != id, "{t4}");
    assert!(
        a.docker_ok(&["run", "--rm", &new_id, "cat", "/app/greeting"])
            .contains("yo from build")
    );
    // No build container is left behind.
    assert_eq!(a.docker_ok(&["ps", "-aq"]), "");
}

#[test]
fn build_errors_name_the_step_and_line() {
    let a = AtollInstance::start();
    a.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let d = ctx.path();
    let dir = d.to_str().unwrap();

    // Positive control: a good Dockerfile builds.
    write(d, "Dockerfile", "FROM busybox\nRUN echo fine\n");
    let ok = build(&a, &[dir]);
    assert!(ok.status.success(), "{}", text(&ok));

    write(
        d,
        "Dockerfile",
        "FROM busybox\nRUN echo before-fail && exit 3\n",
    );
    let out = build(&a, &[dir]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("before-fail"), "{t}");
    assert!(
        t.contains(
            "The command '/bin/sh -c echo before-fail && exit 3' returned a non-zero code: 3"
        ),
        "{t}"
    );

    write(d, "Dockerfile", "FROM busybox\nRUN true\nFROBNICATE now\n");
    let t = text(&build(&a, &[dir]));
    assert!(t.contains("line 3") && t.contains("FROBNICATE"), "{t}");

    write(d, "Dockerfile", "FROM busybox\nCOPY nope.txt /x\n");
    let t = text(&build(&a, &[dir]));
    assert!(
        t.contains("nope.txt") && t.contains("file not found in build context"),
        "{t}"
    );

    write(d, "Dockerfile", "FROM busybox\nCOPY a b /dest\n");
    write(d, "a", "a");
    write(d, "b", "b");
    let t = text(&build(&a, &[dir]));
    assert!(
        t.contains("the destination must be a directory and end with a /"),
        "{t}"
    );

    write(d, "Dockerfile", "FROM no-such-image-here:1\n");
    let t = text(&build(&a, &[dir]));
    assert!(t.contains("no-such-image-here"), "{t}");

    // Stages the target does not need are skipped: the broken one never runs.
    write(
        d,
        "Dockerfile",
        "FROM busybox AS broken\nRUN exit 7\nFROM busybox AS good\nRUN echo good > /g\n",
    );
    let out = build(&a, &["--target", "good", "-t", "good", dir]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("Step 1/2 : FROM busybox AS good"), "{t}");
    // ... and the broken one does fail when it is the target.
    let t = text(&build(&a, &["--target", "broken", dir]));
    assert!(t.contains("returned a non-zero code: 7"), "{t}");
    let t = text(&build(&a, &["--target", "missing", dir]));
    assert!(t.contains("failed to reach build target missing"), "{t}");
}

#[test]
fn multi_stage_builds_copy_from_stages_and_images() {
    let a = AtollInstance::start();
    a.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let d = ctx.path();
    write(
        d,
        "Dockerfile",
        "FROM busybox AS builder\n\
         RUN mkdir -p /out/bin /out/lib && echo built > /out/bin/tool && echo single > /out/single \\\n\
           && touch /out/lib/a.so /out/lib/b.so /out/lib/c.txt\n\
         FROM busybox\n\
         COPY --from=builder /out/bin /usr/local/mine/\n\
         COPY --from=builder --chown=7:8 /out/single /etc/single.txt\n\
         COPY --from=busybox /bin/busybox /copied-busybox\n\
         COPY --from=builder /out/lib/*.so /libs/\n\
         COPY --from=builder /out/*/tool /one-tool\n\
         RUN cat /usr/local/mine/tool /etc/single.txt /one-tool && ls -ln /etc/single.txt && test -x /copied-busybox && echo libs: $(ls /libs)\n",
    );
    let dir = d.to_str().unwrap();
    let out = build(&a, &["-t", "multi", dir]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("built\nsingle\nbuilt\n"), "{t}");
    assert!(t.contains("libs: a.so b.so\n"), "{t}");
    assert_eq!(owners(&t, "/etc/single.txt"), ("7", "8"), "{t}");
    // The final image holds the copies, not the builder's other files.
    let ls = a.docker_ok(&["run", "--rm", "multi", "ls", "/usr/local/mine"]);
    assert!(ls.contains("tool"), "{ls}");
    let missing = a.docker(&["run", "--rm", "multi", "ls", "/out"]);
    assert!(!missing.status.success());
    let again = text(&build(&a, &["-t", "multi", dir]));
    assert_eq!(again.matches(" ---> Using cache").count(), 7, "{again}");
    // A wildcard that matches nothing is an error (control: the ones above).
    write(
        d,
        "Dockerfile",
        "FROM busybox AS builder\nFROM busybox\nCOPY --from=builder /bin/*.none /x/\n",
    );
    let t = text(&build(&a, &[dir]));
    assert!(
        t.contains("no source files were specified: nothing in builder matches /bin/*.none"),
        "{t}"
    );
}

#[test]
fn a_client_that_goes_away_cancels_the_build_and_its_containers() {
    let a = AtollInstance::start();
    a.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "Dockerfile", "FROM busybox\nRUN sleep 120\n");
    let mut cli = a
        .docker_command(&["build", "-t", "never", ctx.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The step's container runs (the control: there is something to cancel).
    testkit::wait_for(
        || a.docker_ok(&["ps", "-q"]).lines().count() == 1,
        std::time::Duration::from_secs(30),
        "the RUN step's container",
    );
    cli.kill().unwrap();
    cli.wait().unwrap();
    testkit::wait_for(
        || a.docker_ok(&["ps", "-aq"]).is_empty(),
        std::time::Duration::from_secs(20),
        "the cancelled build's container to go",
    );
    let err = a.docker_err(&["image", "inspect", "never"]);
    assert!(err.contains("No such image"), "{err}");
}

#[test]
fn cache_mounts_persist_between_builds_and_prune_clears_them() {
    let a = AtollInstance::start();
    a.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let d = ctx.path();
    let dir = d.to_str().unwrap();
    // The step counts the runs it has seen in its cache mount; the cache
    // mount is not part of the image.
    let dockerfile = |n: &str| {
        format!(
            "FROM busybox\nRUN --mount=type=cache,target=/cache,id=counter echo run-{n} >> /cache/runs && wc -l < /cache/runs > /seen && ls /cache\nRUN --mount=type=tmpfs,target=/scratch touch /scratch/x && test -f /scratch/x\nRUN --mount=type=cache,target=/owned,uid=1000,gid=55,mode=0750 stat -c 'owned %u %g %a' /owned > /owned-stat\n"
        )
    };
    write(d, "Dockerfile", &dockerfile("one"));
    let first = build(&a, &["-t", "cm:1", dir]);
    assert!(first.status.success(), "{}", text(&first));
    write(d, "Dockerfile", &dockerfile("two"));
    let second = build(&a, &["-t", "cm:2", dir]);
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(a.docker_ok(&["run", "--rm", "cm:1", "cat", "/seen"]), "1");
    assert_eq!(a.docker_ok(&["run", "--rm", "cm:2", "cat", "/seen"]), "2");
    // A new cache mount is empty, with the owner and mode asked for.
    assert_eq!(
        a.docker_ok(&["run", "--rm", "cm:2", "cat", "/owned-stat"]),
        "owned 1000 55 750"
    );
    let gone = a.docker(&["run", "--rm", "cm:2", "ls", "/cache/runs"]);
    assert!(
        !gone.status.success(),
        "the cache mount leaked into the image"
    );
    assert!(
        a.docker_ok(&["run", "--rm", "cm:2", "ls", "/scratch"])
            .is_empty(),
        "tmpfs contents leaked into the image"
    );

    // `system df` counts the cache; `builder prune -a` empties it, cache
    // mount included.
    let df = a.docker_ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    let count: usize = df
        .lines()
        .find_map(|l| l.strip_prefix("Build Cache "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(count >= 4, "{df}");
    let pruned = a.docker_ok(&["builder", "prune", "-af"]);
    assert!(pruned.contains("Total"), "{pruned}");
    let df = a.docker_ok(&["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    assert!(df.contains("Build Cache 0"), "{df}");
    write(d, "Dockerfile", &dockerfile("three"));
    let third = build(&a, &["-t", "cm:3", dir]);
    assert!(third.status.success(), "{}", text(&third));
    assert!(!text(&third).contains("Using cache"), "{}", text(&third));
    assert_eq!(a.docker_ok(&["run", "--rm", "cm:3", "cat", "/seen"]), "1");
    // The images built before stay usable.
    assert_eq!(a.docker_ok(&["run", "--rm", "cm:2", "cat", "/seen"]), "2");
}

/// On `--nodes 3`: a build on one server, then a longer build pinned by
/// drains to another, which reuses the first one's steps from the shared
/// cache (their layers follow to the new server) and runs only the new one;
/// then the image goes to a TLS registry and another account pulls it.
#[test]
fn the_cache_is_shared_across_servers_and_builds_push() {
    let a = AtollInstance::start_with(StartOptions {
        args: vec!["--nodes".into(), "3".into()],
        ..Default::default()
    });
    let alice = a.tenant("alice");
    let bob = a.tenant("bob");
    let busybox = test_images().busybox.path.display().to_string();
    alice.docker_ok(&["load", "-i", &busybox]);
    let ctx = tempfile::tempdir().unwrap();
    let d = ctx.path();
    let dir = d.to_str().unwrap();
    write(d, "data.txt", "shared data\n");
    let base = "FROM busybox\nCOPY data.txt /data.txt\nRUN echo step-ran > /ran && cat /data.txt\n";
    write(d, "Dockerfile", base);
    let build = |t: &Tenant, args: &[&str]| -> String {
        let mut all = vec!["build"];
        all.extend_from_slice(args);
        let out = t.docker(&all);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        t
    };
    a.operator_ok(&["server", "drain", "node-2"]);
    a.operator_ok(&["server", "drain", "node-3"]);
    let first = build(&alice, &["-t", "first", dir]);
    assert!(first.contains("shared data"), "{first}");
    a.operator_ok(&["server", "enable", "node-2"]);
    a.operator_ok(&["server", "drain", "node-1"]);
    write(
        d,
        "Dockerfile",
        &format!("{base}RUN cat /ran /data.txt > /both\n"),
    );
    let second = build(&alice, &["-t", "second", dir]);
    assert_eq!(second.matches(" ---> Using cache").count(), 2, "{second}");
    assert!(!second.contains("\nshared data"), "{second}");
    a.operator_ok(&["server", "enable", "node-1"]);
    a.operator_ok(&["server", "enable", "node-3"]);
    assert_eq!(
        alice.docker_ok(&["run", "--rm", "second", "cat", "/both"]),
        "step-ran\nshared data"
    );

    // Build, push, pull back as another account.
    let reg = Registry::start_secure("alice", "s3cret");
    let server = reg.addr();
    let app = format!("{server}/alice/built:1");
    build(&alice, &["-t", &app, dir]);
    alice.docker_ok(&["login", &server, "-u", "alice", "-p", "s3cret"]);
    let pushed = alice.docker_ok(&["push", &app]);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    let err = bob.docker_err(&["pull", &app]);
    assert!(
        err.contains("authentication required") || err.contains("unauthorized"),
        "{err}"
    );
    bob.docker_ok(&["login", &server, "-u", "alice", "-p", "s3cret"]);
    bob.docker_ok(&["pull", &app]);
    assert_eq!(
        bob.docker_ok(&["run", "--rm", &app, "cat", "/both"]),
        "step-ran\nshared data"
    );
    // The pulled image seeds the cache of an account that never built it
    // (`--cache-from`, as CI jobs use it): every step is reused, and the
    // result is that image.
    bob.docker_ok(&["load", "-i", &busybox]);
    let pulled_id = bob.docker_ok(&["image", "inspect", "-f", "{{.Id}}", &app]);
    let seeded = build(&bob, &["--cache-from", &app, dir]);
    assert_eq!(seeded.matches(" ---> Using cache").count(), 3, "{seeded}");
    assert!(!seeded.contains("Running in"), "{seeded}");
    assert!(
        seeded.contains(&format!("Successfully built {}", &pulled_id[7..19])),
        "{seeded}"
    );
    // Control: changed content does not match the source from its COPY on.
    write(d, "data.txt", "other data\n");
    let missed = build(&bob, &["--cache-from", &app, dir]);
    assert_eq!(missed.matches(" ---> Using cache").count(), 0, "{missed}");
    assert!(
        missed.contains("Running in") && missed.contains("other data"),
        "{missed}"
    );
    // FROM an image the account lacks is pulled with the CLI's credentials
    // (X-Registry-Config); without them, the registry refuses.
    bob.docker_ok(&["rmi", &app]);
    let from = tempfile::tempdir().unwrap();
    let fdir = from.path().to_str().unwrap();
    write(
        from.path(),
        "Dockerfile",
        &format!("FROM {app}\nRUN cat /both\n"),
    );
    let pulled = build(&bob, &["-t", "derived", fdir]);
    assert!(pulled.contains("Pulling from alice/built"), "{pulled}");
    assert!(pulled.contains("step-ran\nshared data"), "{pulled}");
    let carol = a.tenant("carol");
    let refused = text(&carol.docker(&["build", fdir]));
    assert!(
        refused.contains("authentication required") || refused.contains("unauthorized"),
        "{refused}"
    );
}

#[test]
fn build_options_onbuild_and_dockerfile_locations() {
    let a = AtollInstance::start();
    a.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let d = ctx.path();
    let dir = d.to_str().unwrap();
    // ONBUILD triggers run in the child's build, first.
    write(
        d,
        "base/Dockerfile",
        "FROM busybox\nONBUILD RUN echo trigger-ran > /trigger\n",
    );
    let out = build(
        &a,
        &[
            "-t",
            "onbuild-base",
            "-f",
            &format!("{dir}/base/Dockerfile"),
            dir,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    write(
        d,
        "child.Dockerfile",
        "FROM onbuild-base\nRUN cat /trigger && cat /etc/hosts | grep -q '10.9.8.7.*buildhost' && echo host-ok\n",
    );
    let iid = d.join("iid");
    let out = build(
        &a,
        &[
            "-f",
            &format!("{dir}/child.Dockerfile"),
            "--label",
            "team=blue",
            "--add-host",
            "buildhost:10.9.8.7",
            "-m",
            "64m",
            "--network",
            "none",
            "--iidfile",
            iid.to_str().unwrap(),
            dir,
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("# Executing 1 build trigger"), "{t}");
    assert!(t.contains("trigger-ran") && t.contains("host-ok"), "{t}");
    let id = std::fs::read_to_string(&iid).unwrap();
    assert!(id.starts_with("sha256:"), "{id}");
    let labels = a.docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.Labels.team}} {{json .Config.OnBuild}}",
        &id,
    ]);
    assert_eq!(labels, "blue null");
    // The Dockerfile on stdin.
    let out = a.docker_stdin(
        &["build", "-q", "-f", "-", dir],
        b"FROM busybox\nRUN echo from-stdin > /s\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let sid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        a.docker_ok(&["run", "--rm", &sid, "cat", "/s"]),
        "from-stdin"
    );
    // A package ceiling still applies to build steps.
    let df = format!("{dir}/child.Dockerfile");
    let err = text(&build(&a, &["--no-cache", "-m", "900g", "-f", &df, dir]));
    assert!(
        err.contains("no package offers 900 GB memory or more"),
        "{err}"
    );
}

/// A 1 GB context streams to the head and builds; a tenant's builds count
/// against its storage: a context or a step's layer past what is left is
/// refused, and the same build passes with room.
#[test]
fn large_contexts_and_storage_bounded_builds() {
    let a = AtollInstance::start();
    a.load_busybox();
    let ctx = tempfile::tempdir().unwrap();
    let d = ctx.path();
    let dir = d.to_str().unwrap();
    write(d, "small.txt", "small\n");
    write(d, "Dockerfile", "FROM busybox\nCOPY small.txt /small.txt\n");
    // Sparse: the CLI reads (and sends) 1 GB of zeros.
    let big = std::fs::File::create(d.join("big.bin")).unwrap();
    big.set_len(1 << 30).unwrap();
    let started = std::time::Instant::now();
    let out = build(&a, &["-t", "bigctx", dir]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("Sending build context to Docker daemon  1.074GB"),
        "{t}"
    );
    eprintln!("1 GB context build: {:?}", started.elapsed());
    std::fs::remove_file(d.join("big.bin")).unwrap();

    let alice = a.tenant("alice");
    alice.docker_ok(&["load", "-i", test_images().busybox.path.to_str().unwrap()]);
    a.operator_ok(&[
        "package", "create", "tiny", "--memory", "48M", "--disk", "16M",
    ]);
    // 130 MB: a step container holds 116 (16 of disk, 100 of logs) while
    // it runs; its 140 MB layer does not fit in what is left after it.
    a.operator_ok(&["account", "limit", "alice", "--storage", "130M"]);
    let grow = "FROM busybox\nRUN dd if=/dev/zero of=/fill bs=1M count=140 2>/dev/null\n";
    write(d, "Dockerfile", grow);
    let out = alice.docker(&["build", "-m", "48m", dir]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("account limit reached: the build step needs"),
        "{t}"
    );
    // The context alone past what is left.
    write(d, "Dockerfile", "FROM busybox\n");
    let f = std::fs::File::create(d.join("ctx.bin")).unwrap();
    f.set_len(140 << 20).unwrap();
    let t = text(&alice.docker(&["build", "-m", "48m", dir]));
    assert!(t.contains("the build context is larger than"), "{t}");
    std::fs::remove_file(d.join("ctx.bin")).unwrap();
    // With room, the same build passes.
    a.operator_ok(&["account", "limit", "alice", "--storage", "400M"]);
    write(d, "Dockerfile", grow);
    let out = alice.docker(&["build", "-m", "48m", "-t", "grown", dir]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `ADD <url>`: the head downloads from addresses it may reach (the public
/// internet, and networks the operator allows: 127.0.0.2 here), never from
/// its own loopback, not even through a redirect.
#[test]
fn add_downloads_urls_from_reachable_addresses_only() {
    let a = AtollInstance::start_with(StartOptions {
        args: vec!["--build-url-allow".into(), "127.0.0.2/32".into()],
        ..Default::default()
    });
    a.load_busybox();
    let allowed = FileServer::start("127.0.0.2");
    let refused = FileServer::start("127.0.0.1");
    let v1 = b"downloaded v1\n".to_vec();
    allowed.set(
        "/files/app.txt",
        Route::File {
            body: v1.clone(),
            last_modified: Some("Sat, 03 Feb 2001 04:05:06 GMT".into()),
        },
    );
    refused.set(
        "/secret",
        Route::File {
            body: b"head-only secret\n".to_vec(),
            last_modified: None,
        },
    );
    allowed.set("/to-loopback", Route::Redirect(refused.url("/secret")));
    let ctx = tempfile::tempdir().unwrap();
    let d = ctx.path();
    let dir = d.to_str().unwrap();
    let url = allowed.url("/files/app.txt");
    let sum = testkit::sha256_hex(&v1);
    write(
        d,
        "Dockerfile",
        &format!(
            "FROM busybox\nADD {url} /srv/\nADD --chmod=644 --checksum=sha256:{sum} {url} /srv/renamed.txt\nRUN cat /srv/app.txt /srv/renamed.txt\n"
        ),
    );
    let out = build(&a, &["-t", "dl", dir]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("downloaded v1\ndownloaded v1"), "{t}");
    // Docker's metadata: mode 600 (unless --chmod), the server's mtime.
    let ls = a.docker_ok(&["run", "--rm", "dl", "ls", "-ln", "--full-time", "/srv"]);
    let line = |name: &str| {
        ls.lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} missing: {ls}"))
            .to_string()
    };
    assert!(line("app.txt").starts_with("-rw-------"), "{ls}");
    assert!(line("app.txt").contains("2001-02-03 04:05:06"), "{ls}");
    assert!(line("renamed.txt").starts_with("-rw-r--r--"), "{ls}");

    // The same content again: reused (it is downloaded to know).
    let again = text(&build(&a, &[dir]));
    assert_eq!(again.matches(" ---> Using cache").count(), 3, "{again}");
    // New content: the first ADD misses, the pinned one fails.
    allowed.set(
        "/files/app.txt",
        Route::File {
            body: b"downloaded v2\n".to_vec(),
            last_modified: None,
        },
    );
    let changed = text(&build(&a, &[dir]));
    assert_eq!(changed.matches(" ---> Using cache").count(), 0, "{changed}");
    assert!(
        changed.contains(&format!(
            "checksum mismatch for {url}: expected sha256:{sum}, got sha256:"
        )),
        "{changed}"
    );

    // The head's loopback is out of reach, directly or by a redirect, and
    // never dialled; the server is there (control: a client reaches it).
    for (path, source) in [
        ("direct", refused.url("/secret")),
        ("redirect", allowed.url("/to-loopback")),
    ] {
        write(d, "Dockerfile", &format!("FROM busybox\nADD {source} /s\n"));
        let t = text(&build(&a, &[dir]));
        assert!(
            t.contains("no address it may reach") && !t.contains("head-only secret"),
            "{path}: {t}"
        );
    }
    assert_eq!(refused.hits(), 0);
    let reply = testkit::http::send_tcp(
        &refused.addr().to_string(),
        &testkit::http::Request::get("/secret"),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(reply.text(), "head-only secret\n");
    assert_eq!(refused.hits(), 1);

    // Docker's errors for the rest.
    write(
        d,
        "Dockerfile",
        &format!("FROM busybox\nADD {} /m\n", allowed.url("/missing")),
    );
    let t = text(&build(&a, &[dir]));
    assert!(
        t.contains(&format!(
            "failed to GET {} with status 404 Not Found: no such file",
            allowed.url("/missing")
        )),
        "{t}"
    );
    write(d, "Dockerfile", &format!("FROM busybox\nCOPY {url} /c\n"));
    let t = text(&build(&a, &[dir]));
    assert!(t.contains("source can't be a URL for COPY"), "{t}");
    write(
        d,
        "Dockerfile",
        &format!("FROM busybox\nADD --checksum=sha256:{sum} Dockerfile /c\n"),
    );
    let t = text(&build(&a, &[dir]));
    assert!(
        t.contains("checksum can't be specified for non-HTTP(S) sources"),
        "{t}"
    );
}
