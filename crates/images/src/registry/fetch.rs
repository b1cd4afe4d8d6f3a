//! Downloads of URLs a tenant names (the builder's `ADD <url>`), made by the
//! head. Only addresses of the public internet are dialled (not the head's
//! loopback, the datacenter's private networks or a metadata service)
//! besides the networks the operator allows; every redirect is checked the
//! same way. The check is on the address actually dialled, so a name that
//! resolves elsewhere between two lookups gains nothing.

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::*;
use crate::transport::{Dialable, cidr_contains, is_public, link_local};

/// What a download brought.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// Where the content came from, after redirects.
    pub url: Uri,
    pub size: u64,
    pub digest: Digest,
    /// `Last-Modified`, in seconds since the epoch.
    pub modified: Option<i64>,
    /// The file name `Content-Disposition` gives, if any.
    pub file_name: Option<String>,
}

impl RegistryClient {
    /// Networks (CIDRs) downloads may reach besides the public internet,
    /// such as an internal artifact server's. Link-local addresses stay
    /// out of reach whatever is allowed.
    pub fn with_url_allow(mut self, nets: Vec<String>) -> Result<RegistryClient, ImageError> {
        for n in &nets {
            if cidr_contains(n, IpAddr::from([0, 0, 0, 0])).is_none() {
                return Err(ImageError::InvalidReference(format!(
                    "{n:?} is not a network: expected a CIDR such as 10.1.0.0/16"
                )));
            }
        }
        self.url_allow = nets;
        Ok(self)
    }

    /// The networks given to [`with_url_allow`](Self::with_url_allow).
    pub fn url_allow(&self) -> &[String] {
        &self.url_allow
    }

    fn may_download_from(&self, ip: IpAddr) -> bool {
        !link_local(ip)
            && (is_public(ip)
                || self
                    .url_allow
                    .iter()
                    .any(|n| cidr_contains(n, ip) == Some(true)))
    }

    /// GETs `url` (http or https, redirects followed) into `out`, at most
    /// `limit` bytes, each wait for the server bounded by the I/O timeout.
    pub async fn download<W: AsyncWrite + Unpin>(
        &self,
        url: &str,
        out: &mut W,
        limit: u64,
    ) -> Result<Downloaded, ImageError> {
        let err = |m: String| ImageError::Registry(m);
        let mut uri: Uri = url
            .parse()
            .ok()
            .filter(|u: &Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            })
            .ok_or_else(|| err(format!("invalid URL {url:?}: expected http(s)://host/path")))?;
        let mut redirects = 0;
        let resp = loop {
            let resp = tokio::time::timeout(self.io_timeout, self.get_public(&uri))
                .await
                .map_err(|_| {
                    err(format!(
                        "Get \"{uri}\": no answer within {:?}",
                        self.io_timeout
                    ))
                })??;
            let status = resp.status();
            if status.is_redirection()
                && let Some(loc) = resp.headers().get(header::LOCATION)
            {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(err(format!(
                        "Get \"{url}\": stopped after {MAX_REDIRECTS} redirects"
                    )));
                }
                let loc = loc.to_str().unwrap_or_default();
                uri = resolve_location(&uri, loc)
                    .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
                    .ok_or_else(|| {
                        err(format!(
                            "Get \"{url}\": redirect to an invalid location {loc:?}"
                        ))
                    })?;
                continue;
            }
            if !status.is_success() {
                let mut body = resp.into_body();
                let text = self
                    .read_bounded(&mut body, 512)
                    .await
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default();
                return Err(err(format!(
                    "failed to GET {url} with status {status}: {text}"
                )));
            }
            break resp;
        };
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let modified = header(header::LAST_MODIFIED)
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(&v).ok())
            .map(|t| t.timestamp());
        let file_name = header(header::CONTENT_DISPOSITION).and_then(|v| disposition_name(&v));
        if let Some(len) = header(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok())
            && len > limit
        {
            return Err(err(format!(
                "{url} is {len} bytes: more than the {limit} allowed"
            )));
        }
        let mut body = resp.into_body();
        let mut hash = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = self.chunk(&mut body, url).await? {
            size += chunk.len() as u64;
            if size > limit {
                return Err(err(format!("{url} is more than the {limit} bytes allowed")));
            }
            hash.update(&chunk);
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(Downloaded {
            url: uri,
            size,
            digest: Digest::from_hasher(hash),
            modified,
            file_name,
        })
    }

    /// One GET on a fresh connection to an address downloads may reach.
    async fn get_public(&self, uri: &Uri) -> Result<Response<Incoming>, ImageError> {
        let err = |m: String| ImageError::Registry(format!("Get \"{uri}\": {m}"));
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let tls = uri.scheme_str() == Some("https");
        let refusal = "no address it may reach: the builder's downloads go to the public internet \
                       (loopback, private and link-local addresses only where the operator allows them)";
        let stream = self
            .tls
            .connect_to(
                authority,
                if tls { 443 } else { 80 },
                tls,
                (self.connect_timeout, self.io_timeout),
                Dialable {
                    allows: &|ip| self.may_download_from(ip),
                    refusal,
                },
            )
            .await
            .map_err(|e| match e {
                ConnectError::Dial(m) => err(m),
                ConnectError::NotTls => {
                    err("http: server gave HTTP response to HTTPS client".into())
                }
                ConnectError::Tls(m) => err(format!("tls: {m}")),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("download connection ended: {e}");
            }
        });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let req = Request::get(path)
            .header(header::HOST, authority)
            .header(header::USER_AGENT, USER_AGENT)
            .body(empty_body())
            .map_err(|e| err(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| err(error_chain(&e)))
    }

    async fn chunk(&self, body: &mut Incoming, url: &str) -> Result<Option<Bytes>, ImageError> {
        loop {
            match tokio::time::timeout(self.io_timeout, body.frame()).await {
                Err(_) => {
                    return Err(ImageError::Registry(format!(
                        "{url}: no data within {:?}",
                        self.io_timeout
                    )));
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(ImageError::Registry(format!("reading {url}: {e}")));
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    async fn read_bounded(&self, body: &mut Incoming, limit: usize) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        while out.len() < limit
            && let Some(c) = self.chunk(body, "the answer").await?
        {
            out.extend_from_slice(&c[..c.len().min(limit - out.len())]);
        }
        Ok(out)
    }
}

/// `attachment; filename="app.tgz"` → `app.tgz` (a name, never a path).
fn disposition_name(v: &str) -> Option<String> {
    v.split(';').find_map(|part| {
        let (k, val) = part.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("filename") {
            return None;
        }
        let name = val.trim().trim_matches('"');
        let name = name.rsplit(['/', '\\']).next().unwrap_or(name);
        (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_reach_public_addresses_and_allowed_networks() {
        let c = RegistryClient::new(Vec::new())
            .with_url_allow(vec!["10.1.0.0/16".into(), "127.0.0.2/32".into()])
            .unwrap();
        let ok = |s: &str| c.may_download_from(s.parse().unwrap());
        assert!(ok("93.184.216.34") && ok("2606:2800::1"));
        assert!(ok("10.1.2.3") && ok("127.0.0.2"));
        for refused in [
            "127.0.0.1",
            "10.2.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!ok(refused), "{refused} should be out of reach");
        }
        // Allowing everything still leaves the metadata service out.
        let all = RegistryClient::new(Vec::new())
            .with_url_allow(vec!["0.0.0.0/0".into()])
            .unwrap();
        assert!(!all.may_download_from("169.254.169.254".parse().unwrap()));
        assert!(all.may_download_from("10.9.9.9".parse().unwrap()));
        assert!(
            RegistryClient::new(Vec::new())
                .with_url_allow(vec!["10.0.0.1".into()])
                .is_err()
        );
    }

    #[test]
    fn file_names_from_content_disposition() {
        assert_eq!(
            disposition_name(r#"attachment; filename="app.tgz""#).as_deref(),
            Some("app.tgz")
        );
        assert_eq!(
            disposition_name("attachment; filename=../../etc/x").as_deref(),
            Some("x")
        );
        assert_eq!(disposition_name("inline"), None);
        assert_eq!(disposition_name("attachment; filename=\"..\""), None);
    }
}
