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
    /// Asked with a refresh token (an identity token from a login).
    pub by_refresh: bool,
}

struct State {
    users: Vec<TokenUser>,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    issued: Mutex<Vec<Issued>>,
    /// Refresh tokens handed out, and whose they are.
    refresh: Mutex<Vec<(String, String)>>,
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
            refresh: Mutex::new(Vec::new()),
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

/// One request per connection: `GET /token?service=…&scope=…` with Basic
/// credentials (`offline_token=true` asks for a refresh token too), or
/// `POST /token` with an OAuth2 refresh grant (a form).
fn serve(s: TcpStream, state: &State) -> std::io::Result<()> {
    let mut reader = BufReader::new(s.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut authorization = None;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            } else if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0).min(64 << 10);
            }
        }
    }
    let mut words = first.split_whitespace();
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("");
    let (status, body) = if method == "POST" {
        let mut form = vec![0u8; length];
        std::io::Read::read_exact(&mut reader, &mut form)?;
        let form = String::from_utf8_lossy(&form).into_owned();
        let params = params(&form);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let refresh = get("refresh_token").unwrap_or_default();
        let user = state
            .refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(t, _)| *t == refresh)
            .map(|(_, u)| u.clone());
        let asked: Vec<String> = get("scope")
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        match (get("grant_type").as_deref(), user) {
            (Some("refresh_token"), Some(user)) => answer(state, Who::Refresh(user), asked, false),
            _ => {
                record(state, None, asked, Vec::new(), 401, true);
                (
                    401,
                    json!({"errors": [{"code": "UNAUTHORIZED",
                    "message": "invalid refresh token"}]})
                    .to_string(),
                )
            }
        }
    } else {
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let params = params(query);
        let asked: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.clone())
            .collect();
        let offline = params
            .iter()
            .any(|(k, v)| k == "offline_token" && v == "true");
        answer(state, Who::Basic(authorization.as_deref()), asked, offline)
    };
    let mut s = s;
    write!(
        s,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Unauthorized" },
        body.len()
    )?;
    s.flush()
}

/// `k=v&k=v`, percent-decoded.
fn params(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (unescape(k), unescape(v)))
        .collect()
}

/// Who asks for a token.
enum Who<'a> {
    /// The `Authorization` header, if any.
    Basic(Option<&'a str>),
    /// A refresh token issued to this user.
    Refresh(String),
}

fn answer(state: &State, who: Who<'_>, asked: Vec<String>, offline: bool) -> (u16, String) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let by_refresh = matches!(who, Who::Refresh(_));
    let authorization = match who {
        Who::Basic(a) => a,
        Who::Refresh(name) => {
            return match state.users.iter().find(|u| u.name == name) {
                Some(u) => grant(state, Some(u), asked, false, true),
                None => (401, "{}".into()),
            };
        }
    };
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
                    record(
                        state,
                        Some(name.to_string()),
                        asked,
                        Vec::new(),
                        401,
                        by_refresh,
                    );
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
    grant(state, user, asked, offline, false)
}

/// A signed token for what `user` may do of `asked`; with `offline`, a
/// refresh token too.
fn grant(
    state: &State,
    user: Option<&TokenUser>,
    asked: Vec<String>,
    offline: bool,
    by_refresh: bool,
) -> (u16, String) {
    let b64 = base64::engine::general_purpose::STANDARD;
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
    record(
        state,
        user.map(|u| u.name.clone()),
        asked,
        granted,
        200,
        by_refresh,
    );
    let mut answer = json!({"token": token, "access_token": token, "expires_in": 300});
    if offline && let Some(u) = user.filter(|u| !u.name.is_empty()) {
        let refresh = format!(
            "refresh-{}-{}",
            u.name,
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        state
            .refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((refresh.clone(), u.name.clone()));
        answer["refresh_token"] = refresh.into();
    }
    (200, answer.to_string())
}

fn record(
    state: &State,
    user: Option<String>,
    asked: Vec<String>,
    granted: Vec<String>,
    status: u16,
    by_refresh: bool,
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
            by_refresh,
        });
}

/// Percent-decoding of a query value.
fn unescape(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}
