//! A token issuer for the registry's `token` auth (Docker's token
//! authentication, as Docker Hub and most private registries run it): a
//! loopback HTTP endpoint that checks Basic credentials, grants the asked-for
//! scopes a user's rules allow, and signs an ES256 JWT the registry verifies
//! against the issuer's certificate (sent in the `x5c` header).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;

/// The `service` the registry names in its challenges and the issuer puts
/// in a token's audience.
pub const SERVICE: &str = "atoll-test-registry";
/// The issuer name the registry trusts.
pub const ISSUER: &str = "atoll-test-issuer";

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A user of the issuer: a password and, per repository prefix, the
/// actions granted (`"pull"`, `"pull,push"`). `name` "" is anonymous.
#[derive(Debug, Clone)]
pub struct TokenUser {
    pub name: String,
    pub password: String,
    pub grants: Vec<(String, String)>,
}

impl TokenUser {
    /// `name` may pull and push repositories under `name/`.
    pub fn owner(name: &str, password: &str) -> TokenUser {
        TokenUser {
            name: name.into(),
            password: password.into(),
            grants: vec![(format!("{name}/"), "pull,push".into())],
        }
    }
}

/// One token request, as the issuer answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The authenticated user; None for an anonymous request.
    pub user: Option<String>,
    /// The scopes asked for.
    pub asked: Vec<String>,
    /// What the token grants, as `repository:NAME:ACTIONS`.
    pub granted: Vec<String>,
    /// 200, or 401 for bad credentials.
    pub status: u16,
}

struct State {
    users: Vec<TokenUser>,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    issued: Mutex<Vec<Issued>>,
}

/// The issuer on 127.0.0.1; stopped on drop.
pub struct TokenIssuer {
    addr: String,
    cert_pem: String,
    stop: Arc<AtomicBool>,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl TokenIssuer {
    pub fn start(users: Vec<TokenUser>) -> TokenIssuer {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap_or_else(|e| panic!("token key: {e}"));
        let params = rcgen::CertificateParams::new(vec!["atoll-test-issuer".to_string()])
            .unwrap_or_else(|e| panic!("token certificate: {e}"));
        let cert = params
            .self_signed(&key_pair)
            .unwrap_or_else(|e| panic!("token certificate: {e}"));
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap_or_else(|e| panic!("token key: {e}"));
        let state = Arc::new(State {
            users,
            key,
            cert_der: cert.der().to_vec(),
            issued: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, state) = (stop.clone(), state.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(s) = conn {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        let _ = serve(s, &state);
                    }
                }
            })
        };
        TokenIssuer {
            addr,
            cert_pem: cert.pem(),
            stop,
            state,
            thread: Some(thread),
        }
    }

    /// Where tokens are asked for: the registry's `realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate the registry verifies tokens with (`rootcertbundle`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Every token request so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.state
            .issued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Credentials of a user, e.g. for skopeo.
    pub fn credentials(&self, user: &str) -> Option<(String, String)> {
        self.state
            .users
            .iter()
            .find(|u| u.name == user)
            .map(|u| (u.name.clone(), u.password.clone()))
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request per connection: `GET /token?service=…&scope=…`.
fn serve(s: TcpStream, state: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(s.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("authorization")
        {
            authorization = Some(v.trim().to_string());
        }
    }
    let target = first.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let asked: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "scope")
        .map(|(_, v)| unescape(v))
        .collect();
    let (status, body) = answer(state, authorization.as_deref(), asked);
    let mut s = s;
    write!(
        s,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Unauthorized" },
        body.len()
    )?;
    s.flush()
}

fn answer(state: &State, authorization: Option<&str>, asked: Vec<String>) -> (u16, String) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let user = match authorization.and_then(|a| a.strip_prefix("Basic ")) {
        None => state.users.iter().find(|u| u.name.is_empty()),
        Some(encoded) => {
            let pair = b64
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let (name, password) = pair.split_once(':').unwrap_or(("", ""));
            match state
                .users
                .iter()
                .find(|u| !u.name.is_empty() && u.name == name && u.password == password)
            {
                Some(u) => Some(u),
                None => {
                    record(state, Some(name.to_string()), asked, Vec::new(), 401);
                    return (
                        401,
                        json!({"errors": [{"code": "UNAUTHORIZED",
                            "message": "incorrect username or password"}]})
                        .to_string(),
                    );
                }
            }
        }
    };
    let mut access = Vec::new();
    let mut granted = Vec::new();
    for scope in &asked {
        let mut parts = scope.splitn(3, ':');
        let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let allowed: Vec<&str> = user
            .into_iter()
            .flat_map(|u| &u.grants)
            .filter(|(prefix, _)| name.starts_with(prefix.as_str()))
            .flat_map(|(_, a)| a.split(','))
            .collect();
        let actions: Vec<&str> = actions.split(',').filter(|a| allowed.contains(a)).collect();
        if actions.is_empty() {
            continue;
        }
        granted.push(format!("{kind}:{name}:{}", actions.join(",")));
        access.push(json!({"type": kind, "name": name, "actions": actions}));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let subject = user.map(|u| u.name.clone()).unwrap_or_default();
    let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [b64.encode(&state.cert_der)]});
    let claims = json!({
        "iss": ISSUER, "sub": subject, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        "access": access,
    });
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing_input = format!(
        "{}.{}",
        url.encode(header.to_string()),
        url.encode(claims.to_string())
    );
    let signature = match state
        .key
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
    {
        Ok(s) => s,
        Err(_) => return (500, "{}".into()),
    };
    let token = format!("{signing_input}.{}", url.encode(signature.as_ref()));
    record(state, user.map(|u| u.name.clone()), asked, granted, 200);
    (
        200,
        json!({"token": token, "access_token": token, "expires_in": 300}).to_string(),
    )
}

fn record(
    state: &State,
    user: Option<String>,
    asked: Vec<String>,
    granted: Vec<String>,
    status: u16,
) {
    state
        .issued
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Issued {
            user: user.filter(|u| !u.is_empty()),
            asked,
            granted,
            status,
        });
}

/// Percent-decoding of a query value.
fn unescape(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}
