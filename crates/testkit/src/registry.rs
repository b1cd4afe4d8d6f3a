//! A real registry (Debian's `docker-registry`, distribution 2.x) on loopback, for
//! pull tests, fed by `skopeo`.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::http::{self, Request, Response};
use crate::instance::{run_with_timeout, spawn_with_parent_death_signal};
use crate::token_issuer::TokenIssuer;
use crate::wait::try_wait_for_some;

/// `$ATOLL_TEST_REGISTRY_BIN` or `/usr/bin/docker-registry`.
fn registry_bin() -> PathBuf {
    std::env::var_os("ATOLL_TEST_REGISTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

/// A `docker-registry serve` on 127.0.0.1 with storage in a temp dir; killed on drop.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    secure: Option<Secure>,
}

/// Where atoll looks for registries' CAs by default (Docker's layout).
pub const CERTS_DIR: &str = "/etc/atoll/certs.d";

/// TLS with a CA made for the test (installed in [`CERTS_DIR`] for the
/// registry's address, removed on drop) and htpasswd basic auth, or token
/// auth against a [`TokenIssuer`].
struct Secure {
    /// The htpasswd user; with token auth, whom skopeo feeds it as.
    user: String,
    password: String,
    ca_pem: String,
    /// Token auth: the issuer's realm and certificate.
    token: Option<(String, String)>,
    /// Mutual TLS: the registry asks for a client certificate its CA signed;
    /// one is installed beside the CA (`client.cert`, `client.key`).
    client_cert: Option<(String, String)>,
    mtls: bool,
}

impl Secure {
    fn htpasswd(user: &str, password: &str, mtls: bool) -> Secure {
        Secure {
            user: user.to_string(),
            password: password.to_string(),
            ca_pem: String::new(),
            token: None,
            client_cert: None,
            mtls,
        }
    }
}

impl Registry {
    /// Starts a registry on a free loopback port and waits until `GET /v2/` answers 200.
    pub fn start() -> Registry {
        Self::start_with(None)
    }

    /// A registry over TLS (its CA installed where atoll looks by default)
    /// that takes only `user` with `password` (htpasswd).
    pub fn start_secure(user: &str, password: &str) -> Registry {
        Self::start_with(Some(Secure::htpasswd(user, password, false)))
    }

    /// Like [`start_secure`](Self::start_secure), and the registry takes
    /// only clients showing a certificate its CA signed; one is installed
    /// for atoll (`client.cert`, `client.key` beside the CA).
    pub fn start_mtls(user: &str, password: &str) -> Registry {
        Self::start_with(Some(Secure::htpasswd(user, password, true)))
    }

    /// Where atoll looks for this registry's CA and client certificate.
    pub fn certs_dir(&self) -> PathBuf {
        Path::new(CERTS_DIR).join(self.addr())
    }

    /// A registry over TLS that takes only tokens from `issuer` (Docker's
    /// token authentication); `feeder`, a user of the issuer, is whom
    /// [`push_archive`](Self::push_archive) pushes as.
    pub fn start_token(issuer: &TokenIssuer, feeder: &str) -> Registry {
        let (user, password) = issuer
            .credentials(feeder)
            .unwrap_or_else(|| panic!("{feeder} is not a user of the token issuer"));
        Self::start_with(Some(Secure {
            token: Some((issuer.realm(), issuer.cert_pem().to_string())),
            ..Secure::htpasswd(&user, &password, false)
        }))
    }

    fn start_with(secure: Option<Secure>) -> Registry {
        // The port is free when probed and taken by the registry a moment later; retry
        // the rare case where something else grabbed it in between.
        let mut last_err = String::new();
        let mut secure = secure;
        for _ in 0..3 {
            let mut reg = Registry {
                child: None,
                port: free_port(),
                dir: tempfile::Builder::new()
                    .prefix("atoll-registry-")
                    .tempdir()
                    .unwrap_or_else(|e| panic!("creating a registry dir: {e}")),
                secure: secure.take(),
            };
            match reg.spawn() {
                Ok(()) => return reg,
                Err(e) => {
                    last_err = e;
                    // Kept for the next try, its CA removed now.
                    secure = reg.secure.take();
                    let _ = std::fs::remove_dir_all(Path::new(CERTS_DIR).join(reg.addr()));
                }
            }
        }
        panic!("the test registry did not start: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let storage = self.dir.path().join("storage");
        let config = self.dir.path().join("config.yml");
        let log_path = self.log_path();
        let secure_config = match self.secure.as_mut() {
            None => String::new(),
            Some(sec) => {
                let files = secure_files(self.dir.path(), sec)?;
                let authority = format!("127.0.0.1:{}", self.port);
                install_ca(&authority, &sec.ca_pem)?;
                if let Some((cert, key)) = &sec.client_cert {
                    let dir = Path::new(CERTS_DIR).join(&authority);
                    std::fs::write(dir.join("client.cert"), cert)
                        .and_then(|()| std::fs::write(dir.join("client.key"), key))
                        .map_err(|e| format!("installing the client certificate: {e}"))?;
                }
                files
            }
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{}\n{secure_config}",
                storage.display(),
                self.port
            ),
        )
        .map_err(|e| format!("writing {}: {e}", config.display()))?;
        let log = File::create(&log_path).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(registry_bin());
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = spawn_with_parent_death_signal(cmd)
            .map_err(|e| format!("starting {}: {e}", registry_bin().display()))?;
        self.child = Some(child);
        let up = try_wait_for_some(
            || {
                if let Some(c) = self.child.as_mut()
                    && let Ok(Some(st)) = c.try_wait()
                {
                    return Some(Err(st));
                }
                self.answers().then_some(Ok(()))
            },
            Duration::from_secs(20),
        );
        let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
        match up {
            Some(Ok(())) => Ok(()),
            Some(Err(st)) => {
                self.child = None;
                Err(format!("registry exited ({st}): {}", log_text()))
            }
            None => {
                self.kill();
                Err(format!("registry did not answer /v2/: {}", log_text()))
            }
        }
    }

    /// Whether `GET /v2/` answers 200; a secure one, whether it listens (it
    /// listens once its configuration is read; curl's OpenSSL cannot be the
    /// judge here: it fails against it with "bad record MAC" on this machine).
    fn answers(&self) -> bool {
        if self.secure.is_some() {
            return std::net::TcpStream::connect(self.addr()).is_ok();
        }
        matches!(self.get("/v2/"), Ok(r) if r.status == 200)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// How many blobs (layers, configs) were downloaded from it so far, by
    /// anyone: the access log's `GET /v2/…/blobs/…` lines.
    pub fn blob_downloads(&self) -> usize {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }

    /// Everything it logged so far, its access log included (one line per
    /// request: `"METHOD /path HTTP/1.1" status …`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The CA of a TLS registry (PEM).
    pub fn ca_pem(&self) -> Option<&str> {
        self.secure.as_ref().map(|s| s.ca_pem.as_str())
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`: the registry part of image references.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `GET path` against the registry.
    pub fn get(&self, path: &str) -> std::io::Result<Response> {
        http::tcp_request(&self.addr(), "GET", path, None, Duration::from_secs(10))
    }

    /// Any request against the registry (e.g. with an `Accept` header for manifests).
    pub fn request(&self, req: &Request<'_>) -> std::io::Result<Response> {
        http::send_tcp(&self.addr(), req, Duration::from_secs(10))
    }

    /// Pushes a `docker save` or OCI-layout archive as `repo:tag` (e.g.
    /// `test/busybox:latest`) with skopeo; returns the full reference
    /// `127.0.0.1:<port>/repo:tag`. Panics with skopeo's stderr on failure.
    pub fn push_archive(&self, archive: &Path, repo_tag: &str) -> String {
        let transport = if is_oci_layout(archive) {
            "oci-archive"
        } else {
            "docker-archive"
        };
        let reference = format!("{}/{repo_tag}", self.addr());
        let mut cmd = Command::new("skopeo");
        // --insecure-policy: accept any image without a policy.json on the machine.
        cmd.arg("--insecure-policy")
            .arg("copy")
            .arg("--quiet")
            .arg("--dest-tls-verify=false");
        if let Some(sec) = &self.secure {
            cmd.arg(format!("--dest-creds={}:{}", sec.user, sec.password));
            // Docker's layout: skopeo takes the client certificate from it.
            cmd.arg(format!("--dest-cert-dir={}", self.certs_dir().display()));
        }
        cmd.arg(format!("{transport}:{}", archive.display()))
            .arg(format!("docker://{reference}"))
            .env("TMPDIR", self.dir.path());
        let out = run_with_timeout(cmd, None, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("running skopeo: {e}"));
        if !out.status.success() {
            panic!(
                "skopeo copy {} -> {reference} failed ({}): {}",
                archive.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        reference
    }
}

impl Registry {
    /// Puts a manifest list `repo:tag` whose entries are the manifests of
    /// `repo`'s tags, each for a platform (`linux/arm64/v8`); returns its
    /// digest. Plain-HTTP registries only.
    pub fn put_manifest_list(&self, repo: &str, tag: &str, entries: &[(&str, &str)]) -> String {
        const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
        let accept = "application/vnd.docker.distribution.manifest.v2+json";
        let mut manifests = Vec::new();
        for (entry_tag, platform) in entries {
            let path = format!("/v2/{repo}/manifests/{entry_tag}");
            let resp = self
                .request(&Request {
                    method: "GET",
                    path: &path,
                    headers: &[("Accept", accept)],
                    body: None,
                })
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
            let mut p = platform.split('/');
            let mut platform = serde_json::json!({
                "os": p.next().unwrap_or_default(),
                "architecture": p.next().unwrap_or_default(),
            });
            if let Some(v) = p.next() {
                platform["variant"] = v.into();
            }
            manifests.push(serde_json::json!({
                "mediaType": resp.header("content-type").unwrap_or(accept),
                "digest": resp.header("docker-content-digest").unwrap_or_default(),
                "size": resp.body.len(),
                "platform": platform,
            }));
        }
        let list = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": LIST, "manifests": manifests,
        }))
        .unwrap_or_default();
        let path = format!("/v2/{repo}/manifests/{tag}");
        let resp = self
            .request(&Request {
                method: "PUT",
                path: &path,
                headers: &[],
                body: Some(http::Body {
                    content_type: LIST,
                    bytes: &list,
                }),
            })
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        assert_eq!(resp.status, 201, "PUT {path}: {}", resp.text());
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&list)))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if self.secure.is_some() {
            let _ = std::fs::remove_dir_all(Path::new(CERTS_DIR).join(self.addr()));
        }
    }
}

/// A CA, a server certificate for 127.0.0.1 it signed, and an htpasswd file
/// in `dir`; the registry's `tls` and `auth` settings for them.
fn secure_files(dir: &Path, sec: &mut Secure) -> Result<String, String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    sec.ca_pem = ca_cert.pem();
    let issuer = Issuer::from_ca_cert_pem(&sec.ca_pem, ca_key).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).map_err(e)?;
    server
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = server.signed_by(&key, &issuer).map_err(e)?;
    let hash = bcrypt::hash(&sec.password, 6).map_err(|e| e.to_string())?;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
        Ok::<_, String>(p)
    };
    let cert = write("server.pem", &cert.pem())?;
    let key = write("server-key.pem", &key.serialize_pem())?;
    let client_cas = if sec.mtls {
        let client_key = KeyPair::generate().map_err(e)?;
        let mut client =
            CertificateParams::new(vec!["atoll-test-client".to_string()]).map_err(e)?;
        client.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &issuer).map_err(e)?;
        sec.client_cert = Some((client_cert.pem(), client_key.serialize_pem()));
        let ca = write("client-ca.pem", &sec.ca_pem)?;
        format!("    clientcas:\n      - {}\n", ca.display())
    } else {
        String::new()
    };
    let auth = match &sec.token {
        None => {
            let htpasswd = write("htpasswd", &format!("{}:{hash}\n", sec.user))?;
            format!(
                "auth:\n  htpasswd:\n    realm: atoll-test\n    path: {}\n",
                htpasswd.display()
            )
        }
        Some((realm, cert_pem)) => {
            let bundle = write("token-issuer.pem", cert_pem)?;
            format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                crate::token_issuer::SERVICE,
                crate::token_issuer::ISSUER,
                bundle.display()
            )
        }
    };
    Ok(format!(
        "  tls:\n    certificate: {}\n    key: {}\n{client_cas}{auth}",
        cert.display(),
        key.display(),
    ))
}

/// Puts `ca_pem` where atoll trusts it for `authority` by default.
fn install_ca(authority: &str, ca_pem: &str) -> Result<(), String> {
    let dir = Path::new(CERTS_DIR).join(authority);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::write(dir.join("ca.crt"), ca_pem).map_err(|e| format!("writing the CA: {e}"))
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

/// Whether the tar at `path` is an OCI image layout without a docker-save manifest.
fn is_oci_layout(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut ar = tar::Archive::new(f);
    let Ok(entries) = ar.entries() else {
        return false;
    };
    let mut oci = false;
    for e in entries.flatten() {
        let Ok(p) = e.path() else { continue };
        match p.to_string_lossy().trim_start_matches("./") {
            "manifest.json" => return false,
            "oci-layout" => oci = true,
            _ => {}
        }
    }
    oci
}
