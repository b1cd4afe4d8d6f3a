//! Affinity rules in Swarm's syntax, as Triton accepted them:
//! `-e 'affinity:container!=web*'`, `-e affinity:role==db`,
//! `--label 'com.docker.swarm.affinities=["container==db1"]'`.
//!
//! `key==value` (must share a server with a matching container), `key!=value`
//! (must not); a `~` before the value (`==~`, `!=~`) makes the rule soft: kept
//! when it can be satisfied, dropped when not. The key is `container` (matching
//! names and id prefixes) or a label name (matching that label's value). Values
//! are exact, a glob with `*`, or a `/regex/`.

use std::collections::BTreeMap;

use regex::Regex;

/// The label that carries rules as a JSON array of strings.
pub const AFFINITIES_LABEL: &str = "com.docker.swarm.affinities";
/// The environment prefix of a rule.
pub const ENV_PREFIX: &str = "affinity:";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid affinity rule {rule:?}: {why}")]
pub struct RuleError {
    pub rule: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// Container names and id prefixes.
    Container,
    /// The value of this label.
    Label(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// On a server that hosts a match.
    Together,
    /// On no server that hosts a match.
    Apart,
}

#[derive(Debug, Clone)]
pub enum Matcher {
    Exact(String),
    /// A glob (`*` only, as Swarm), compiled.
    Glob(Regex),
    /// `/re/`: a regex search, as Swarm does.
    Regex(Regex),
}

impl Matcher {
    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(v) => v == s,
            Matcher::Glob(re) | Matcher::Regex(re) => re.is_match(s),
        }
    }
}

/// One parsed rule; `text` is how the user wrote it (for messages).
#[derive(Debug, Clone)]
pub struct Rule {
    pub key: Key,
    pub op: Op,
    pub hard: bool,
    pub value: Matcher,
    pub text: String,
}

/// What a rule is matched against: one of the caller's own containers.
pub trait Candidate {
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    fn label(&self, key: &str) -> Option<&str>;
}

impl Rule {
    /// Parses `key==value`, `key!=value`, `key==~value`, `key!=~value`.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let err = |why: &str| RuleError {
            rule: text.to_string(),
            why: why.to_string(),
        };
        let t = text.trim();
        let (at, op) = match (t.find("=="), t.find("!=")) {
            (Some(a), Some(b)) if b < a => (b, Op::Apart),
            (Some(a), _) => (a, Op::Together),
            (None, Some(b)) => (b, Op::Apart),
            (None, None) => return Err(err("expected key==value or key!=value")),
        };
        let key = t[..at].trim();
        let mut value = t[at + 2..].trim();
        let hard = match value.strip_prefix('~') {
            Some(v) => {
                value = v.trim();
                false
            }
            None => true,
        };
        if key.is_empty() {
            return Err(err("the key is empty"));
        }
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        {
            return Err(err("the key may hold letters, digits and . _ - / only"));
        }
        if value.is_empty() {
            return Err(err("the value is empty"));
        }
        let key = if key == "container" {
            Key::Container
        } else {
            Key::Label(key.to_string())
        };
        let value = if value.len() >= 2 && value.starts_with('/') && value.ends_with('/') {
            let re = Regex::new(&value[1..value.len() - 1]).map_err(|e| err(&e.to_string()))?;
            Matcher::Regex(re)
        } else if value.contains('*') {
            let parts: Vec<String> = value.split('*').map(regex::escape).collect();
            let re =
                Regex::new(&format!("^{}$", parts.join(".*"))).map_err(|e| err(&e.to_string()))?;
            Matcher::Glob(re)
        } else {
            Matcher::Exact(value.to_string())
        };
        Ok(Rule {
            key,
            op,
            hard,
            value,
            text: t.to_string(),
        })
    }

    /// Whether `c` is a container this rule is about.
    pub fn matches(&self, c: &impl Candidate) -> bool {
        match &self.key {
            Key::Container => {
                if self.value.matches(c.name()) || self.value.matches(c.id()) {
                    return true;
                }
                // An exact value is also an id prefix, as Docker resolves ids.
                matches!(&self.value, Matcher::Exact(v)
                    if v.len() >= 3 && v.bytes().all(|b| b.is_ascii_hexdigit())
                        && c.id().starts_with(v.as_str()))
            }
            Key::Label(k) => c.label(k).is_some_and(|v| self.value.matches(v)),
        }
    }
}

/// The rules of a container create: `affinity:` entries of the environment (taken
/// out of it: they are instructions to the scheduler, not to the program) and the
/// affinities label.
pub fn rules_from(
    env: &mut Vec<String>,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<Rule>, RuleError> {
    let mut rules = Vec::new();
    let mut kept = Vec::with_capacity(env.len());
    for e in env.drain(..) {
        match e.strip_prefix(ENV_PREFIX) {
            Some(r) => rules.push(Rule::parse(r)?),
            None => kept.push(e),
        }
    }
    *env = kept;
    if let Some(json) = labels.get(AFFINITIES_LABEL) {
        let list: Vec<String> = serde_json::from_str(json).map_err(|e| RuleError {
            rule: json.clone(),
            why: format!("the {AFFINITIES_LABEL} label must be a JSON array of strings: {e}"),
        })?;
        for r in list {
            rules.push(Rule::parse(&r)?);
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct C(
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );
    impl Candidate for C {
        fn id(&self) -> &str {
            self.0
        }
        fn name(&self) -> &str {
            self.1
        }
        fn label(&self, key: &str) -> Option<&str> {
            self.2.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
        }
    }

    const WEB1: C = C("abc123def456", "web1", &[("role", "frontend")]);
    const DB: C = C("0123456789ab", "db", &[("role", "db")]);

    #[test]
    fn operators_and_softness() {
        let r = Rule::parse("container==db").unwrap();
        assert_eq!((r.op, r.hard), (Op::Together, true));
        let r = Rule::parse("container!=db").unwrap();
        assert_eq!((r.op, r.hard), (Op::Apart, true));
        let r = Rule::parse("container==~db").unwrap();
        assert_eq!((r.op, r.hard), (Op::Together, false));
        let r = Rule::parse(" role !=~ db ").unwrap();
        assert_eq!((r.op, r.hard), (Op::Apart, false));
        assert_eq!(r.key, Key::Label("role".into()));
    }

    #[test]
    fn exact_glob_regex_and_id_prefixes() {
        assert!(Rule::parse("container==web1").unwrap().matches(&WEB1));
        assert!(!Rule::parse("container==web").unwrap().matches(&WEB1));
        assert!(Rule::parse("container==web*").unwrap().matches(&WEB1));
        assert!(!Rule::parse("container==web*").unwrap().matches(&DB));
        assert!(
            Rule::parse("container==/^w.b[0-9]$/")
                .unwrap()
                .matches(&WEB1)
        );
        assert!(Rule::parse("container==abc123").unwrap().matches(&WEB1));
        // Too short to be taken as an id prefix.
        assert!(!Rule::parse("container==ab").unwrap().matches(&WEB1));
        // Glob metacharacters other than * are literal.
        assert!(!Rule::parse("container==w.b*").unwrap().matches(&WEB1));
        assert!(Rule::parse("role==db").unwrap().matches(&DB));
        assert!(!Rule::parse("role==db").unwrap().matches(&WEB1));
        assert!(Rule::parse("role==front*").unwrap().matches(&WEB1));
        assert!(!Rule::parse("missing==x").unwrap().matches(&WEB1));
    }

    #[test]
    fn bad_rules_are_refused_with_the_rule_named() {
        for bad in [
            "container",
            "==db",
            "container==",
            "container==~",
            "con tainer==x",
            "container==/[/",
        ] {
            let e = Rule::parse(bad).unwrap_err();
            assert_eq!(e.rule, bad.trim());
            assert!(e.to_string().contains("invalid affinity rule"), "{e}");
        }
    }

    #[test]
    fn rules_come_from_env_and_the_label_and_leave_the_env() {
        let mut env = vec![
            "A=1".to_string(),
            "affinity:container!=web*".to_string(),
            "affinity:role==~db".to_string(),
        ];
        let mut labels = BTreeMap::new();
        labels.insert(
            AFFINITIES_LABEL.to_string(),
            r#"["container==db1"]"#.to_string(),
        );
        let rules = rules_from(&mut env, &labels).unwrap();
        assert_eq!(env, vec!["A=1".to_string()]);
        let texts: Vec<&str> = rules.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts, ["container!=web*", "role==~db", "container==db1"]);

        labels.insert(AFFINITIES_LABEL.to_string(), "container==db1".to_string());
        let e = rules_from(&mut Vec::new(), &labels).unwrap_err();
        assert!(e.why.contains("JSON array"), "{e}");
    }
}
