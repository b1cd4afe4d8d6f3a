//! A Dockerfile as the builder runs it: stages of steps, each with its line,
//! the text `Step N/M :` shows, and what it does. Parsing is the
//! `parse-dockerfile` crate's; this module turns its syntax tree into steps
//! (joined continuation lines, heredoc scripts, flags checked), so nothing
//! later looks at Dockerfile text again.

use std::collections::BTreeMap;

use parse_dockerfile::{Command, Flag, HealthcheckArguments, Instruction, JsonOrStringArray};

use crate::error::{BuildError, Result};

/// A command in exec form (`["a", "b"]`) or shell form (run by `SHELL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    Exec(Vec<String>),
    Shell(String),
}

/// A `RUN --mount=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMount {
    /// A directory kept between builds on the building server, per account.
    Cache {
        target: String,
        id: Option<String>,
        sharing: String,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// A build secret, read-only at `target`.
    Secret {
        id: String,
        target: Option<String>,
        required: bool,
    },
    /// A temporary directory.
    Tmpfs { target: String },
}

/// A source of `COPY`/`ADD`: a context path (or pattern, or URL for `ADD`),
/// or a heredoc's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    Path(String),
    HereDoc {
        name: String,
        body: String,
        expand: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStep {
    pub add: bool,
    pub sources: Vec<CopySource>,
    pub dest: String,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    /// `ADD --checksum=sha256:…`: what a downloaded source must hash to.
    pub checksum: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    Run {
        command: CommandForm,
        mounts: Vec<RunMount>,
        network: Option<String>,
    },
    Copy(CopyStep),
    /// `ARG name[=default]…`.
    Arg(Vec<(String, Option<String>)>),
    Shell(Vec<String>),
    /// `MAINTAINER`: the image's author.
    Maintainer(String),
    /// Everything that only changes the image config (`ENV`, `LABEL`, `CMD`,
    /// `ENTRYPOINT`, `EXPOSE`, `USER`, `WORKDIR`, `VOLUME`, `STOPSIGNAL`,
    /// `HEALTHCHECK`, `ONBUILD`), as the logical line to apply.
    Config {
        instruction: String,
        line: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// 1-based line of the instruction.
    pub line: usize,
    /// The instruction as `Step N/M :` shows it (continuations joined).
    pub text: String,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub index: usize,
    /// `AS name`, lower-cased as Docker compares them.
    pub name: Option<String>,
    /// The base as written (`${ARG}`s not yet expanded).
    pub base: String,
    pub platform: Option<String>,
    pub line: usize,
    pub text: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// `ARG`s before the first `FROM`: usable in `FROM` lines, and in a stage
    /// after an `ARG name` without a value.
    pub global_args: Vec<(String, Option<String>)>,
    pub stages: Vec<Stage>,
}

/// The line (1-based) of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The logical line starting at `start`: continuation lines joined (the
/// escape character and newline dropped), comment lines inside skipped.
fn logical_line(text: &str, start: usize, escape: char) -> String {
    let mut out = String::new();
    let mut first = true;
    for raw in text[start..].split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if !first && line.trim_start().starts_with('#') {
            continue;
        }
        first = false;
        let trimmed = line.trim_end();
        match trimmed.strip_suffix(escape) {
            Some(rest) => out.push_str(rest),
            None => {
                out.push_str(trimmed);
                break;
            }
        }
    }
    out.trim().to_string()
}

/// Shell text with continuations removed, as the shell should see it.
fn join_continuations(raw: &str, escape: char) -> String {
    let mut out = String::new();
    let mut lines = raw.split('\n').peekable();
    let mut first = true;
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !first && line.trim_start().starts_with('#') {
            continue;
        }
        first = false;
        match line.trim_end().strip_suffix(escape) {
            Some(rest) if lines.peek().is_some() => out.push_str(rest),
            _ => {
                out.push_str(line);
                if lines.peek().is_some() {
                    out.push('\n');
                }
            }
        }
    }
    out.trim().to_string()
}

fn flag_value(f: &Flag<'_>) -> Option<String> {
    f.value.as_ref().map(|v| v.value.to_string())
}

/// `--name=value` flags an instruction allows; anything else is the
/// builder's "unknown flag" error.
fn flags(
    instruction: &str,
    options: &[Flag<'_>],
    allowed: &[&str],
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in options {
        let name = f.name.value.to_string();
        if !allowed.contains(&name.as_str()) {
            return Err(BuildError::Dockerfile(format!(
                "{instruction} does not support the --{name} flag"
            )));
        }
        out.entry(name)
            .or_default()
            .push(flag_value(f).unwrap_or_default());
    }
    Ok(out)
}

fn command(c: &Command<'_>, escape: char) -> CommandForm {
    match c {
        Command::Exec(v) => {
            CommandForm::Exec(v.value.iter().map(|s| s.value.to_string()).collect())
        }
        Command::Shell(s) => CommandForm::Shell(join_continuations(s.value, escape)),
        _ => CommandForm::Shell(String::new()),
    }
}

/// `type=cache,target=/x,id=y` and friends.
fn parse_mount(spec: &str) -> Result<RunMount> {
    let mut kv = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, "true"));
        kv.insert(k.to_ascii_lowercase(), v.to_string());
    }
    let target = kv
        .get("target")
        .or_else(|| kv.get("dst"))
        .or_else(|| kv.get("destination"))
        .cloned();
    let num = |k: &str| -> Result<Option<u32>> {
        kv.get(k)
            .map(|v| {
                let (digits, radix) = if k == "mode" {
                    (v.as_str(), 8)
                } else {
                    (v.as_str(), 10)
                };
                u32::from_str_radix(digits, radix)
                    .map_err(|_| BuildError::Dockerfile(format!("invalid {k} {v:?} in --mount")))
            })
            .transpose()
    };
    let kind = kv.get("type").map(String::as_str).unwrap_or("bind");
    match kind {
        "cache" => Ok(RunMount::Cache {
            target: target.ok_or_else(|| {
                BuildError::Dockerfile("--mount=type=cache needs a target".into())
            })?,
            id: kv.get("id").cloned(),
            sharing: kv
                .get("sharing")
                .cloned()
                .unwrap_or_else(|| "shared".into()),
            mode: num("mode")?,
            uid: num("uid")?,
            gid: num("gid")?,
        }),
        "secret" => {
            let id = kv.get("id").cloned().or_else(|| {
                target
                    .as_deref()
                    .and_then(|t| t.rsplit('/').next())
                    .map(str::to_string)
            });
            Ok(RunMount::Secret {
                id: id.ok_or_else(|| {
                    BuildError::Dockerfile("--mount=type=secret needs an id or a target".into())
                })?,
                target,
                required: kv.get("required").is_some_and(|v| v == "true"),
            })
        }
        "tmpfs" => Ok(RunMount::Tmpfs {
            target: target.ok_or_else(|| {
                BuildError::Dockerfile("--mount=type=tmpfs needs a target".into())
            })?,
        }),
        other => Err(BuildError::Dockerfile(format!(
            "--mount type {other:?} is not supported (cache, secret and tmpfs are)"
        ))),
    }
}

/// Heredoc delimiters on a line, in order (`<<EOF`, `<<-"EOF"`).
fn heredoc_names(line: &str) -> Vec<String> {
    let re = regex::Regex::new(r#"<<-?(["']?)([A-Za-z0-9_.-]+)(["']?)"#).expect("static regex");
    re.captures_iter(line).map(|c| c[2].to_string()).collect()
}

/// `ARG a=1 b` → pairs.
fn arg_pairs(raw: &str) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    for w in images::import::expand_words(raw, &[]).map_err(BuildError::from_image)? {
        match w.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
            None => out.push((w, None)),
        }
    }
    if out.is_empty() {
        return Err(BuildError::Dockerfile(
            "ARG requires at least one argument".into(),
        ));
    }
    Ok(out)
}

fn keyword_start(i: &Instruction<'_>) -> usize {
    match i {
        Instruction::Add(x) => x.add.span.start,
        Instruction::Arg(x) => x.arg.span.start,
        Instruction::Cmd(x) => x.cmd.span.start,
        Instruction::Copy(x) => x.copy.span.start,
        Instruction::Entrypoint(x) => x.entrypoint.span.start,
        Instruction::Env(x) => x.env.span.start,
        Instruction::Expose(x) => x.expose.span.start,
        Instruction::From(x) => x.from.span.start,
        Instruction::Healthcheck(x) => x.healthcheck.span.start,
        Instruction::Label(x) => x.label.span.start,
        Instruction::Maintainer(x) => x.maintainer.span.start,
        Instruction::Onbuild(x) => x.onbuild.span.start,
        Instruction::Run(x) => x.run.span.start,
        Instruction::Shell(x) => x.shell.span.start,
        Instruction::Stopsignal(x) => x.stopsignal.span.start,
        Instruction::User(x) => x.user.span.start,
        Instruction::Volume(x) => x.volume.span.start,
        Instruction::Workdir(x) => x.workdir.span.start,
        _ => 0,
    }
}

/// Parses a Dockerfile. Errors name the line, as Docker's do.
pub fn parse(text: &str) -> Result<Dockerfile> {
    let parsed = parse_dockerfile::parse(text).map_err(|e| {
        BuildError::Dockerfile(format!(
            "dockerfile parse error on line {}: {}",
            e.line(),
            strip_position(&e.to_string())
        ))
    })?;
    let escape = parsed
        .parser_directives
        .escape
        .as_ref()
        .map(|d| d.value.value)
        .unwrap_or('\\');
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in &parsed.instructions {
        let start = keyword_start(ins);
        let line = line_of(text, start);
        let text_line = logical_line(text, start, escape);
        let at = |e: BuildError| match e {
            BuildError::Dockerfile(m) => {
                BuildError::Dockerfile(format!("dockerfile parse error on line {line}: {m}"))
            }
            e => e,
        };
        if let Instruction::From(f) = ins {
            let opts = flags("FROM", &f.options, &["platform"]).map_err(at)?;
            let name = f.as_.as_ref().map(|(_, n)| n.value.to_ascii_lowercase());
            stages.push(Stage {
                index: stages.len(),
                name,
                base: f.image.value.to_string(),
                platform: opts.get("platform").and_then(|v| v.last().cloned()),
                line,
                text: text_line,
                steps: Vec::new(),
            });
            continue;
        }
        let kind = step_kind(ins, text, escape, &text_line).map_err(at)?;
        match stages.last_mut() {
            Some(stage) => stage.steps.push(Step {
                line,
                text: text_line,
                kind,
            }),
            None => match kind {
                StepKind::Arg(pairs) => global_args.extend(pairs),
                _ => {
                    return Err(BuildError::Dockerfile(format!(
                        "dockerfile parse error on line {line}: no build stage in current context"
                    )));
                }
            },
        }
    }
    if stages.is_empty() {
        return Err(BuildError::Dockerfile(
            "the Dockerfile has no FROM instruction".into(),
        ));
    }
    Ok(Dockerfile {
        global_args,
        stages,
    })
}

/// The parser's message without its own " at line N column M" tail.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn step_kind(ins: &Instruction<'_>, text: &str, escape: char, line: &str) -> Result<StepKind> {
    let rest_of = |kw: &str| -> String { line.get(kw.len()..).unwrap_or("").trim().to_string() };
    let config = |kw: &str| StepKind::Config {
        instruction: kw.to_string(),
        line: format!("{kw} {}", rest_of(kw)),
    };
    Ok(match ins {
        Instruction::Run(r) => {
            let opts = flags("RUN", &r.options, &["mount", "network", "security"])?;
            if opts.contains_key("security") {
                return Err(BuildError::Dockerfile(
                    "RUN --security is not supported: build steps never run privileged".into(),
                ));
            }
            let mounts = opts
                .get("mount")
                .map(|v| v.iter().map(|m| parse_mount(m)).collect::<Result<Vec<_>>>())
                .transpose()?
                .unwrap_or_default();
            let network = opts.get("network").and_then(|v| v.last().cloned());
            if let Some(n) = &network
                && !matches!(n.as_str(), "none" | "default" | "host")
            {
                return Err(BuildError::Dockerfile(format!(
                    "RUN --network={n} is not supported (none or default)"
                )));
            }
            let command = if r.here_docs.is_empty() {
                command(&r.arguments, escape)
            } else {
                heredoc_script(r, text)
            };
            StepKind::Run {
                command,
                mounts,
                network,
            }
        }
        Instruction::Copy(c) => StepKind::Copy(copy_step(
            false,
            flags(
                "COPY",
                &c.options,
                &["from", "chown", "chmod", "link", "parents", "exclude"],
            )?,
            &c.src,
            &c.dest.value,
            line,
        )?),
        Instruction::Add(a) => StepKind::Copy(copy_step(
            true,
            flags(
                "ADD",
                &a.options,
                &["chown", "chmod", "link", "checksum", "keep-git-dir"],
            )?,
            &a.src,
            &a.dest.value,
            line,
        )?),
        Instruction::Arg(a) => StepKind::Arg(arg_pairs(&a.arguments.value)?),
        Instruction::Shell(s) => {
            StepKind::Shell(s.arguments.iter().map(|a| a.value.to_string()).collect())
        }
        Instruction::Maintainer(m) => StepKind::Maintainer(m.name.value.to_string()),
        Instruction::Healthcheck(h) => {
            // Checked here; the values are read by the config's applier.
            flags(
                "HEALTHCHECK",
                &h.options,
                &[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ],
            )?;
            if let HealthcheckArguments::Cmd { arguments, .. } = &h.arguments
                && let Command::Exec(v) = arguments
                && v.value.is_empty()
            {
                return Err(BuildError::Dockerfile(
                    "HEALTHCHECK CMD needs a command".into(),
                ));
            }
            config("HEALTHCHECK")
        }
        Instruction::Volume(v) => {
            if let JsonOrStringArray::Json(a) = &v.arguments
                && a.value.is_empty()
            {
                return Err(BuildError::Dockerfile(
                    "VOLUME needs at least one path".into(),
                ));
            }
            config("VOLUME")
        }
        Instruction::Cmd(_) => config("CMD"),
        Instruction::Entrypoint(_) => config("ENTRYPOINT"),
        Instruction::Env(_) => config("ENV"),
        Instruction::Expose(_) => config("EXPOSE"),
        Instruction::Label(_) => config("LABEL"),
        Instruction::Onbuild(_) => config("ONBUILD"),
        Instruction::Stopsignal(_) => config("STOPSIGNAL"),
        Instruction::User(_) => config("USER"),
        Instruction::Workdir(_) => config("WORKDIR"),
        _ => return Err(BuildError::Dockerfile("unknown instruction".into())),
    })
}

/// A `RUN` with heredocs: a lone heredoc is the script; otherwise the
/// command line with its heredocs is handed to the shell as written.
fn heredoc_script(r: &parse_dockerfile::RunInstruction<'_>, text: &str) -> CommandForm {
    let cmd_start = r
        .options
        .iter()
        .map(|f| f.span().end)
        .max()
        .unwrap_or(r.run.span.end);
    let first_line_end = text[cmd_start..]
        .find('\n')
        .map(|i| cmd_start + i)
        .unwrap_or(text.len());
    let first_line = &text[cmd_start..first_line_end];
    let names = heredoc_names(first_line);
    let re = regex::Regex::new(r#"<<-?["']?[A-Za-z0-9_.-]+["']?"#).expect("static regex");
    if re.replace_all(first_line, "").trim().is_empty() && r.here_docs.len() == 1 {
        return CommandForm::Shell(r.here_docs[0].value.to_string());
    }
    let last = r
        .here_docs
        .last()
        .map(|h| h.span.end)
        .unwrap_or(first_line_end);
    let mut script = text[cmd_start..last.min(text.len())]
        .trim_start()
        .to_string();
    if !script.ends_with('\n') {
        script.push('\n');
    }
    script.push_str(names.last().map(String::as_str).unwrap_or("EOF"));
    CommandForm::Shell(script)
}

fn copy_step(
    add: bool,
    opts: BTreeMap<String, Vec<String>>,
    src: &[parse_dockerfile::Source<'_>],
    dest: &str,
    line: &str,
) -> Result<CopyStep> {
    let kw = if add { "ADD" } else { "COPY" };
    for unsupported in ["parents", "exclude", "keep-git-dir"] {
        if opts.contains_key(unsupported) {
            return Err(BuildError::Dockerfile(format!(
                "{kw} --{unsupported} is not supported"
            )));
        }
    }
    if add && opts.contains_key("from") {
        return Err(BuildError::Dockerfile(
            "ADD does not support the --from flag".into(),
        ));
    }
    let mut names = heredoc_names(line).into_iter();
    let sources = src
        .iter()
        .map(|s| match s {
            parse_dockerfile::Source::Path(p) => CopySource::Path(p.value.to_string()),
            parse_dockerfile::Source::HereDoc(h) => CopySource::HereDoc {
                name: names.next().unwrap_or_else(|| "EOF".into()),
                body: h.value.to_string(),
                expand: h.expand,
            },
            _ => CopySource::Path(String::new()),
        })
        .collect();
    let last = |k: &str| opts.get(k).and_then(|v| v.last().cloned());
    Ok(CopyStep {
        add,
        sources,
        dest: dest.to_string(),
        from: last("from"),
        chown: last("chown"),
        chmod: last("chmod"),
        checksum: last("checksum"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_steps_and_logical_lines() {
        let d = parse(
            "ARG BASE=busybox\nFROM ${BASE} AS Build\nRUN echo a \\\n  # note\n  && echo b\nENV A=1 \\\n  B=2\nFROM build\nCOPY --from=build --chown=1:2 /a /b/\nCMD [\"sh\"]\n",
        )
        .unwrap();
        assert_eq!(d.global_args, vec![("BASE".into(), Some("busybox".into()))]);
        assert_eq!(d.stages.len(), 2);
        let s0 = &d.stages[0];
        assert_eq!(
            (s0.name.as_deref(), s0.base.as_str(), s0.line),
            (Some("build"), "${BASE}", 2)
        );
        assert_eq!(s0.steps[0].text, "RUN echo a   && echo b");
        assert_eq!(
            s0.steps[0].kind,
            StepKind::Run {
                command: CommandForm::Shell("echo a   && echo b".into()),
                mounts: vec![],
                network: None
            }
        );
        assert_eq!(s0.steps[1].line, 6);
        assert_eq!(
            s0.steps[1].kind,
            StepKind::Config {
                instruction: "ENV".into(),
                line: "ENV A=1   B=2".into()
            }
        );
        let StepKind::Copy(c) = &d.stages[1].steps[0].kind else {
            panic!("copy")
        };
        assert_eq!(c.from.as_deref(), Some("build"));
        assert_eq!(c.chown.as_deref(), Some("1:2"));
        assert_eq!(c.sources, vec![CopySource::Path("/a".into())]);
    }

    #[test]
    fn heredocs_become_scripts_and_files() {
        let d = parse(
            "FROM x\nRUN <<EOF\necho one\necho two\nEOF\nRUN <<EOF cat > /out\nhi $A\nEOF\nCOPY <<-EOT /etc/x\n\tbody\nEOT\n",
        )
        .unwrap();
        let steps = &d.stages[0].steps;
        assert_eq!(
            steps[0].kind,
            StepKind::Run {
                command: CommandForm::Shell("echo one\necho two\n".into()),
                mounts: vec![],
                network: None
            }
        );
        assert_eq!(
            steps[1].kind,
            StepKind::Run {
                command: CommandForm::Shell("<<EOF cat > /out\nhi $A\nEOF".into()),
                mounts: vec![],
                network: None
            }
        );
        let StepKind::Copy(c) = &steps[2].kind else {
            panic!("copy")
        };
        assert_eq!(
            c.sources,
            vec![CopySource::HereDoc {
                name: "EOT".into(),
                body: "body\n".into(),
                expand: true
            }]
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("FROM x\nRUN true\nFOO bar\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("FOO"), "{e}");
        let e = parse("FROM x\nCOPY --bogus=1 a b\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("--bogus"), "{e}");
        let e = parse("RUN x\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn run_mounts_and_network() {
        let d = parse("FROM x\nRUN --mount=type=cache,target=/root/.cache,id=pip --network=none pip install\n")
            .unwrap();
        assert_eq!(
            d.stages[0].steps[0].kind,
            StepKind::Run {
                command: CommandForm::Shell("pip install".into()),
                mounts: vec![RunMount::Cache {
                    target: "/root/.cache".into(),
                    id: Some("pip".into()),
                    sharing: "shared".into(),
                    mode: None,
                    uid: None,
                    gid: None
                }],
                network: Some("none".into())
            }
        );
    }
}
