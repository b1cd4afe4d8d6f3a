//! Docker image references (`[domain/]path[:tag][@digest]`), parsed and normalised the
//! way the Docker CLI and daemon do it, so names, error messages and display forms match
//! what Docker users expect (`busybox` means `docker.io/library/busybox:latest`).

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::ImageError;

/// The registry that short names such as `busybox` or `user/app` live in.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker's legacy alias of [`DEFAULT_DOMAIN`]; normalised away.
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// The namespace of official images on Docker Hub (`busybox` is `library/busybox`).
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Docker refuses names (domain and path) longer than this.
const NAME_TOTAL_MAX: usize = 255;
/// Docker's `[\w][\w.-]{0,127}`.
const TAG_MAX: usize = 128;

const INVALID_FORMAT: &str = "invalid reference format";

/// A normalised image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host with optional port, e.g. `docker.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub domain: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference as `docker pull`/`docker tag` accept it.
    pub fn parse(s: &str) -> Result<Reference, ImageError> {
        if is_hex_id(s) {
            return Err(invalid(format!(
                "invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
            )));
        }
        let (domain, remainder) = split_domain(s);
        // Docker checks case before the grammar so the user learns what is wrong.
        let remote = remainder.split(':').next().unwrap_or(&remainder);
        if remote.to_lowercase() != remote {
            return Err(invalid(format!(
                "{INVALID_FORMAT}: repository name ({remote}) must be lowercase"
            )));
        }
        let (name_tag, digest) = match remainder.split_once('@') {
            Some((n, d)) => (n, Some(parse_digest(d)?)),
            None => (remainder.as_str(), None),
        };
        // A ':' after the last '/' separates the tag; the path never contains ':'.
        let (path, tag) = match name_tag.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, Some(t)),
            _ => (name_tag, None),
        };
        if path.is_empty() {
            return Err(invalid(INVALID_FORMAT));
        }
        if !valid_domain(&domain) || !valid_path(path) {
            return Err(invalid(INVALID_FORMAT));
        }
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(invalid(INVALID_FORMAT));
        }
        if domain.len() + 1 + path.len() > NAME_TOTAL_MAX {
            return Err(invalid(format!(
                "repository name must not be more than {NAME_TOTAL_MAX} characters"
            )));
        }
        Ok(Reference {
            domain,
            path: path.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The reference with tag `latest` when it names neither a tag nor a digest.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ImageError> {
        if !valid_tag(tag) {
            return Err(invalid(INVALID_FORMAT));
        }
        Ok(Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        })
    }

    /// The repository in Docker's short display form: `busybox`, `user/app`,
    /// `127.0.0.1:5000/foo/bar`.
    pub fn repository(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            }
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    /// The repository in full form: `docker.io/library/busybox`.
    pub fn full_repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// Docker's short display form with tag and digest: `busybox:latest`,
    /// `127.0.0.1:5000/foo/bar:1`, `busybox@sha256:…`.
    pub fn familiar(&self) -> String {
        let mut s = self.repository();
        self.push_suffix(&mut s);
        s
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d.as_str());
        }
    }
}

/// The full form: `docker.io/library/busybox:latest`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.full_repository();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// True for a full image id in digest form, `sha256:<64 lowercase hex>`.
pub fn is_digest_id(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_hex_id)
}

/// True for 64 lowercase hex digits: an image id without its `sha256:` prefix.
pub fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

/// True when `s` could be a (possibly shortened) image id, with or without the
/// `sha256:` prefix: what `docker image inspect <id-prefix>` accepts.
pub fn is_id_prefix(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(is_lower_hex)
}

/// The image id an `sha256:<hex>` or bare 64-hex string names, if it is one.
pub fn parse_image_id(s: &str) -> Option<Digest> {
    if is_digest_id(s) {
        Digest::parse(s).ok()
    } else if is_hex_id(s) {
        Digest::from_hex(s).ok()
    } else {
        None
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn invalid(msg: impl Into<String>) -> ImageError {
    ImageError::InvalidReference(msg.into())
}

/// Docker's `splitDockerDomain`: the first component is a registry only if it looks
/// like a host (has `.` or `:`, is `localhost`, or has upper case letters).
fn split_domain(s: &str) -> (String, String) {
    let (domain, rest) = match s.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first, rest)
        }
        _ => (DEFAULT_DOMAIN, s),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    let rest = if domain == DEFAULT_DOMAIN && !rest.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{rest}")
    } else {
        rest.to_string()
    };
    (domain.to_string(), rest)
}

/// `host[:port]` where host is a DNS name, an IPv4 address or `[IPv6]`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(p) => ("", Some(p)),
                None => return false,
            },
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if d.starts_with('[') {
        return true;
    }
    !host.is_empty() && host.split('.').all(valid_domain_component)
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

fn valid_path(p: &str) -> bool {
    p.split('/').all(valid_path_component)
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // One run of alphanumerics.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // One separator, then the loop demands alphanumerics again.
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `algorithm:hex`; only sha256 is supported, as by [`Digest`].
fn parse_digest(d: &str) -> Result<Digest, ImageError> {
    let Some((algo, hex)) = d.split_once(':') else {
        return Err(invalid(INVALID_FORMAT));
    };
    let algo_ok = !algo.is_empty()
        && algo.as_bytes()[0].is_ascii_alphabetic()
        && algo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'.'));
    if !algo_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(INVALID_FORMAT));
    }
    if algo != "sha256" {
        return Err(invalid("unsupported digest algorithm"));
    }
    if hex.len() != 64 {
        return Err(invalid("invalid checksum digest length"));
    }
    if !hex.bytes().all(is_lower_hex) {
        return Err(invalid("invalid checksum digest format"));
    }
    Digest::from_hex(hex).map_err(|_| invalid(INVALID_FORMAT))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn d() -> Digest {
        Digest::from_hex(HEX).unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        // input, domain, path, tag, has digest, full, familiar
        type Case = (
            String,
            &'static str,
            &'static str,
            Option<&'static str>,
            bool,
            String,
            String,
        );
        let dig = format!("sha256:{HEX}");
        let cases: Vec<Case> = vec![
            (
                "busybox".into(),
                "docker.io",
                "library/busybox",
                None,
                false,
                "docker.io/library/busybox".into(),
                "busybox".into(),
            ),
            (
                "busybox:1.36".into(),
                "docker.io",
                "library/busybox",
                Some("1.36"),
                false,
                "docker.io/library/busybox:1.36".into(),
                "busybox:1.36".into(),
            ),
            (
                "library/busybox:latest".into(),
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
                "docker.io/library/busybox:latest".into(),
                "busybox:latest".into(),
            ),
            (
                "docker.io/busybox".into(),
                "docker.io",
                "library/busybox",
                None,
                false,
                "docker.io/library/busybox".into(),
                "busybox".into(),
            ),
            (
                "index.docker.io/library/busybox".into(),
                "docker.io",
                "library/busybox",
                None,
                false,
                "docker.io/library/busybox".into(),
                "busybox".into(),
            ),
            (
                "user/app:v1".into(),
                "docker.io",
                "user/app",
                Some("v1"),
                false,
                "docker.io/user/app:v1".into(),
                "user/app:v1".into(),
            ),
            (
                "library/a/b".into(),
                "docker.io",
                "library/a/b",
                None,
                false,
                "docker.io/library/a/b".into(),
                "library/a/b".into(),
            ),
            (
                "127.0.0.1:5000/foo/bar:1".into(),
                "127.0.0.1:5000",
                "foo/bar",
                Some("1"),
                false,
                "127.0.0.1:5000/foo/bar:1".into(),
                "127.0.0.1:5000/foo/bar:1".into(),
            ),
            (
                "localhost/foo".into(),
                "localhost",
                "foo",
                None,
                false,
                "localhost/foo".into(),
                "localhost/foo".into(),
            ),
            (
                "localhost:5000/foo".into(),
                "localhost:5000",
                "foo",
                None,
                false,
                "localhost:5000/foo".into(),
                "localhost:5000/foo".into(),
            ),
            (
                "[::1]:5000/foo:t".into(),
                "[::1]:5000",
                "foo",
                Some("t"),
                false,
                "[::1]:5000/foo:t".into(),
                "[::1]:5000/foo:t".into(),
            ),
            (
                "registry.example.com/a.b/c__d/e-f--g:T_1.x-y".into(),
                "registry.example.com",
                "a.b/c__d/e-f--g",
                Some("T_1.x-y"),
                false,
                "registry.example.com/a.b/c__d/e-f--g:T_1.x-y".into(),
                "registry.example.com/a.b/c__d/e-f--g:T_1.x-y".into(),
            ),
            (
                format!("busybox@{dig}"),
                "docker.io",
                "library/busybox",
                None,
                true,
                format!("docker.io/library/busybox@{dig}"),
                format!("busybox@{dig}"),
            ),
            (
                format!("busybox:1@{dig}"),
                "docker.io",
                "library/busybox",
                Some("1"),
                true,
                format!("docker.io/library/busybox:1@{dig}"),
                format!("busybox:1@{dig}"),
            ),
            (
                format!("My.Registry:443/x@{dig}"),
                "My.Registry:443",
                "x",
                None,
                true,
                format!("My.Registry:443/x@{dig}"),
                format!("My.Registry:443/x@{dig}"),
            ),
        ];
        for (input, domain, path, tag, has_digest, full, familiar) in cases {
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.domain, domain, "{input}");
            assert_eq!(r.path, path, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest.is_some(), has_digest, "{input}");
            if has_digest {
                assert_eq!(r.digest, Some(d()), "{input}");
            }
            assert_eq!(r.to_string(), full, "{input}");
            assert_eq!(r.familiar(), familiar, "{input}");
            // The full form parses back to the same reference.
            assert_eq!(Reference::parse(&full).unwrap(), r, "{input}");
            assert_eq!(input.parse::<Reference>().unwrap(), r);
        }
    }

    #[test]
    fn rejects_invalid() {
        let long_tag = "a".repeat(129);
        let long_name = format!("{}/{}", "a".repeat(200), "b".repeat(60));
        let cases: Vec<(String, &str)> = vec![
            ("".into(), INVALID_FORMAT),
            (":".into(), INVALID_FORMAT),
            ("busybox:".into(), INVALID_FORMAT),
            (":latest".into(), INVALID_FORMAT),
            ("busybox:-x".into(), INVALID_FORMAT),
            ("busybox:.x".into(), INVALID_FORMAT),
            ("busybox:a b".into(), INVALID_FORMAT),
            (format!("busybox:{long_tag}"), INVALID_FORMAT),
            ("/busybox".into(), INVALID_FORMAT),
            ("busybox/".into(), INVALID_FORMAT),
            ("a//b".into(), INVALID_FORMAT),
            ("-abc".into(), INVALID_FORMAT),
            ("abc-".into(), INVALID_FORMAT),
            ("a..b".into(), INVALID_FORMAT),
            ("a___b".into(), INVALID_FORMAT),
            ("a_.b".into(), INVALID_FORMAT),
            ("a+b".into(), INVALID_FORMAT),
            ("bad host!/x".into(), INVALID_FORMAT),
            ("-host.com/x".into(), INVALID_FORMAT),
            ("host.com:/x".into(), INVALID_FORMAT),
            ("host.com:50a/x".into(), INVALID_FORMAT),
            ("[::1/x".into(), INVALID_FORMAT),
            ("[zz]:5000/x".into(), INVALID_FORMAT),
            ("busybox@sha256:abc".into(), INVALID_FORMAT),
            ("busybox@".into(), INVALID_FORMAT),
            ("busybox@@sha256:x".into(), INVALID_FORMAT),
            (
                format!("busybox@sha512:{HEX}{HEX}"),
                "unsupported digest algorithm",
            ),
            (
                format!("busybox@sha256:{HEX}aa"),
                "invalid checksum digest length",
            ),
            (
                format!("busybox@sha256:{}", HEX.to_uppercase()),
                "invalid checksum digest format",
            ),
            (
                "BusyBox".into(),
                "invalid reference format: repository name (library/BusyBox) must be lowercase",
            ),
            (
                "127.0.0.1:5000/Foo:Tag".into(),
                "invalid reference format: repository name (Foo) must be lowercase",
            ),
            (HEX.into(), "cannot specify 64-byte hexadecimal strings"),
            (long_name, "must not be more than 255 characters"),
        ];
        for (input, want) in cases {
            match Reference::parse(&input) {
                Err(ImageError::InvalidReference(msg)) => {
                    assert!(msg.contains(want), "{input:?}: got {msg:?}, want {want:?}")
                }
                other => panic!("{input:?}: expected error {want:?}, got {other:?}"),
            }
        }
    }

    #[test]
    fn upper_case_tags_and_domains_are_fine() {
        let r = Reference::parse("Example.COM/x:Latest").unwrap();
        assert_eq!(r.domain, "Example.COM");
        assert_eq!(r.tag.as_deref(), Some("Latest"));
        // An upper-case first component is taken as a registry host, like Docker does.
        let r = Reference::parse("Foo/bar").unwrap();
        assert_eq!(r.domain, "Foo");
        assert_eq!(r.path, "bar");
    }

    #[test]
    fn default_tag_and_repository() {
        let r = Reference::parse("busybox").unwrap().with_default_tag();
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(r.repository(), "busybox");
        assert_eq!(r.full_repository(), "docker.io/library/busybox");

        let r = Reference::parse("busybox:1").unwrap().with_default_tag();
        assert_eq!(r.tag.as_deref(), Some("1"));
        let r = Reference::parse(&format!("busybox@sha256:{HEX}"))
            .unwrap()
            .with_default_tag();
        assert_eq!(r.tag, None);

        let r = Reference::parse("127.0.0.1:5000/foo/bar:1").unwrap();
        assert_eq!(r.repository(), "127.0.0.1:5000/foo/bar");
        let t = r.with_tag("2").unwrap();
        assert_eq!(t.familiar(), "127.0.0.1:5000/foo/bar:2");
        assert!(r.with_tag("-bad").is_err());
        assert_eq!(format!("{r:?}"), "Reference(127.0.0.1:5000/foo/bar:1)");
    }

    #[test]
    fn id_helpers() {
        let full = format!("sha256:{HEX}");
        assert!(is_digest_id(&full));
        assert!(!is_digest_id(HEX));
        assert!(!is_digest_id("sha256:abc"));
        assert!(!is_digest_id(&full.to_uppercase()));
        assert!(is_hex_id(HEX));
        assert!(!is_hex_id(&HEX[1..]));
        assert!(is_id_prefix("e3b0"));
        assert!(is_id_prefix("sha256:e3b0"));
        assert!(is_id_prefix(HEX));
        assert!(!is_id_prefix(""));
        assert!(!is_id_prefix("sha256:"));
        assert!(!is_id_prefix("busybox"));
        assert!(!is_id_prefix(&format!("{HEX}0")));
        assert_eq!(parse_image_id(&full), Some(d()));
        assert_eq!(parse_image_id(HEX), Some(d()));
        assert_eq!(parse_image_id("e3b0"), None);
        assert_eq!(parse_image_id("busybox"), None);
    }
}
