//! Pull tests against Debian's real `docker-registry` (fed by `skopeo`) and against
//! small fake registries on loopback that misbehave on purpose.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use images::registry::{
    Allowance, Credentials, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, Platform, PullProgress,
    PulledImage, RegistryClient,
};
use images::{BlobStore, Digest, ImageError, reference::Reference};
use serde_json::json;
use sha2::Digest as _;

// ---------------------------------------------------------------- helpers

fn new_store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    (dir, store)
}

fn tmp_files(store: &BlobStore) -> usize {
    std::fs::read_dir(store.tmp_dir()).unwrap().count()
}

async fn pull(
    client: &RegistryClient,
    reference: &str,
    store: &BlobStore,
) -> (Result<PulledImage, ImageError>, Vec<PullProgress>) {
    pull_owning(client, reference, store, &HashSet::new()).await
}

/// A pull by an account that holds the blobs `owns` already.
async fn pull_owning(
    client: &RegistryClient,
    reference: &str,
    store: &BlobStore,
    owns: &HashSet<Digest>,
) -> (Result<PulledImage, ImageError>, Vec<PullProgress>) {
    let r = Reference::parse(reference).unwrap();
    let mut events = Vec::new();
    let mut record = |p: PullProgress| events.push(p);
    let allowance = Allowance {
        owns: owns.clone(),
        bytes: None,
    };
    let res =
        assert_send(client.pull_with_credentials(&r, None, store, &allowance, &mut record)).await;
    (res, events)
}

async fn pull_as(
    client: &RegistryClient,
    reference: &str,
    creds: Option<&Credentials>,
    store: &BlobStore,
) -> (Result<PulledImage, ImageError>, Vec<PullProgress>) {
    let r = Reference::parse(reference).unwrap();
    let mut events = Vec::new();
    let mut record = |p: PullProgress| events.push(p);
    let res = assert_send(client.pull_with_credentials(
        &r,
        creds,
        store,
        &Allowance::default(),
        &mut record,
    ))
    .await;
    (res, events)
}

/// The head spawns pulls onto a multi-threaded runtime, so the future must be Send.
fn assert_send<T: Send>(t: T) -> T {
    t
}

/// Checks every layer blob against its diff_id independently of the client.
fn assert_layers_verified(store: &BlobStore, img: &PulledImage) {
    assert!(store.has(&img.manifest_digest));
    assert!(store.has(&img.image_manifest));
    assert!(store.has(&img.config));
    let config: serde_json::Value =
        serde_json::from_slice(&store.read(&img.config).unwrap()).unwrap();
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        img.layers
            .iter()
            .map(|l| l.diff_id.to_string())
            .collect::<Vec<_>>(),
        diff_ids
    );
    for l in &img.layers {
        assert_eq!(store.size(&l.blob).unwrap(), l.size);
        let mut r = images::compress::decompressed(store.open_blob(&l.blob).unwrap()).unwrap();
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut r, &mut h).unwrap();
        assert_eq!(
            format!("sha256:{}", hex::encode(h.finalize())),
            l.diff_id.as_str()
        );
    }
    assert_eq!(tmp_files(store), 0, "temp files left behind");
}

fn expect_err(res: Result<PulledImage, ImageError>) -> ImageError {
    match res {
        Ok(img) => panic!("pull succeeded unexpectedly: {img:?}"),
        Err(e) => e,
    }
}

/// Blocking HTTP/1.0 request, good enough to poll and feed the real registry.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, resp[split + 4..].to_vec())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------- real registry

/// `docker-registry serve` on a loopback port with storage in a temp dir; killed on drop.
struct RealRegistry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

/// A CA made for a test and a server certificate it signed for 127.0.0.1.
struct TestCa {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = server.signed_by(&key, &issuer).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl RealRegistry {
    fn start() -> RealRegistry {
        Self::start_with(None)
    }

    /// Over TLS with `ca`'s server certificate.
    fn start_tls(ca: &TestCa) -> RealRegistry {
        Self::start_with(Some(ca))
    }

    fn start_with(tls: Option<&TestCa>) -> RealRegistry {
        let dir = tempfile::tempdir().unwrap();
        let tls_config = match tls {
            None => String::new(),
            Some(ca) => {
                let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
                std::fs::write(&cert, &ca.cert_pem).unwrap();
                std::fs::write(&key, &ca.key_pem).unwrap();
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                )
            }
        };
        // A port picked this way can be taken before the registry binds it: retry.
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tls_config}",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting /usr/bin/docker-registry");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                // Over TLS, a listening port is ready enough: the test's
                // first pull retries nothing, so a late start shows there.
                if TcpStream::connect(&addr).is_ok()
                    && (tls.is_some() || http(&addr, "GET", "/v2/", &[], b"").0 == 200)
                {
                    return RealRegistry {
                        child,
                        addr,
                        _dir: dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        panic!("docker-registry did not start: {log}");
    }

    /// `skopeo copy` of a local archive (`docker-archive:…`, `oci-archive:…`) into `repo_tag`.
    fn push(&self, source: &str, repo_tag: &str, extra: &[&str]) {
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(extra)
            .arg(source)
            .arg(format!("docker://{}/{repo_tag}", self.addr))
            .output()
            .expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy {source} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The manifest bytes, media type and digest the registry holds for `repo:tag`.
    fn manifest(&self, repo: &str, tag: &str) -> (Vec<u8>, String, String) {
        let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
        let (status, headers, body) = http(
            &self.addr,
            "GET",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", accept)],
            b"",
        );
        assert_eq!(status, 200);
        (
            body,
            headers["content-type"].clone(),
            headers["docker-content-digest"].clone(),
        )
    }
}

impl Drop for RealRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_digest(manifest: &[u8]) -> String {
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    m["config"]["digest"].as_str().unwrap().to_string()
}

fn archive(which: &testkit::testimages::ImageFacts, transport: &str) -> String {
    format!("{transport}:{}", which.path.display())
}

/// HTTPS, verified against the registry's CA from the certs.d layout; a
/// registry whose certificate is not trusted is a TLS error naming the
/// reason, never a fall-back to plain HTTP (even on loopback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_over_tls_with_the_registrys_ca() {
    let images = testkit::testimages::test_images();
    let ca = TestCa::new();
    let reg = RealRegistry::start_tls(&ca);
    reg.push(
        &archive(&images.busybox, "docker-archive"),
        "tls/busybox:1",
        &[],
    );
    let certs = tempfile::tempdir().unwrap();
    let reference = format!("{}/tls/busybox:1", reg.addr);
    let (_dir, store) = new_store();
    let untrusting = RegistryClient::new(vec![]).with_certs_dir(certs.path());
    let (res, _) = pull(&untrusting, &reference, &store).await;
    let e = expect_err(res).to_string();
    assert!(
        e.contains(&format!(
            "registry {}: tls: invalid peer certificate: UnknownIssuer",
            reg.addr
        )),
        "{e}"
    );
    std::fs::create_dir(certs.path().join(&reg.addr)).unwrap();
    std::fs::write(certs.path().join(&reg.addr).join("ca.crt"), &ca.ca_pem).unwrap();
    let client = RegistryClient::new(vec![]).with_certs_dir(certs.path());
    let (res, _) = pull(&client, &reference, &store).await;
    let img = res.unwrap();
    assert_eq!(img.config.as_str(), images.busybox.id);
    assert_layers_verified(&store, &img);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_an_image_pushed_by_skopeo() {
    let images = testkit::testimages::test_images();
    let reg = RealRegistry::start();
    reg.push(
        &archive(&images.busybox, "docker-archive"),
        "test/busybox:1",
        &[],
    );
    let (_, media_type, digest) = reg.manifest("test/busybox", "1");
    assert_eq!(media_type, MEDIA_DOCKER_MANIFEST);

    let (_dir, store) = new_store();
    let client = RegistryClient::new(vec![]);
    let (res, events) = pull(&client, &format!("{}/test/busybox:1", reg.addr), &store).await;
    let img = res.unwrap();
    assert_eq!(img.config.as_str(), images.busybox.id);
    assert_eq!(
        img.layers
            .iter()
            .map(|l| l.diff_id.to_string())
            .collect::<Vec<_>>(),
        images.busybox.diff_ids
    );
    assert_eq!(img.manifest_digest.as_str(), digest);
    assert_eq!(img.image_manifest, img.manifest_digest);
    assert_layers_verified(&store, &img);

    // The progress a `docker pull` prints, in order for the one layer.
    let id = img.layers[0].blob.hex()[..12].to_string();
    assert_eq!(events.first(), Some(&PullProgress::Resolving));
    assert_eq!(
        events.last(),
        Some(&PullProgress::Digest(img.manifest_digest.clone()))
    );
    let pos = |want: &PullProgress| {
        events
            .iter()
            .position(|e| e == want)
            .unwrap_or_else(|| panic!("{want:?} missing in {events:?}"))
    };
    let waiting = pos(&PullProgress::LayerWaiting { id: id.clone() });
    let verifying = pos(&PullProgress::LayerVerifying { id: id.clone() });
    let complete = pos(&PullProgress::LayerDownloadComplete { id: id.clone() });
    assert!(waiting < verifying && verifying < complete);
    let downloading: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            PullProgress::LayerDownloading {
                id: i,
                current,
                total,
            } if *i == id => Some((*current, *total)),
            _ => None,
        })
        .collect();
    assert!(!downloading.is_empty());
    assert!(downloading.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(
        downloading.last(),
        Some(&(img.layers[0].size, img.layers[0].size))
    );

    // Pulling again downloads nothing and gives the same result; a digest reference
    // resolves to the same image.
    let (res, events) = pull(&client, &format!("{}/test/busybox:1", reg.addr), &store).await;
    assert_eq!(res.unwrap(), img);
    assert!(events.contains(&PullProgress::LayerAlreadyExists { id: id.clone() }));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PullProgress::LayerDownloading { .. }))
    );
    let (res, _) = pull(
        &client,
        &format!("{}/test/busybox@{digest}", reg.addr),
        &store,
    )
    .await;
    assert_eq!(res.unwrap(), img);
}

#[tokio::test]
async fn pulls_oci_zstd_and_multilayer_images() {
    let images = testkit::testimages::test_images();
    let reg = RealRegistry::start();
    reg.push(
        &archive(&images.busybox_oci, "oci-archive"),
        "test/oci:latest",
        &[],
    );
    reg.push(
        &archive(&images.multilayer, "docker-archive"),
        "test/multi:zstd",
        &["--format", "oci", "--dest-compress-format", "zstd"],
    );
    let client = RegistryClient::new(vec![]);
    let (_dir, store) = new_store();

    // No tag means latest.
    let (res, _) = pull(&client, &format!("{}/test/oci", reg.addr), &store).await;
    let img = res.unwrap();
    assert_eq!(img.config.as_str(), images.busybox_oci.id);
    assert_eq!(
        img.layers
            .iter()
            .map(|l| l.diff_id.to_string())
            .collect::<Vec<_>>(),
        images.busybox_oci.diff_ids
    );
    assert_eq!(
        img.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_layers_verified(&store, &img);

    let (res, events) = pull(&client, &format!("{}/test/multi:zstd", reg.addr), &store).await;
    let img = res.unwrap();
    // Converting to OCI rewrites the config, so its digest is not the archive's id.
    let (manifest, _, _) = reg.manifest("test/multi", "zstd");
    assert_eq!(img.config.as_str(), config_digest(&manifest));
    assert_eq!(img.layers.len(), 3);
    assert_eq!(
        img.layers
            .iter()
            .map(|l| l.diff_id.to_string())
            .collect::<Vec<_>>(),
        images.multilayer.diff_ids
    );
    for l in &img.layers {
        assert_eq!(l.media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
        let id = l.blob.hex()[..12].to_string();
        assert!(events.contains(&PullProgress::LayerDownloadComplete { id }));
    }
    assert_layers_verified(&store, &img);
}

#[tokio::test]
async fn picks_the_platform_from_an_index() {
    let images = testkit::testimages::test_images();
    let reg = RealRegistry::start();
    reg.push(
        &archive(&images.busybox, "docker-archive"),
        "test/multiarch:amd64",
        &["--format", "oci"],
    );
    reg.push(
        &archive(&images.multilayer, "docker-archive"),
        "test/multiarch:arm64",
        &["--format", "oci"],
    );
    let (amd, amd_type, amd_digest) = reg.manifest("test/multiarch", "amd64");
    let (arm, arm_type, arm_digest) = reg.manifest("test/multiarch", "arm64");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_INDEX,
        "manifests": [
            {"mediaType": arm_type, "digest": arm_digest, "size": arm.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": amd_type, "digest": amd_digest, "size": amd.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }))
    .unwrap();
    let (status, _, body) = http(
        &reg.addr,
        "PUT",
        "/v2/test/multiarch/manifests/multi",
        &[("Content-Type", MEDIA_OCI_INDEX)],
        &index,
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let index_digest = Digest::of(&index);

    let (_dir, store) = new_store();
    let amd64 = Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    };
    let client = RegistryClient::new(vec![]).with_platform(amd64);
    let (res, events) = pull(
        &client,
        &format!("{}/test/multiarch:multi", reg.addr),
        &store,
    )
    .await;
    let img = res.unwrap();
    assert_eq!(img.config.as_str(), config_digest(&amd));
    assert_eq!(
        img.layers
            .iter()
            .map(|l| l.diff_id.to_string())
            .collect::<Vec<_>>(),
        images.busybox.diff_ids
    );
    assert_eq!(img.manifest_digest, index_digest);
    assert_eq!(img.image_manifest.as_str(), amd_digest);
    assert_eq!(
        events.last(),
        Some(&PullProgress::Digest(index_digest.clone()))
    );
    assert_layers_verified(&store, &img);

    let arm64 = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: None,
    };
    let client = RegistryClient::new(vec![]).with_platform(arm64);
    let (res, _) = pull(
        &client,
        &format!("{}/test/multiarch@{index_digest}", reg.addr),
        &store,
    )
    .await;
    let img = res.unwrap();
    assert_eq!(img.config.as_str(), config_digest(&arm));
    assert_eq!(img.layers.len(), 3);
    assert_eq!(img.image_manifest.as_str(), arm_digest);

    let s390 = Platform {
        os: "linux".into(),
        architecture: "s390x".into(),
        variant: None,
    };
    let client = RegistryClient::new(vec![]).with_platform(s390);
    let (res, _) = pull(
        &client,
        &format!("{}/test/multiarch:multi", reg.addr),
        &store,
    )
    .await;
    let e = expect_err(res);
    assert_eq!(
        e.to_string(),
        "no matching manifest for linux/s390x in the manifest list entries"
    );
}

#[tokio::test]
async fn unknown_tags_and_repositories_are_not_found() {
    let images = testkit::testimages::test_images();
    let reg = RealRegistry::start();
    reg.push(
        &archive(&images.busybox, "docker-archive"),
        "test/busybox:1",
        &[],
    );
    let client = RegistryClient::new(vec![]);
    let (_dir, store) = new_store();

    let (res, _) = pull(&client, &format!("{}/test/busybox:nope", reg.addr), &store).await;
    match expect_err(res) {
        ImageError::ManifestUnknown(m) => assert_eq!(
            m,
            format!(
                "manifest for {}/test/busybox:nope not found: manifest unknown: manifest unknown",
                reg.addr
            )
        ),
        e => panic!("unexpected {e:?}"),
    }
    let (res, _) = pull(&client, &format!("{}/no/such/repo", reg.addr), &store).await;
    match expect_err(res) {
        ImageError::ManifestUnknown(m) => assert!(m.contains("not found"), "{m}"),
        e => panic!("unexpected {e:?}"),
    }
    let missing = Digest::of(b"no such manifest");
    let (res, _) = pull(
        &client,
        &format!("{}/test/busybox@{missing}", reg.addr),
        &store,
    )
    .await;
    assert!(matches!(expect_err(res), ImageError::ManifestUnknown(_)));
    assert!(store.list().unwrap().is_empty());
    assert_eq!(tmp_files(&store), 0);
}

// ---------------------------------------------------------------- without a registry

#[tokio::test]
async fn unreachable_and_https_registries_fail_clearly() {
    let (_dir, store) = new_store();
    let client = RegistryClient::new(vec![]);
    let port = free_port(); // nothing listens there any more
    let (res, events) = pull(&client, &format!("127.0.0.1:{port}/test/busybox"), &store).await;
    let e = expect_err(res);
    assert!(matches!(e, ImageError::Registry(_)));
    let m = e.to_string();
    assert!(
        m.contains(&format!("registry 127.0.0.1:{port}")) && m.contains("refused"),
        "{m}"
    );
    assert_eq!(events, vec![PullProgress::Resolving]);

    // Other registries are HTTPS only (none is reachable from here: the
    // lookup fails, or a proxy answers with its own certificate); Docker Hub
    // names go to its API host.
    for (r, url) in [
        (
            "busybox",
            "https://registry-1.docker.io/v2/library/busybox/manifests/latest",
        ),
        (
            "quay.io/foo/bar:1",
            "https://quay.io/v2/foo/bar/manifests/1",
        ),
        (
            "10.1.2.3:5000/x",
            "https://10.1.2.3:5000/v2/x/manifests/latest",
        ),
    ] {
        let (res, _) = pull(&client, r, &store).await;
        let m = expect_err(res).to_string();
        assert!(m.contains(&format!("Get \"{url}\": ")), "{r}: {m}");
    }
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test]
async fn a_silent_registry_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and holds connections without ever answering.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let (_dir, store) = new_store();
    let client = RegistryClient::new(vec![])
        .with_timeouts(Duration::from_secs(2), Duration::from_millis(300));
    let (res, _) = pull(&client, &format!("{addr}/test/img"), &store).await;
    let m = expect_err(res).to_string();
    // The first thing said to it is a TLS hello.
    assert!(
        m.contains(&format!(
            "TLS handshake with {addr}: no answer within 300ms"
        )),
        "{m}"
    );
    holder.abort();
}

// ---------------------------------------------------------------- fake registries

/// A tiny image to serve from fake registries.
#[derive(Clone)]
struct FakeImage {
    layer: Bytes,
    layer_digest: Digest,
    diff_id: Digest,
    config: Bytes,
    config_digest: Digest,
    manifest: Bytes,
    manifest_digest: Digest,
}

impl FakeImage {
    fn new(content: &[u8]) -> FakeImage {
        FakeImage::with_diff_id(content, None)
    }

    /// `diff_id_override` puts a wrong diff_id into the config.
    fn with_diff_id(content: &[u8], diff_id_override: Option<Digest>) -> FakeImage {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "hello.txt", content).unwrap();
        let tar = b.into_inner().unwrap();
        let diff_id = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let layer = Bytes::from(gz.finish().unwrap());
        let layer_digest = Digest::of(&layer);
        let config = Bytes::from(
            serde_json::to_vec(&json!({
                "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id_override.unwrap_or_else(|| diff_id.clone())]}
            }))
            .unwrap(),
        );
        let config_digest = Digest::of(&config);
        let manifest = Bytes::from(
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_DOCKER_MANIFEST,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": config_digest, "size": config.len()},
                "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                            "digest": layer_digest, "size": layer.len()}]
            }))
            .unwrap(),
        );
        let manifest_digest = Digest::of(&manifest);
        FakeImage {
            layer,
            layer_digest,
            diff_id,
            config,
            config_digest,
            manifest,
            manifest_digest,
        }
    }

    /// Answers as a well-behaved registry holding this image as `test/img:1`.
    fn serve(&self, path: &str) -> Response<Full<Bytes>> {
        let manifest_paths = [
            "/v2/test/img/manifests/1".to_string(),
            format!("/v2/test/img/manifests/{}", self.manifest_digest),
        ];
        if path == "/v2/" {
            return reply(200, &[], "{}");
        }
        if manifest_paths.iter().any(|p| p == path) {
            return reply(
                200,
                &[
                    ("Content-Type", MEDIA_DOCKER_MANIFEST),
                    ("Docker-Content-Digest", self.manifest_digest.as_str()),
                ],
                self.manifest.clone(),
            );
        }
        if path == format!("/v2/test/img/blobs/{}", self.config_digest) {
            return reply(200, &[], self.config.clone());
        }
        if path == format!("/v2/test/img/blobs/{}", self.layer_digest) {
            return reply(200, &[], self.layer.clone());
        }
        reply(
            404,
            &[("Content-Type", "application/json")],
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        )
    }
}

fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(StatusCode::from_u16(status).unwrap());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(body.into())).unwrap()
}

/// One request as a fake registry saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    /// The Host header: lets a fake name itself in challenges.
    host: String,
    authorization: Option<String>,
}

type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// An HTTP server on a loopback port answering with `handler`, recording requests.
struct FakeRegistry {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeRegistry {
    async fn start(
        handler: impl Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> FakeRegistry {
        let handler: Handler = Arc::new(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, log) = (handler.clone(), log.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let s = Seen {
                            method: req.method().clone(),
                            path: req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            host: req
                                .headers()
                                .get("host")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default(),
                            authorization: req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_string()),
                        };
                        log.lock().unwrap().push(s.clone());
                        let resp = handler(&s);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeRegistry { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deterministic incompressible bytes, so layers span several write chunks.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_registry_serves_a_good_image() {
    let img = FakeImage::new(&noise(3 << 20));
    assert!(img.layer.len() > 3 << 20);
    let i = img.clone();
    let reg = FakeRegistry::start(move |s| i.serve(&s.path)).await;
    let (_dir, store) = new_store();
    let client = RegistryClient::new(vec![]);
    let (res, _) = pull(&client, &format!("{}/test/img:1", reg.addr), &store).await;
    let got = res.unwrap();
    assert_eq!(got.config, img.config_digest);
    assert_eq!(got.manifest_digest, img.manifest_digest);
    assert_eq!(got.layers[0].blob, img.layer_digest);
    assert_eq!(got.layers[0].diff_id, img.diff_id);
    assert_layers_verified(&store, &got);
}

/// A registry's answer for a blob it does not have.
fn blob_unknown() -> Response<Full<Bytes>> {
    reply(
        404,
        &[],
        r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
    )
}

fn reused(events: &[PullProgress]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, PullProgress::LayerAlreadyExists { .. }))
        .count()
}

fn blob_requests(reg: &FakeRegistry, method: Method, blob: &Digest) -> usize {
    let path = format!("/v2/test/img/blobs/{blob}");
    reg.seen()
        .iter()
        .filter(|s| s.method == method && s.path == path)
        .count()
}

/// The blob store is shared by every account: a blob in it serves a pull only
/// when the puller owns it already, or when the registry that served it
/// confirms it to this pull. A registry of the puller's own that names
/// another account's digests (and claims to have them) gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_blobs_are_reused_only_when_their_registry_confirms_them() {
    let img = FakeImage::new(b"a private layer");
    let (_dir, store) = new_store();
    let client = RegistryClient::new(vec![]);

    // The victim's registry, which stops serving the blob when `deny` is set.
    let deny = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (i, d) = (img.clone(), deny.clone());
    let victims = FakeRegistry::start(move |s| {
        if d.load(std::sync::atomic::Ordering::SeqCst) && s.path.contains("/blobs/") {
            return blob_unknown();
        }
        i.serve(&s.path)
    })
    .await;
    let (res, events) = pull(&client, &format!("{}/test/img:1", victims.addr), &store).await;
    res.unwrap();
    assert_eq!(reused(&events), 0);
    assert!(store.has(&img.layer_digest));

    // A hostile registry: the victim's manifest, HEAD "yes" to every blob,
    // but it has none of them.
    let i = img.clone();
    let hostile = FakeRegistry::start(move |s| {
        if s.path.contains("/blobs/") {
            if s.method == Method::HEAD {
                return reply(200, &[], "");
            }
            return blob_unknown();
        }
        i.serve(&s.path)
    })
    .await;
    let hostile_ref = format!("{}/test/img:1", hostile.addr);
    let (res, events) = pull(&client, &hostile_ref, &store).await;
    let e = expect_err(res);
    assert!(e.to_string().contains("blob unknown"), "{e}");
    assert_eq!(reused(&events), 0);
    // The attack ran: the pull asked the hostile registry for the blob.
    assert_eq!(blob_requests(&hostile, Method::GET, &img.config_digest), 1);
    // Positive control: an account that owns the blobs reuses them, with
    // no registry's word.
    let owns: HashSet<Digest> = [img.config_digest.clone(), img.layer_digest.clone()].into();
    let (res, events) = pull_owning(&client, &hostile_ref, &store, &owns).await;
    res.unwrap();
    assert_eq!(reused(&events), 1);

    // Another account pulling from the victim's registry: it confirms the
    // blobs (HEAD), so nothing is downloaded again...
    let victim_ref = format!("{}/test/img:1", victims.addr);
    let gets = blob_requests(&victims, Method::GET, &img.layer_digest);
    let (res, events) = pull(&client, &victim_ref, &store).await;
    res.unwrap();
    assert_eq!(reused(&events), 1);
    assert_eq!(blob_requests(&victims, Method::HEAD, &img.layer_digest), 1);
    assert_eq!(
        blob_requests(&victims, Method::GET, &img.layer_digest),
        gets
    );
    // ...and when the registry refuses this account, neither is the blob
    // handed over from the store.
    deny.store(true, std::sync::atomic::Ordering::SeqCst);
    let (res, events) = pull(&client, &victim_ref, &store).await;
    let e = expect_err(res);
    assert!(e.to_string().contains("blob unknown"), "{e}");
    assert_eq!(reused(&events), 0);
}

/// A pull whose missing blobs exceed what its puller may still store is
/// refused before anything is downloaded.
#[tokio::test]
async fn a_pull_past_the_allowance_downloads_nothing() {
    let img = FakeImage::new(&noise(1 << 20));
    let i = img.clone();
    let reg = FakeRegistry::start(move |s| i.serve(&s.path)).await;
    let (_dir, store) = new_store();
    let client = RegistryClient::new(vec![]);
    let r = Reference::parse(&format!("{}/test/img:1", reg.addr)).unwrap();
    let needs = (img.layer.len() + img.config.len()) as u64;
    let pull_with = |bytes| {
        let allowance = Allowance {
            owns: HashSet::new(),
            bytes: Some(bytes),
        };
        let (client, r, store) = (&client, &r, &store);
        async move {
            client
                .pull_with_credentials(r, None, store, &allowance, &mut |_| {})
                .await
        }
    };
    match pull_with(needs - 1).await {
        Err(ImageError::StorageExceeded { needs: n, left }) => {
            assert_eq!((n, left), (needs, needs - 1));
        }
        other => panic!("expected StorageExceeded, got {other:?}"),
    }
    assert_eq!(blob_requests(&reg, Method::GET, &img.layer_digest), 0);
    assert_eq!(blob_requests(&reg, Method::GET, &img.config_digest), 0);
    assert!(!store.has(&img.layer_digest));
    // Positive control: exactly enough is enough.
    pull_with(needs).await.unwrap();
    assert!(store.has(&img.layer_digest));
}

/// Runs a pull against a fake whose `/v2/test/img/...` answers come from `answer`
/// (None: behave well), and returns the error.
async fn pull_failing(
    img: &FakeImage,
    answer: impl Fn(&str) -> Option<Response<Full<Bytes>>> + Send + Sync + 'static,
) -> (ImageError, BlobStore, tempfile::TempDir) {
    let i = img.clone();
    let reg =
        FakeRegistry::start(move |s| answer(&s.path).unwrap_or_else(|| i.serve(&s.path))).await;
    let (dir, store) = new_store();
    let client = RegistryClient::new(vec![]);
    let (res, _) = pull(&client, &format!("{}/test/img:1", reg.addr), &store).await;
    let e = expect_err(res);
    assert_eq!(tmp_files(&store), 0, "temp files left after {e}");
    (e, store, dir)
}

#[tokio::test]
async fn garbage_manifests_are_refused() {
    let img = FakeImage::new(b"x");
    let manifest_path = "/v2/test/img/manifests/1";
    let cases: Vec<(&str, Response<Full<Bytes>>, &str)> = vec![
        (
            "not json",
            reply(
                200,
                &[("Content-Type", MEDIA_DOCKER_MANIFEST)],
                "<html>oops</html>",
            ),
            "invalid manifest",
        ),
        (
            "wrong shape",
            reply(
                200,
                &[("Content-Type", MEDIA_DOCKER_MANIFEST)],
                r#"{"schemaVersion":2,"config":{"digest":"md5:abc"}}"#,
            ),
            "invalid manifest",
        ),
        (
            "html content type",
            reply(200, &[("Content-Type", "text/html")], img.manifest.clone()),
            "unsupported manifest content type",
        ),
        (
            "announced digest differs",
            reply(
                200,
                &[
                    ("Content-Type", MEDIA_DOCKER_MANIFEST),
                    ("Docker-Content-Digest", Digest::of(b"other").as_str()),
                ],
                img.manifest.clone(),
            ),
            "manifest verification failed",
        ),
        ("server error", reply(500, &[], "boom"), "500"),
        (
            "unauthorized without challenge",
            reply(401, &[], ""),
            "pull access denied for",
        ),
        (
            "denied",
            reply(
                403,
                &[],
                r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
            ),
            "repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
        ),
        (
            "schema1",
            reply(
                200,
                &[(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.v1+prettyjws",
                )],
                r#"{"schemaVersion":1}"#,
            ),
            "schema 1 support has been removed",
        ),
        (
            "too big",
            reply(
                200,
                &[("Content-Type", MEDIA_DOCKER_MANIFEST)],
                vec![b' '; 5 << 20],
            ),
            "larger than",
        ),
    ];
    for (name, resp, want) in cases {
        let resp = Mutex::new(Some(resp));
        let (e, store, _dir) = pull_failing(&img, move |p| {
            if p == manifest_path {
                resp.lock().unwrap().take()
            } else {
                None
            }
        })
        .await;
        assert!(e.to_string().contains(want), "{name}: {e}");
        assert!(store.list().unwrap().is_empty(), "{name}: blobs stored");
    }
}

#[tokio::test]
async fn bad_blobs_leave_nothing_behind() {
    let img = FakeImage::new(b"the real content\n");
    let layer_path = format!("/v2/test/img/blobs/{}", img.layer_digest);
    let config_path = format!("/v2/test/img/blobs/{}", img.config_digest);
    let mut tampered = img.layer.to_vec();
    let last = tampered.len() - 9;
    tampered[last] ^= 0xff; // inside the gzip trailer's CRC: still decodes up to there
    let cases: Vec<(&str, String, Response<Full<Bytes>>, &str)> = vec![
        (
            "layer digest",
            layer_path.clone(),
            reply(200, &[], tampered),
            "filesystem layer verification failed for digest",
        ),
        (
            "layer not gzip",
            layer_path.clone(),
            reply(
                200,
                &[],
                [&[0x1f, 0x8b][..], &vec![0u8; img.layer.len() - 2]].concat(),
            ),
            "filesystem layer verification failed for digest",
        ),
        (
            "layer too long",
            layer_path.clone(),
            reply(200, &[], [img.layer.to_vec(), vec![0; 10]].concat()),
            "larger than",
        ),
        (
            "layer short",
            layer_path.clone(),
            reply(200, &[], img.layer.slice(..10)),
            "expected",
        ),
        (
            "layer missing",
            layer_path.clone(),
            reply(
                404,
                &[],
                r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
            ),
            "blob unknown",
        ),
        (
            "config garbage",
            config_path.clone(),
            reply(200, &[], vec![b'x'; img.config.len()]),
            "verification failed",
        ),
    ];
    for (name, path, resp, want) in cases {
        let resp = Mutex::new(Some(resp));
        let (e, store, _dir) = pull_failing(&img, move |p| {
            if p == path {
                resp.lock().unwrap().take()
            } else {
                None
            }
        })
        .await;
        assert!(matches!(e, ImageError::Registry(_)), "{name}: {e:?}");
        assert!(e.to_string().contains(want), "{name}: {e}");
        assert!(!store.has(&img.layer_digest), "{name}: bad layer stored");
    }

    // A config whose diff_id does not match the layer: the layer is refused.
    let wrong = FakeImage::with_diff_id(b"y", Some(Digest::of(b"not the tar")));
    let (e, store, _dir) = pull_failing(&wrong, |_| None).await;
    assert!(e.to_string().contains("uncompressed content is"), "{e}");
    assert!(!store.has(&wrong.layer_digest));
}

#[tokio::test]
async fn token_auth_and_blob_redirects() {
    let img = FakeImage::new(b"secret layer\n");
    // Object storage on another port: must never see the registry's credentials.
    let i = img.clone();
    let storage = FakeRegistry::start(move |s| {
        if s.path.starts_with("/storage/") {
            reply(200, &[], i.layer.clone())
        } else {
            reply(404, &[], "")
        }
    })
    .await;
    let storage_addr = storage.addr.clone();
    let i = img.clone();
    let reg = FakeRegistry::start(move |s| {
        if s.path.starts_with("/token?") {
            let want = "service=fake%20registry&scope=repository%3Atest%2Fimg%3Apull";
            return match s.authorization.as_deref() {
                Some("Basic dXNlcjpwdw==") if s.path.ends_with(want) => reply(200, &[], r#"{"token":"t0k3n"}"#),
                _ => reply(401, &[], r#"{"errors":[{"code":"UNAUTHORIZED","message":"incorrect username or password"}]}"#),
            };
        }
        if s.authorization.as_deref() != Some("Bearer t0k3n") {
            return reply(
                401,
                &[("WWW-Authenticate", &format!(r#"Bearer realm="http://{}/token",service="fake registry",scope="repository:test/img:pull""#, s.host))],
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        }
        if s.path == format!("/v2/test/img/blobs/{}", i.layer_digest) {
            return reply(307, &[("Location", &format!("http://{storage_addr}/storage/{}?sig=abc", i.layer_digest.hex()))], "");
        }
        if s.path == format!("/v2/test/img/blobs/{}", i.config_digest) {
            // A relative redirect stays on the registry.
            return reply(302, &[("Location", &format!("/relocated/{}", i.config_digest.hex()))], "");
        }
        if s.path.starts_with("/relocated/") {
            return reply(200, &[], i.config.clone());
        }
        i.serve(&s.path)
    })
    .await;

    let (_dir, store) = new_store();
    let client = RegistryClient::new(vec![]);
    let creds = Credentials::basic("user", "pw");
    let (res, _) = pull_as(
        &client,
        &format!("{}/test/img:1", reg.addr),
        Some(&creds),
        &store,
    )
    .await;
    let got = res.unwrap();
    assert_eq!(got.layers[0].blob, img.layer_digest);
    assert_layers_verified(&store, &got);
    let storage_seen = storage.seen();
    assert_eq!(storage_seen.len(), 1);
    assert_eq!(
        storage_seen[0].authorization, None,
        "credentials leaked to storage"
    );
    assert!(
        reg.seen()
            .iter()
            .any(|s| s.path.starts_with("/relocated/") && s.authorization.is_some())
    );

    // Wrong password: the token server's complaint comes through.
    let (_dir2, store2) = new_store();
    let bad = Credentials::basic("user", "nope");
    let (res, _) = pull_as(
        &client,
        &format!("{}/test/img:1", reg.addr),
        Some(&bad),
        &store2,
    )
    .await;
    let e = expect_err(res);
    assert!(matches!(e, ImageError::Unauthorized(_)), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains(&format!(
            "registry {}: unauthorized: incorrect username or password",
            reg.addr
        )),
        "{m}"
    );
    assert!(store2.list().unwrap().is_empty());
}

#[tokio::test]
async fn basic_auth() {
    let img = FakeImage::new(b"basic\n");
    let i = img.clone();
    let reg = FakeRegistry::start(move |s| {
        if s.authorization.as_deref() == Some("Basic dXNlcjpwdw==") {
            i.serve(&s.path)
        } else {
            reply(401, &[("WWW-Authenticate", r#"Basic realm="fake""#)], "")
        }
    })
    .await;
    let client = RegistryClient::new(vec![]);
    let (_dir, store) = new_store();
    let (res, _) = pull(&client, &format!("{}/test/img:1", reg.addr), &store).await;
    match expect_err(res) {
        ImageError::ManifestUnknown(m) => assert!(
            m.starts_with(&format!("pull access denied for {}/test/img, repository does not exist or may require 'docker login'", reg.addr)),
            "{m}"
        ),
        e => panic!("unexpected {e:?}"),
    }
    let creds = Credentials::basic("user", "pw");
    let (res, _) = pull_as(
        &client,
        &format!("{}/test/img:1", reg.addr),
        Some(&creds),
        &store,
    )
    .await;
    assert_layers_verified(&store, &res.unwrap());
}

#[test]
fn insecure_list_allows_plain_http_to_other_hosts() {
    let client = RegistryClient::new(vec!["registry.internal:5000".into()]);
    assert!(client.plain_http_allowed("registry.internal:5000"));
    assert!(!client.plain_http_allowed("registry.internal:5001"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_blob_download_fails_without_leftovers() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let img = FakeImage::new(&noise(3 << 20));
    // "Storage" announces the whole layer, sends most of it, then goes silent.
    let storage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let storage_addr = storage.local_addr().unwrap();
    let layer = img.layer.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = storage.accept().await {
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req).await;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", layer.len());
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&layer[..layer.len() - 1000]).await;
            held.push(s);
        }
    });
    let i = img.clone();
    let layer_path = format!("/v2/test/img/blobs/{}", img.layer_digest);
    let reg = FakeRegistry::start(move |s| {
        if s.path == layer_path {
            reply(
                307,
                &[("Location", &format!("http://{storage_addr}/blob"))],
                "",
            )
        } else {
            i.serve(&s.path)
        }
    })
    .await;
    let (_dir, store) = new_store();
    let client = RegistryClient::new(vec![])
        .with_timeouts(Duration::from_secs(2), Duration::from_millis(500));
    let (res, events) = pull(&client, &format!("{}/test/img:1", reg.addr), &store).await;
    let m = expect_err(res).to_string();
    assert!(m.contains("stalled"), "{m}");
    // Some progress was reported before the stall, and no partial blob survives.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PullProgress::LayerDownloading { current, .. } if *current > 0))
    );
    assert!(!store.has(&img.layer_digest));
    assert_eq!(tmp_files(&store), 0);
    server.abort();
}
