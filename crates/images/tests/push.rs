//! `RegistryClient::push` against Debian's `docker-registry` (plain, and TLS
//! with htpasswd), checked with skopeo as an independent client, and against
//! small fake registries that stall or change what they were sent.

use std::convert::Infallible;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use images::registry::{
    Credentials, PullProgress, PulledLayer, PushImage, PushProgress, PushedManifest, RegistryClient,
};
use images::{BlobStore, Digest, ImageError, reference::Reference};
use testkit::registry::Registry;

fn new_store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    (dir, store)
}

/// An image loaded from a test archive: its config and layers, in `store`.
fn load(path: &std::path::Path, store: &BlobStore) -> (Digest, Vec<PulledLayer>) {
    let mut loaded =
        images::archive::load_archive(std::fs::File::open(path).unwrap(), store).unwrap();
    let img = loaded.remove(0);
    let layers = img
        .layers
        .iter()
        .map(|l| PulledLayer {
            blob: l.blob.clone(),
            diff_id: l.diff_id.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
        })
        .collect();
    (img.config, layers)
}

async fn push(
    client: &RegistryClient,
    reference: &str,
    creds: Option<&Credentials>,
    store: &BlobStore,
    (config, layers): &(Digest, Vec<PulledLayer>),
) -> (Result<PushedManifest, ImageError>, Vec<PushProgress>) {
    let r = Reference::parse(reference).unwrap();
    let mut events = Vec::new();
    let mut record = |p: PushProgress| events.push(p);
    let image = PushImage { config, layers };
    let res = assert_send(client.push(&r, creds, store, image, &mut record)).await;
    (res, events)
}

/// The head runs pushes on a multi-threaded runtime: the future must be Send.
fn assert_send<T: Send>(t: T) -> T {
    t
}

/// `skopeo inspect` of a reference on a plain-HTTP registry: (manifest
/// digest, config digest, layer digests) as skopeo reads them.
fn skopeo_inspect(reference: &str, creds: Option<&Credentials>) -> (String, String, Vec<String>) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false", "--raw"]);
    if let Some(c) = creds {
        cmd.arg(format!("--creds={}:{}", c.username, c.password));
    }
    let out = cmd.arg(format!("docker://{reference}")).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    (
        Digest::of(&out.stdout).to_string(),
        manifest["config"]["digest"].as_str().unwrap().to_string(),
        layers,
    )
}

/// `skopeo copy` to a directory: skopeo fetches every blob and checks it
/// against its digest, so this fails on anything the registry holds wrong.
fn skopeo_copy_verifies(reference: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", dir.path().join("img").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count(events: &[PushProgress], f: impl Fn(&PushProgress) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

/// Upload (in chunks), skopeo reading back exactly what was pushed, a
/// second push uploading nothing, a push to another repository mounting
/// every blob, and a pull giving back the same image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_in_chunks_then_mounts_and_skips_what_the_registry_has() {
    let images = testkit::testimages::test_images();
    let reg = Registry::start();
    let (_dir, store) = new_store();
    let image = load(&images.multilayer.path, &store);
    assert!(image.1.len() >= 3);
    // Small chunks: every layer above 64 KiB goes up in several PATCHes.
    let client = RegistryClient::new(vec![]).with_upload_chunk(64 << 10);
    let reference = format!("{}/push/layers:1", reg.addr());
    let (res, events) = push(&client, &reference, None, &store, &image).await;
    let pushed = res.unwrap();

    let (digest, config, layers) = skopeo_inspect(&reference, None);
    assert_eq!(digest, pushed.digest.to_string());
    assert_eq!(config, image.0.to_string());
    assert_eq!(
        layers,
        image
            .1
            .iter()
            .map(|l| l.blob.to_string())
            .collect::<Vec<_>>()
    );
    skopeo_copy_verifies(&reference);
    // The registry's access log shows the chunked path was taken.
    let log = reg.access_log();
    let patches = log
        .lines()
        .filter(|l| l.contains("\"PATCH /v2/push/layers/blobs/uploads/"))
        .count();
    assert!(patches > image.1.len(), "{patches} PATCH requests:\n{log}");

    // What docker push prints, per layer: Preparing, Pushing…, Pushed.
    for l in &image.1 {
        let id = l.diff_id.hex()[..12].to_string();
        let mine: Vec<&PushProgress> = events
            .iter()
            .filter(|e| match e {
                PushProgress::Preparing { id: i }
                | PushProgress::Pushed { id: i }
                | PushProgress::Pushing { id: i, .. } => *i == id,
                _ => false,
            })
            .collect();
        assert_eq!(
            mine.first(),
            Some(&&PushProgress::Preparing { id: id.clone() })
        );
        assert_eq!(mine.last(), Some(&&PushProgress::Pushed { id: id.clone() }));
        assert!(mine.contains(&&PushProgress::Pushing {
            id: id.clone(),
            current: l.size,
            total: l.size
        }));
    }

    // Again: every layer exists, nothing is uploaded, the digest is the same.
    let (res, events) = push(&client, &reference, None, &store, &image).await;
    assert_eq!(res.unwrap().digest, pushed.digest);
    assert_eq!(
        count(&events, |e| matches!(e, PushProgress::AlreadyExists { .. })),
        image.1.len()
    );
    assert_eq!(
        count(&events, |e| matches!(e, PushProgress::Pushing { .. })),
        0
    );

    // Another repository of the same registry: mounted, not uploaded.
    let other = format!("{}/push/copy:2", reg.addr());
    let (res, events) = push(&client, &other, None, &store, &image).await;
    assert_eq!(res.unwrap().digest, pushed.digest);
    assert_eq!(
        count(
            &events,
            |e| matches!(e, PushProgress::Mounted { from, .. } if from == "push/layers")
        ),
        image.1.len(),
        "{events:?}"
    );
    assert_eq!(
        count(&events, |e| matches!(e, PushProgress::Pushing { .. })),
        0
    );
    skopeo_copy_verifies(&other);

    // Pulled back into an empty store: the same image, bit for bit.
    let (_dir2, fresh) = new_store();
    let mut pulled_events = Vec::new();
    let pulled = client
        .pull(
            &Reference::parse(&other).unwrap(),
            &fresh,
            &mut |p: PullProgress| pulled_events.push(p),
        )
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, pushed.digest);
    assert_eq!(pulled.config, image.0);
    assert_eq!(
        pulled.layers.iter().map(|l| &l.blob).collect::<Vec<_>>(),
        image.1.iter().map(|l| &l.blob).collect::<Vec<_>>()
    );
    assert_eq!(fresh.read(&pulled.manifest_digest).unwrap(), pushed.bytes);
}

/// Over TLS with htpasswd: refused without credentials (nothing stored),
/// accepted with them, and what skopeo pushes comes back through a pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_a_private_tls_registry_only_with_credentials() {
    let images = testkit::testimages::test_images();
    let reg = Registry::start_secure("alice", "s3cret");
    let (_dir, store) = new_store();
    let image = load(&images.busybox.path, &store);
    let client = RegistryClient::new(vec![]);
    let reference = format!("{}/alice/busybox:1", reg.addr());

    let (res, _) = push(&client, &reference, None, &store, &image).await;
    match res {
        Err(ImageError::Unauthorized(m)) => {
            assert!(m.contains("authentication required"), "{m}")
        }
        other => panic!("anonymous push: {other:?}"),
    }
    let wrong = Credentials::basic("alice", "nope");
    let (res, _) = push(&client, &reference, Some(&wrong), &store, &image).await;
    assert!(matches!(res, Err(ImageError::Unauthorized(_))), "{res:?}");
    // Positive control: the same push with alice's password.
    let alice = Credentials::basic("alice", "s3cret");
    let (res, events) = push(&client, &reference, Some(&alice), &store, &image).await;
    let pushed = res.unwrap();
    assert_eq!(
        count(&events, |e| matches!(e, PushProgress::Pushed { .. })),
        1
    );
    let (_dir2, fresh) = new_store();
    let pulled = client
        .pull_with_credentials(
            &Reference::parse(&reference).unwrap(),
            Some(&alice),
            &fresh,
            &Default::default(),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, pushed.digest);
    assert_eq!(pulled.config, image.0);
}

// ---------------------------------------------------------------- fake registries

/// Answers every request with `answer(method, path)`; records what it saw.
struct Fake {
    addr: String,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

type Answer = fn(&str, &str) -> Option<Response<Full<Bytes>>>;

impl Fake {
    async fn start(answer: Answer) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let _ = req.into_body().collect().await;
                            log.lock().unwrap().push(format!("{method} {path}"));
                            match answer(&method, &path) {
                                Some(r) => Ok::<_, Infallible>(r),
                                // Never answers.
                                None => std::future::pending().await,
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Fake { addr, seen, task }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: u16, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::new())).unwrap()
}

/// A registry that takes uploads up to their last byte and then says nothing.
fn silent_after_upload(method: &str, path: &str) -> Option<Response<Full<Bytes>>> {
    match method {
        "HEAD" => Some(reply(404, &[])),
        "POST" => Some(reply(202, &[("Location", "/v2/x/blobs/uploads/u1")])),
        _ if path.starts_with("/v2/x/blobs/uploads/u1") => None,
        _ => Some(reply(404, &[])),
    }
}

/// A registry that stores every blob under some other digest.
fn changes_digests(method: &str, path: &str) -> Option<Response<Full<Bytes>>> {
    let other = Digest::of(b"something else").to_string();
    Some(match method {
        "HEAD" => reply(404, &[]),
        "POST" => reply(202, &[("Location", "/v2/x/blobs/uploads/u1")]),
        "PUT" if path.starts_with("/v2/x/blobs/uploads/u1?digest=") => {
            reply(201, &[("Docker-Content-Digest", &other)])
        }
        _ => reply(404, &[]),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_stalls_or_changes_blobs_fails_the_push() {
    let images = testkit::testimages::test_images();
    let (_dir, store) = new_store();
    let image = load(&images.busybox.path, &store);
    let client = RegistryClient::new(vec![])
        .with_timeouts(Duration::from_secs(2), Duration::from_millis(500));

    let fake = Fake::start(silent_after_upload).await;
    let started = std::time::Instant::now();
    let (res, _) = push(&client, &format!("{}/x:1", fake.addr), None, &store, &image).await;
    let m = res.unwrap_err().to_string();
    assert!(m.contains("stalled: nothing moved within 500ms"), "{m}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // It really got the whole upload before going silent.
    assert!(
        fake.seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.starts_with("PUT /v2/x/blobs/uploads/u1?digest=")),
        "{:?}",
        fake.seen.lock().unwrap()
    );

    let fake = Fake::start(changes_digests).await;
    let (res, _) = push(&client, &format!("{}/x:1", fake.addr), None, &store, &image).await;
    let m = res.unwrap_err().to_string();
    assert!(
        m.contains(&format!("blob {} was stored as", image.1[0].blob)),
        "{m}"
    );
    // No manifest was put after the refusal.
    assert!(
        !fake
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.contains("/manifests/")),
        "{:?}",
        fake.seen.lock().unwrap()
    );
}

/// Token auth with the identity token a login returns: the login gets one,
/// pulls and pushes trade it (an OAuth2 refresh grant) for scoped tokens,
/// and one the issuer never gave is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_tokens_from_a_login_stand_in_for_the_password() {
    use testkit::{TokenIssuer, TokenUser};
    let images = testkit::testimages::test_images();
    let issuer = TokenIssuer::start(vec![TokenUser::owner("alice", "alice-pw")]);
    let reg = Registry::start_token(&issuer, "alice");
    let client =
        RegistryClient::new(vec![]).with_timeouts(Duration::from_secs(5), Duration::from_secs(5));
    let identity = client
        .login(&reg.addr(), &Credentials::basic("alice", "alice-pw"))
        .await
        .unwrap()
        .expect("an identity token");
    let (_dir, store) = new_store();
    let image = load(&images.busybox.path, &store);
    let reference = format!("{}/alice/bb:1", reg.addr());
    let creds = Credentials::identity("alice", identity);
    let (res, _) = push(&client, &reference, Some(&creds), &store, &image).await;
    res.unwrap();
    assert!(
        issuer
            .issued()
            .iter()
            .any(|i| i.by_refresh && i.status == 200)
    );

    let forged = Credentials::identity("alice", "refresh-alice-999");
    let (_dir2, fresh) = new_store();
    let res = client
        .pull_with_credentials(
            &Reference::parse(&reference).unwrap(),
            Some(&forged),
            &fresh,
            &Default::default(),
            &mut |_| {},
        )
        .await;
    match res {
        Err(ImageError::Unauthorized(m)) => assert!(m.contains("invalid refresh token"), "{m}"),
        other => panic!("forged identity token: {other:?}"),
    }
}

/// A registry that asks for a client certificate: the operator's
/// `client.cert`/`client.key` beside its CA are shown; without them the
/// handshake fails, naming TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_from_certs_d_are_shown_to_the_registry() {
    let images = testkit::testimages::test_images();
    let reg = Registry::start_mtls("alice", "s3cret");
    let reference = reg.push_archive(&images.busybox.path, "alice/busybox:1");
    let alice = Credentials::basic("alice", "s3cret");
    let r = Reference::parse(&reference).unwrap();
    let (_dir, store) = new_store();
    let pulled = RegistryClient::new(vec![])
        .pull_with_credentials(&r, Some(&alice), &store, &Default::default(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(pulled.config.as_str(), images.busybox.id);

    // The same certs.d without the client certificate: refused in the handshake.
    let bare = tempfile::tempdir().unwrap();
    let dir = bare.path().join(reg.addr());
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(reg.certs_dir().join("ca.crt"), dir.join("ca.crt")).unwrap();
    let (_dir2, fresh) = new_store();
    let e = RegistryClient::new(vec![])
        .with_certs_dir(bare.path())
        .pull_with_credentials(&r, Some(&alice), &fresh, &Default::default(), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("received fatal alert: BadCertificate"), "{e}");
    assert!(e.contains(&reg.addr()), "{e}");
}
