//! Ids and names, as Docker makes and checks them.

use rand::Rng;
use rand::seq::IndexedRandom;

use crate::error::{Error, Result};

/// A new 64-hex-char object id.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill(&mut bytes);
    hex::encode(bytes)
}

/// Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, an optional leading slash.
pub fn validate_container_name(name: &str) -> Result<String> {
    let n = name.strip_prefix('/').unwrap_or(name);
    let mut chars = n.chars();
    let ok = n.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(n.to_string())
    } else {
        Err(Error::InvalidArgument(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )))
    }
}

const LEFT: &[&str] = &[
    "admiring",
    "brave",
    "calm",
    "clever",
    "dazzling",
    "eager",
    "focused",
    "gifted",
    "happy",
    "jolly",
    "keen",
    "lucid",
    "modest",
    "nifty",
    "optimistic",
    "quirky",
    "relaxed",
    "serene",
    "tender",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
];
const RIGHT: &[&str] = &[
    "albattani",
    "babbage",
    "curie",
    "darwin",
    "euler",
    "feynman",
    "galileo",
    "hopper",
    "hypatia",
    "kepler",
    "lovelace",
    "meitner",
    "newton",
    "noether",
    "pascal",
    "ritchie",
    "shannon",
    "tesla",
    "thompson",
    "turing",
    "wozniak",
    "yalow",
    "zhukovsky",
];

/// A Docker-style random name such as `brave_curie`; `attempt > 0` adds a digit.
pub fn random_name(attempt: u32) -> String {
    let mut rng = rand::rng();
    let l = LEFT.choose(&mut rng).copied().unwrap_or("happy");
    let r = RIGHT.choose(&mut rng).copied().unwrap_or("turing");
    if attempt == 0 {
        format!("{l}_{r}")
    } else {
        format!("{l}_{r}{}", rng.random_range(0..10))
    }
}

pub fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

pub fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_container_name("/web-1").unwrap(), "web-1");
        assert!(validate_container_name("a").is_err());
        assert!(validate_container_name("-x").is_err());
        assert!(validate_container_name("a b").is_err());
        assert!(validate_container_name("web/1").is_err());
        assert!(validate_container_name(&random_name(0)).is_ok());
        assert_eq!(new_id().len(), 64);
        assert!(is_hex(&new_id()));
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
    }
}
