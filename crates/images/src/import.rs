//! `docker import`: a rootfs tarball becomes a one-layer image, with `--change`
//! Dockerfile instructions applied to its config.

use std::collections::BTreeMap;
use std::io::{self, Read};

use chrono::{SecondsFormat, Utc};

use crate::blobstore::BlobStore;
use crate::compress::{copy_entry, read_error, tar_stream};
use crate::config::{ContainerConfig, Empty, HealthConfig, History, ImageConfig, RootFs};
use crate::digest::Digest;
use crate::error::{ImageError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// Digest of the config blob: the image ID.
    pub config: Digest,
    /// The stored (uncompressed) layer; equal to `diff_id`.
    pub layer_blob: Digest,
    pub diff_id: Digest,
}

/// Imports a (gzip/zstd/plain) rootfs tar. `platform` is `(os, arch)`; `arch` may
/// carry a variant (`arm64/v8`). An empty `message` becomes Docker's default.
pub fn import_rootfs<R: Read>(
    reader: R,
    store: &BlobStore,
    changes: &[String],
    message: &str,
    platform: (&str, &str),
) -> Result<ImportedImage> {
    // Bad changes fail before the upload is consumed.
    let mut cc = ContainerConfig::default();
    apply_changes(&mut cc, changes)?;

    let mut w = store.writer()?;
    let mut stream = tar_stream(reader)?;
    copy_entry(&mut stream, 0, &mut w)?;
    let (diff_id, created) = w.commit_created(None)?;
    if let Err(e) = check_tar(store, &diff_id) {
        if created {
            let _ = store.delete(&diff_id);
        }
        return Err(e);
    }

    let message = if message.is_empty() {
        "Imported from -"
    } else {
        message
    };
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
    let (arch, variant) = match platform.1.split_once('/') {
        Some((a, v)) => (a, Some(v.to_string())),
        None => (platform.1, None),
    };
    let cfg = ImageConfig {
        architecture: arch.to_string(),
        os: platform.0.to_string(),
        variant,
        created: Some(now.clone()),
        comment: Some(message.to_string()),
        config: Some(cc),
        rootfs: RootFs {
            diff_ids: vec![diff_id.clone()],
            ..RootFs::default()
        },
        history: vec![History {
            created: Some(now),
            comment: Some(message.to_string()),
            ..History::default()
        }],
        ..ImageConfig::default()
    };
    let bytes = serde_json::to_vec(&cfg).map_err(io::Error::other)?;
    let config = store.put_bytes(&bytes)?;
    Ok(ImportedImage {
        config,
        layer_blob: diff_id.clone(),
        diff_id,
    })
}

/// Reads the stored layer back as a tar, so garbage is refused like Docker does.
fn check_tar(store: &BlobStore, d: &Digest) -> Result<()> {
    let mut ar = tar::Archive::new(io::BufReader::new(store.open_blob(d)?));
    for e in ar.entries().map_err(read_error)? {
        let mut e = e.map_err(read_error)?;
        let size = e.size();
        copy_entry(&mut e, size, &mut io::sink())?;
    }
    Ok(())
}

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::InvalidChange(msg.into())
}

/// Applies Dockerfile instructions (CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK,
/// LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR) to a config.
pub fn apply_changes(cfg: &mut ContainerConfig, changes: &[String]) -> Result<()> {
    let mut cmd_set = false;
    for line in changes {
        apply_instruction(cfg, line, &[], &mut cmd_set)?;
    }
    Ok(())
}

/// Applies one metadata instruction (`ENV`, `LABEL`, `CMD`, …) to a config.
/// `vars` (`NAME=value`, e.g. a build's args) are seen by expansion beneath
/// the config's own `Env`; `cmd_set` says whether this sequence set `CMD`
/// already (a later `ENTRYPOINT` drops an inherited one).
pub fn apply_instruction(
    cfg: &mut ContainerConfig,
    line: &str,
    vars: &[String],
    cmd_set: &mut bool,
) -> Result<()> {
    {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let (instr, rest) = line
            .split_once(char::is_whitespace)
            .map(|(i, r)| (i, r.trim()))
            .unwrap_or((line, ""));
        let upper = instr.to_ascii_uppercase();
        let known = [
            "CMD",
            "ENTRYPOINT",
            "ENV",
            "EXPOSE",
            "HEALTHCHECK",
            "LABEL",
            "ONBUILD",
            "STOPSIGNAL",
            "USER",
            "VOLUME",
            "WORKDIR",
        ];
        if !known.contains(&upper.as_str()) {
            // Docker names the instruction in lower case here.
            return Err(bad(format!(
                "{} is not a valid change command",
                instr.to_ascii_lowercase()
            )));
        }
        if rest.is_empty() {
            return Err(bad(format!("{upper} requires at least one argument")));
        }
        let mut env = vars.to_vec();
        env.extend(cfg.env.clone().unwrap_or_default());
        match upper.as_str() {
            "CMD" => {
                cfg.cmd = Some(command_form(cfg, rest));
                *cmd_set = true;
            }
            "ENTRYPOINT" => {
                cfg.entrypoint = Some(command_form(cfg, rest));
                // As in a Dockerfile: a new entrypoint drops an inherited CMD.
                if !*cmd_set {
                    cfg.cmd = None;
                }
            }
            "ENV" => {
                let mut vars = cfg.env.take().unwrap_or_default();
                for (k, v) in name_values(rest, "ENV", &env)? {
                    let prefix = format!("{k}=");
                    let entry = format!("{k}={v}");
                    match vars.iter_mut().find(|e| e.starts_with(&prefix) || **e == k) {
                        Some(e) => *e = entry,
                        None => vars.push(entry),
                    }
                }
                cfg.env = Some(vars);
            }
            "LABEL" => {
                let labels = cfg.labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in name_values(rest, "LABEL", &env)? {
                    labels.insert(k, v);
                }
            }
            "EXPOSE" => {
                let ports = cfg.exposed_ports.get_or_insert_with(BTreeMap::new);
                for w in words(rest, &env, true)? {
                    for p in port_spec(&w)? {
                        ports.insert(p, Empty {});
                    }
                }
            }
            "USER" => cfg.user = Some(one_word(rest, &env)?),
            "WORKDIR" => {
                let w = one_word(rest, &env)?;
                let base = cfg.working_dir.clone().unwrap_or_default();
                let joined = if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{w}", if base.is_empty() { "/" } else { &base })
                };
                cfg.working_dir = Some(clean_abs(&joined));
            }
            "VOLUME" => {
                let list = match json_array(rest) {
                    Some(v) => v,
                    None => words(rest, &env, true)?,
                };
                let vols = cfg.volumes.get_or_insert_with(BTreeMap::new);
                for v in list {
                    let v = v.trim().to_string();
                    if v.is_empty() {
                        return Err(bad("VOLUME specified can not be an empty string"));
                    }
                    vols.insert(v, Empty {});
                }
            }
            "STOPSIGNAL" => {
                let s = one_word(rest, &env)?;
                let ok = s.chars().all(|c| c.is_ascii_digit())
                    || s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-');
                if !ok {
                    return Err(bad(format!("Invalid signal: {s}")));
                }
                cfg.stop_signal = Some(s);
            }
            "ONBUILD" => {
                let trigger = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                if matches!(trigger.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(bad(format!(
                        "{trigger} isn't allowed as an ONBUILD trigger"
                    )));
                }
                cfg.on_build
                    .get_or_insert_with(Vec::new)
                    .push(rest.to_string());
            }
            "HEALTHCHECK" => cfg.healthcheck = Some(healthcheck(rest)?),
            _ => {
                return Err(bad(format!(
                    "{} is not a valid change command",
                    instr.to_ascii_lowercase()
                )));
            }
        }
    }
    Ok(())
}

/// One Dockerfile word with quotes removed and `$VAR`s expanded from `vars`
/// (`NAME=value`, the last of a name wins).
pub fn expand_word(s: &str, vars: &[String]) -> Result<String> {
    one_word(s, vars)
}

/// Dockerfile words split at unquoted blanks, each expanded from `vars`.
pub fn expand_words(s: &str, vars: &[String]) -> Result<Vec<String>> {
    words(s, vars, true)
}

/// Exec form (`["a","b"]`) or shell form (run by the image's shell).
fn command_form(cfg: &ContainerConfig, rest: &str) -> Vec<String> {
    if let Some(v) = json_array(rest) {
        return v;
    }
    let mut shell = cfg
        .shell
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
    shell.push(rest.to_string());
    shell
}

fn json_array(s: &str) -> Option<Vec<String>> {
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s).ok()
}

fn one_word(rest: &str, env: &[String]) -> Result<String> {
    Ok(words(rest, env, false)?
        .into_iter()
        .next()
        .unwrap_or_default())
}

fn lookup<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

/// Splits Dockerfile words: quotes, backslash escapes and `$VAR`/`${VAR}` expansion
/// (with `:-` and `:+`). Without `split`, the whole text is one word.
fn words(s: &str, env: &[String], split: bool) -> Result<Vec<String>> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if split && c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                i += 1;
            }
            '\\' => {
                in_word = true;
                if let Some(n) = chars.get(i + 1) {
                    cur.push(*n);
                    i += 2;
                } else {
                    cur.push('\\');
                    i += 1;
                }
            }
            '\'' => {
                in_word = true;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(bad(
                                "unexpected end of statement while looking for matching single-quote",
                            ));
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            cur.push(*ch);
                            i += 1;
                        }
                    }
                }
            }
            '"' => {
                in_word = true;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(bad(
                                "unexpected end of statement while looking for matching double-quote",
                            ));
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') if matches!(chars.get(i + 1), Some('"' | '\\' | '$')) => {
                            cur.push(chars[i + 1]);
                            i += 2;
                        }
                        Some('$') => i = expand(&chars, i, env, &mut cur)?,
                        Some(ch) => {
                            cur.push(*ch);
                            i += 1;
                        }
                    }
                }
            }
            '$' => {
                in_word = true;
                i = expand(&chars, i, env, &mut cur)?;
            }
            c => {
                in_word = true;
                cur.push(c);
                i += 1;
            }
        }
    }
    if in_word || (!split && out.is_empty()) {
        out.push(cur);
    }
    Ok(out)
}

/// Expands the variable at `chars[i] == '$'`; returns the index after it.
fn expand(chars: &[char], i: usize, env: &[String], out: &mut String) -> Result<usize> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    match chars.get(i + 1) {
        Some('{') => {
            let Some(close) = chars[i + 2..].iter().position(|c| *c == '}') else {
                return Err(bad("missing '}' in variable substitution"));
            };
            let inner: String = chars[i + 2..i + 2 + close].iter().collect();
            let value = if let Some((name, default)) = inner.split_once(":-") {
                lookup(env, name)
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
                    .unwrap_or_else(|| default.to_string())
            } else if let Some((name, alt)) = inner.split_once(":+") {
                lookup(env, name)
                    .filter(|v| !v.is_empty())
                    .map(|_| alt.to_string())
                    .unwrap_or_default()
            } else {
                if !inner.chars().all(is_name) || inner.is_empty() {
                    return Err(bad(format!("bad substitution: ${{{inner}}}")));
                }
                lookup(env, &inner).unwrap_or("").to_string()
            };
            out.push_str(&value);
            Ok(i + 3 + close)
        }
        Some(c) if is_name(*c) => {
            let len = chars[i + 1..].iter().take_while(|c| is_name(**c)).count();
            let name: String = chars[i + 1..i + 1 + len].iter().collect();
            out.push_str(lookup(env, &name).unwrap_or(""));
            Ok(i + 1 + len)
        }
        _ => {
            out.push('$');
            Ok(i + 1)
        }
    }
}

/// `k=v k2="v 2"` pairs, or the legacy `k v w` (one pair, value "v w").
fn name_values(rest: &str, instr: &str, env: &[String]) -> Result<Vec<(String, String)>> {
    let first_raw = raw_first_token(rest);
    if !first_raw.contains('=') {
        let key = one_word(first_raw, env)?;
        let value_raw = rest[first_raw.len()..].trim();
        if value_raw.is_empty() {
            return Err(bad(format!("{instr} must have two arguments")));
        }
        return Ok(vec![(key, one_word(value_raw, env)?)]);
    }
    let mut out = Vec::new();
    for w in words(rest, env, true)? {
        let Some((k, v)) = w.split_once('=') else {
            return Err(bad(format!(
                "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
            )));
        };
        if k.is_empty() {
            return Err(bad(format!("{instr} names can not be blank")));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The first whitespace-separated token, honouring quotes and escapes.
fn raw_first_token(s: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (_, '\\') if quote != Some('\'') => escaped = true,
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => return &s[..i],
            _ => {}
        }
    }
    s
}

/// `80`, `80/udp`, `8000-8002/tcp` → `["80/tcp"]` etc.
fn port_spec(spec: &str) -> Result<Vec<String>> {
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad(format!("invalid proto: {proto}")));
    }
    if ports.contains(':') {
        return Err(bad(format!(
            "invalid containerPort: {ports}: EXPOSE does not support IP mapping"
        )));
    }
    let parse = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| bad(format!("invalid containerPort: {p}")))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(bad(format!("invalid range specified for port: {ports}")));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// Lexically cleans an absolute path (`/a/./b/../c` → `/a/c`).
fn clean_abs(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Parses a Go duration (`1m30s`, `500ms`, `1.5h`) into nanoseconds.
fn go_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * mult;
    }
    (total <= i64::MAX as f64).then_some(total as i64)
}

fn healthcheck(rest: &str) -> Result<HealthConfig> {
    let mut hc = HealthConfig::default();
    let mut rest = rest.trim();
    while let Some(flag_and_more) = rest.strip_prefix("--") {
        let (flag, more) = flag_and_more
            .split_once(char::is_whitespace)
            .unwrap_or((flag_and_more, ""));
        let (name, value) = flag
            .split_once('=')
            .ok_or_else(|| bad(format!("HEALTHCHECK flag --{flag} needs a value")))?;
        let dur = || {
            go_duration(value)
                .ok_or_else(|| bad(format!("invalid duration for --{name}: {value:?}")))
        };
        match name {
            "interval" => hc.interval = Some(dur()?),
            "timeout" => hc.timeout = Some(dur()?),
            "start-period" => hc.start_period = Some(dur()?),
            "start-interval" => hc.start_interval = Some(dur()?),
            "retries" => {
                hc.retries = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|r| *r >= 0)
                        .ok_or_else(|| bad(format!("invalid --retries value: {value:?}")))?,
                )
            }
            _ => return Err(bad(format!("unknown flag: --{name}"))),
        }
        rest = more.trim_start();
    }
    let (kind, args) = rest
        .split_once(char::is_whitespace)
        .map(|(k, a)| (k, a.trim()))
        .unwrap_or((rest, ""));
    match kind.to_ascii_uppercase().as_str() {
        "NONE" if args.is_empty() => {
            if hc != HealthConfig::default() {
                return Err(bad("HEALTHCHECK NONE takes no flags"));
            }
            hc.test = Some(vec!["NONE".into()]);
        }
        "CMD" if !args.is_empty() => {
            let test = match json_array(args) {
                Some(v) => std::iter::once("CMD".to_string()).chain(v).collect(),
                None => vec!["CMD-SHELL".to_string(), args.to_string()],
            };
            hc.test = Some(test);
        }
        _ => {
            return Err(bad("HEALTHCHECK must be NONE or CMD followed by a command"));
        }
    }
    Ok(hc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::tests::{raw, tar_of};
    use std::io::Write;
    use tar::EntryType;

    fn changes(lines: &[&str]) -> Result<ContainerConfig> {
        let mut c = ContainerConfig::default();
        let v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        apply_changes(&mut c, &v)?;
        Ok(c)
    }

    fn sv(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn command_forms() {
        let c = changes(&["CMD [\"/bin/sh\", \"-c\", \"echo hi\"]"]).unwrap();
        assert_eq!(c.cmd, sv(&["/bin/sh", "-c", "echo hi"]));
        let c = changes(&["cmd echo $HOME"]).unwrap();
        assert_eq!(c.cmd, sv(&["/bin/sh", "-c", "echo $HOME"]));
        // Not valid JSON: shell form.
        let c = changes(&["CMD [oops"]).unwrap();
        assert_eq!(c.cmd, sv(&["/bin/sh", "-c", "[oops"]));
        let c = changes(&["CMD [\"a\"]", "ENTRYPOINT [\"/init\"]"]).unwrap();
        assert_eq!(c.cmd, sv(&["a"]));
        assert_eq!(c.entrypoint, sv(&["/init"]));
        let mut c = ContainerConfig {
            cmd: sv(&["old"]),
            ..Default::default()
        };
        apply_changes(&mut c, &["ENTRYPOINT top -b".to_string()]).unwrap();
        assert_eq!(c.entrypoint, sv(&["/bin/sh", "-c", "top -b"]));
        assert_eq!(c.cmd, None);
    }

    #[test]
    fn env_and_labels() {
        let c = changes(&[
            "ENV A=1 B=\"two words\" C=x\\ y",
            "ENV LEGACY some value here",
            "ENV A=${A}0 D=$B E=${NOPE:-dflt} F=${A:+set}",
            "LABEL com.example.v=\"1.0\" 'quoted key'=v",
            "LABEL legacy label value",
        ])
        .unwrap();
        assert_eq!(
            c.env,
            sv(&[
                "A=10",
                "B=two words",
                "C=x y",
                "LEGACY=some value here",
                "D=two words",
                "E=dflt",
                "F=set"
            ])
        );
        let l = c.labels.unwrap();
        assert_eq!(l["com.example.v"], "1.0");
        assert_eq!(l["quoted key"], "v");
        assert_eq!(l["legacy"], "label value");
    }

    #[test]
    fn other_instructions() {
        let c = changes(&[
            "EXPOSE 80 443/udp 8000-8002",
            "USER nobody:nogroup",
            "WORKDIR /app",
            "WORKDIR sub/../src",
            "VOLUME [\"/data\", \"/logs\"]",
            "VOLUME /cache /tmp/x",
            "STOPSIGNAL SIGINT",
            "ONBUILD RUN echo hi",
            "HEALTHCHECK --interval=1m30s --timeout=500ms --retries=3 CMD curl -f http://localhost/",
        ])
        .unwrap();
        let ports: Vec<&str> = c
            .exposed_ports
            .as_ref()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            ports,
            vec!["443/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert_eq!(c.user.as_deref(), Some("nobody:nogroup"));
        assert_eq!(c.working_dir.as_deref(), Some("/app/src"));
        let vols: Vec<&str> = c
            .volumes
            .as_ref()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(vols, vec!["/cache", "/data", "/logs", "/tmp/x"]);
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
        assert_eq!(c.on_build, sv(&["RUN echo hi"]));
        let hc = c.healthcheck.unwrap();
        assert_eq!(hc.test, sv(&["CMD-SHELL", "curl -f http://localhost/"]));
        assert_eq!(hc.interval, Some(90_000_000_000));
        assert_eq!(hc.timeout, Some(500_000_000));
        assert_eq!(hc.retries, Some(3));
        let c = changes(&["HEALTHCHECK NONE"]).unwrap();
        assert_eq!(c.healthcheck.unwrap().test, sv(&["NONE"]));
        let c = changes(&["HEALTHCHECK CMD [\"/bin/check\", \"-q\"]"]).unwrap();
        assert_eq!(
            c.healthcheck.unwrap().test,
            sv(&["CMD", "/bin/check", "-q"])
        );
    }

    #[test]
    fn bad_changes() {
        let cases = [
            ("RUN echo hi", "run is not a valid change command"),
            ("FROM busybox", "from is not a valid change command"),
            ("ENV", "ENV requires at least one argument"),
            ("ENV =x", "ENV names can not be blank"),
            ("ENV A=1 B", "Syntax error - can't find = in \"B\""),
            ("ENV A=\"open", "matching double-quote"),
            ("EXPOSE 80/xyz", "invalid proto: xyz"),
            ("EXPOSE 99999", "invalid containerPort: 99999"),
            ("EXPOSE 90-80", "invalid range"),
            ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
            ("HEALTHCHECK --interval=abc CMD x", "invalid duration"),
            ("HEALTHCHECK WHAT", "HEALTHCHECK must be NONE or CMD"),
            ("STOPSIGNAL a;b", "Invalid signal"),
        ];
        for (line, want) in cases {
            let err = changes(&[line]).unwrap_err();
            assert!(
                matches!(err, ImageError::InvalidChange(_)),
                "{line}: {err:?}"
            );
            assert!(err.to_string().contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("30s"), Some(30_000_000_000));
        assert_eq!(go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(go_duration("1h2m3s4ms"), Some(3_723_004_000_000));
        assert_eq!(go_duration("0"), Some(0));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration(""), None);
        assert_eq!(go_duration("s"), None);
    }

    #[test]
    fn import_gzip_rootfs_with_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let tar = tar_of(|b| {
            raw(b, "bin/", EntryType::Directory, b"", None);
            raw(
                b,
                "bin/hello",
                EntryType::Regular,
                b"#!/bin/sh\necho hi\n",
                None,
            );
        });
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        let gz = e.finish().unwrap();
        let changes = vec!["CMD [\"/bin/hello\"]".to_string(), "ENV A=b".to_string()];
        let img = import_rootfs(&gz[..], &store, &changes, "", ("linux", "amd64")).unwrap();
        assert_eq!(img.diff_id, Digest::of(&tar));
        assert_eq!(img.layer_blob, img.diff_id);
        assert_eq!(store.read(&img.layer_blob).unwrap(), tar);
        let bytes = store.read(&img.config).unwrap();
        assert_eq!(Digest::of(&bytes), img.config);
        let cfg: ImageConfig = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (cfg.os.as_str(), cfg.architecture.as_str()),
            ("linux", "amd64")
        );
        assert_eq!(cfg.rootfs.diff_ids, vec![img.diff_id.clone()]);
        assert_eq!(cfg.rootfs.fs_type, "layers");
        assert_eq!(cfg.comment.as_deref(), Some("Imported from -"));
        assert_eq!(cfg.history.len(), 1);
        assert_eq!(cfg.history[0].comment.as_deref(), Some("Imported from -"));
        let created = cfg.created.unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(&created).is_ok());
        let cc = cfg.config.unwrap();
        assert_eq!(cc.cmd, sv(&["/bin/hello"]));
        assert_eq!(cc.env, sv(&["A=b"]));
        assert_eq!(store.list().unwrap().len(), 2);

        let img2 = import_rootfs(&tar[..], &store, &[], "my msg", ("linux", "arm64/v8")).unwrap();
        let cfg: ImageConfig = serde_json::from_slice(&store.read(&img2.config).unwrap()).unwrap();
        assert_eq!(cfg.architecture, "arm64");
        assert_eq!(cfg.variant.as_deref(), Some("v8"));
        assert_eq!(cfg.comment.as_deref(), Some("my msg"));
        assert_eq!(img2.diff_id, img.diff_id);
    }

    #[test]
    fn import_failures_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let garbage = b"definitely not a tarball".repeat(50);
        let err = import_rootfs(&garbage[..], &store, &[], "", ("linux", "amd64")).unwrap_err();
        assert!(matches!(err, ImageError::InvalidArchive(_)), "{err:?}");
        let tar = tar_of(|b| raw(b, "f", EntryType::Regular, b"data", None));
        let err = import_rootfs(&tar[..100], &store, &[], "", ("linux", "amd64")).unwrap_err();
        assert_eq!(err.to_string(), "unexpected EOF");
        let err = import_rootfs(
            &tar[..],
            &store,
            &["RUN x".to_string()],
            "",
            ("linux", "amd64"),
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::InvalidChange(_)));
        assert!(store.list().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}
