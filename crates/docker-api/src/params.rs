//! Docker's query-string conventions: lenient booleans, repeated keys, and filters
//! given as a JSON string in `filters` (both the map-of-lists and the old
//! map-of-maps form).

use std::collections::BTreeMap;

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Default, Clone)]
pub struct Params(pub Vec<(String, String)>);

fn decode(s: &str) -> String {
    let s = s.replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

impl Params {
    pub fn parse(query: Option<&str>) -> Params {
        Params(
            query
                .unwrap_or("")
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// Docker: "", "0", "false", "no", "off" (any case) are false; anything else true.
    pub fn bool(&self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(v) => !matches!(
                v.to_ascii_lowercase().as_str(),
                "" | "0" | "false" | "no" | "off"
            ),
        }
    }
    pub fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad(format!(
                    "invalid value for {key}: {v:?}, expected an integer"
                ))
            }),
        }
    }
    /// `h` and `w` of a resize request.
    pub fn terminal_size(&self) -> ApiResult<(u16, u16)> {
        let dim = |k: &str| -> ApiResult<u16> {
            let v = self.int(k)?.unwrap_or(0);
            u16::try_from(v).map_err(|_| ApiError::bad(format!("invalid value for {k}: {v}")))
        };
        Ok((dim("h")?, dim("w")?))
    }

    pub fn filters(&self) -> ApiResult<Filters> {
        Filters::parse(self.get("filters").unwrap_or(""))
    }
}

/// Parsed `filters`: key → accepted values.
#[derive(Debug, Default, Clone)]
pub struct Filters(pub BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn parse(s: &str) -> ApiResult<Filters> {
        if s.is_empty() {
            return Ok(Filters::default());
        }
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|e| ApiError::bad(format!("invalid filter: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ApiError::bad("invalid filter: expected a JSON object"))?;
        let mut out = BTreeMap::new();
        for (k, vals) in obj {
            let list: Vec<String> = match vals {
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| ApiError::bad(format!("invalid filter '{k}'")))?,
                serde_json::Value::Object(m) => m
                    .iter()
                    .filter(|(_, on)| on.as_bool().unwrap_or(false))
                    .map(|(x, _)| x.clone())
                    .collect(),
                _ => return Err(ApiError::bad(format!("invalid filter '{k}'"))),
            };
            out.insert(k.clone(), list);
        }
        Ok(Filters(out))
    }
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.0.get(key).map(|v| v.as_slice())
    }
    /// A true/false filter (`dangling=true`, `=1`, `=false`, `=0`); None
    /// when absent, 400 otherwise.
    pub fn boolean(&self, key: &str) -> ApiResult<Option<bool>> {
        match self.get(key).and_then(|v| v.first()).map(String::as_str) {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad(format!("invalid filter '{key}={v}'"))),
        }
    }
    /// The prune filter `until=` (a timestamp, RFC 3339 or a duration ago).
    pub fn until(&self) -> ApiResult<Option<chrono::DateTime<chrono::Utc>>> {
        self.get("until")
            .and_then(|v| v.first())
            .map(|u| crate::containers::parse_until(u))
            .transpose()
    }
    /// Fails on keys this endpoint does not know, as Docker does.
    pub fn only(&self, allowed: &[&str]) -> ApiResult<()> {
        for k in self.0.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::bad(format!("invalid filter '{k}'")));
            }
        }
        Ok(())
    }
    /// `label=key` or `label=key=value` against a label map.
    pub fn labels_match(&self, key: &str, labels: &BTreeMap<String, String>) -> bool {
        let Some(want) = self.get(key) else {
            return true;
        };
        want.iter().all(|w| match w.split_once('=') {
            Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
            None => labels.contains_key(w.as_str()),
        })
    }
    /// Whether a prune keeps an object with `labels`: the `label` filters
    /// do not all match, or a `label!` one does.
    pub fn prune_keeps(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.labels_match("label", labels) || self.labels_exclude("label!", labels)
    }

    /// `label!=...` style negative matching (`label!` key).
    pub fn labels_exclude(&self, key: &str, labels: &BTreeMap<String, String>) -> bool {
        let Some(want) = self.get(key) else {
            return false;
        };
        want.iter().any(|w| match w.split_once('=') {
            Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
            None => labels.contains_key(w.as_str()),
        })
    }
}

/// Docker's glob-ish name matching for `name=` filters is a regex search.
pub fn regex_match(pattern: &str, s: &str) -> bool {
    match regex::Regex::new(pattern) {
        Ok(r) => r.is_match(s),
        Err(_) => s.contains(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_bools_and_repeats() {
        let p = Params::parse(Some("a=1&b=False&c=&d=yes&n=x&n=y%20z&f=a+b"));
        assert!(p.bool("a"));
        assert!(!p.bool("b"));
        assert!(!p.bool("c"));
        assert!(p.bool("d"));
        assert!(!p.bool("missing"));
        assert_eq!(p.all("n"), vec!["x", "y z"]);
        assert_eq!(p.get("f"), Some("a b"));
        assert!(Params::parse(Some("t=x")).int("t").is_err());
    }

    #[test]
    fn filters_both_forms() {
        let f = Filters::parse(r#"{"status":["running"],"label":{"a=b":true}}"#).unwrap();
        assert_eq!(f.get("status").unwrap(), ["running"]);
        assert_eq!(f.get("label").unwrap(), ["a=b"]);
        assert!(f.only(&["status", "label"]).is_ok());
        assert!(f.only(&["status"]).is_err());
        assert!(Filters::parse("{nope").is_err());
        let mut labels = BTreeMap::new();
        labels.insert("a".to_string(), "b".to_string());
        assert!(f.labels_match("label", &labels));
        labels.insert("a".to_string(), "c".to_string());
        assert!(!f.labels_match("label", &labels));
    }
}
