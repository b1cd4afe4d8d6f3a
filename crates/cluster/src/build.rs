//! `docker build` (the classic builder's API and output): each step of the
//! Dockerfile runs as a container of the account on a server placement
//! chooses (its package, user namespace and networks), and its result is an
//! image config plus, for `RUN` and `COPY`, the container's changes as a
//! layer. Results are kept per account in the store's build cache, keyed by
//! parent image, instruction and inputs, so a later build on any server
//! reuses them. Intermediate images are cache entries, not image records;
//! only the final image is the account's.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;

use bollard_stubs::models::{ContainerCreateBody, HostConfig};
use build::context::{Context, Item};
use build::dockerfile::{CommandForm, CopySource, CopyStep, Dockerfile, Stage, StepKind};
use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use http_body_util::BodyExt;
use images::Digest;
use images::config::ContainerConfig;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::containers::{WaitCondition, upstream};
use crate::error::{Error, Result};
use crate::images::ProgressTx;
use crate::model::{BuildCacheRecord, ImageLayer, ImageRecord};
use crate::names;

/// The most of a build context the head accepts.
pub const MAX_CONTEXT: u64 = 16 << 30;
/// The most of a refused context read and dropped before answering (so the
/// client, still sending, gets the answer rather than a broken pipe).
pub const DRAIN_ON_REFUSAL: usize = 256 << 20;
/// Builds an account runs at once; more wait for one to end.
const BUILDS_PER_ACCOUNT: usize = 4;
/// How often an idle build stream gets a blank line.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(3);
/// The most paths one `COPY --from` wildcard may match.
const MAX_WILDCARD_MATCHES: usize = 10_000;
/// The most of a Dockerfile read from the context.
const MAX_DOCKERFILE: u64 = 4 << 20;

/// What the client asked for (Docker's `POST /build` query).
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub tags: Vec<String>,
    pub dockerfile: String,
    pub quiet: bool,
    pub no_cache: bool,
    pub pull: bool,
    /// Remove intermediate containers after a successful step (`rm`).
    pub remove: bool,
    /// ... and after a failed one too (`forcerm`).
    pub force_remove: bool,
    pub build_args: BTreeMap<String, Option<String>>,
    pub labels: BTreeMap<String, String>,
    pub target: Option<String>,
    pub network_mode: Option<String>,
    pub extra_hosts: Vec<String>,
    pub shm_size: Option<i64>,
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub cpu_period: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub platform: Option<String>,
    pub cache_from: Vec<String>,
    /// Registry credentials by registry host (`X-Registry-Config`).
    pub credentials: BTreeMap<String, images::registry::Credentials>,
}

/// A build whose context arrived and whose Dockerfile parsed: what can fail
/// as a plain HTTP error has failed by now.
pub struct PreparedBuild {
    /// One of the account's concurrent builds, held to the end.
    _slot: tokio::sync::OwnedSemaphorePermit,
    account: String,
    opts: BuildOptions,
    context: Arc<Context>,
    dockerfile: Dockerfile,
    /// Indexes of the stages to run, in order.
    stages: Vec<usize>,
    /// The step containers that exist now: a cancelled build removes them.
    live: std::sync::Mutex<BTreeSet<String>>,
    /// The server of the latest step.
    server: std::sync::Mutex<Option<String>>,
    /// Cache entries this build reused, their use to record at the end.
    touched: std::sync::Mutex<Vec<BuildCacheRecord>>,
    /// The `--cache-from` images the account has.
    sources: Vec<Current>,
}

/// What a `RUN --mount` adds to its step's container.
#[derive(Debug, Default)]
struct StepMounts {
    tmpfs: Vec<String>,
    volumes: Vec<agent_client::MountSpec>,
    /// Volumes of `sharing=private` mounts: this step's alone, removed after.
    private: Vec<String>,
    /// Volumes of `sharing=locked` mounts: one step at a time uses each.
    locked: Vec<String>,
}

/// The image a step works on.
#[derive(Debug, Clone)]
struct Current {
    id: String,
    layers: Vec<ImageLayer>,
    config: Value,
}

/// A file a `COPY` or `ADD` makes that is not in the context.
struct Extra {
    /// Where it came from (a heredoc, a URL), for messages.
    origin: String,
    /// Its name in the destination directory.
    name: String,
    /// What the cache key knows of it beyond its name and mode.
    sum: String,
    mode: u32,
    mtime: u64,
    content: ExtraContent,
}

enum ExtraContent {
    Text(String),
    /// A download: an unnamed file and its length.
    File(std::fs::File, u64),
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// What identifies a step's result beyond its cache key: how the image's
/// history names it (the key `--cache-from` images are matched by, as
/// Docker's classic builder does) and, for a step that changes the
/// config, the new config.
struct Probe<'a> {
    description: &'a str,
    created_by: &'a str,
    cfg: Option<&'a Value>,
}

/// A step's result found in a `--cache-from` image.
enum Reused {
    /// The image itself: the step was its last.
    Image(Current),
    /// The current image plus the image's entry for the step.
    Built {
        config: Value,
        layers: Vec<ImageLayer>,
    },
}

/// What the steps of a stage see of the whole build.
struct Scope<'a> {
    /// The stages that ran, by index (for `COPY --from`).
    results: &'a BTreeMap<usize, Current>,
    /// Global ARGs' values, for an `ARG` that names one.
    globals: &'a BTreeMap<String, String>,
    predefined: &'a BTreeMap<String, String>,
    /// The `--build-arg`s some `ARG` took.
    consumed: &'a mut BTreeSet<String>,
}

/// One stage's state while it runs.
struct StageState {
    cur: Current,
    /// ARGs declared in this stage, with their values.
    args: BTreeMap<String, String>,
    cmd_set: bool,
}

impl StageState {
    /// The ARGs in effect as `NAME=value`, for expansion.
    fn arg_vars(&self) -> Vec<String> {
        self.args.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    fn container_config(&self) -> Result<ContainerConfig> {
        serde_json::from_value(self.cur.config["config"].clone())
            .map_err(|e| Error::InvalidArgument(format!("invalid image config: {e}")))
    }

    /// Expansion variables: the ARGs beneath the image's `ENV`.
    fn vars(&self) -> Vec<String> {
        let mut v = self.arg_vars();
        v.extend(
            self.cur.config["config"]["Env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(str::to_string)),
        );
        v
    }
}

fn build_error(e: build::BuildError) -> Error {
    match e {
        build::BuildError::Io(e) => Error::internal("build context", e),
        e => Error::InvalidArgument(e.to_string()),
    }
}

/// Args every build knows without a value from the client.
fn predefined_args(platform: &str) -> BTreeMap<String, String> {
    let (os, arch) = platform.split_once('/').unwrap_or(("linux", "amd64"));
    BTreeMap::from([
        ("TARGETPLATFORM".into(), platform.to_string()),
        ("TARGETOS".into(), os.to_string()),
        ("TARGETARCH".into(), arch.to_string()),
        ("TARGETVARIANT".into(), String::new()),
        ("BUILDPLATFORM".into(), "linux/amd64".into()),
        ("BUILDOS".into(), "linux".into()),
        ("BUILDARCH".into(), "amd64".into()),
        ("BUILDVARIANT".into(), String::new()),
    ])
}

/// Proxy args pass to `RUN` without an `ARG`, and stay out of the cache key
/// and the image, as Docker does.
const PROXY_ARGS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// One line of output; waits while the client is slow to read, so a step
/// that prints fast is held back rather than buffered without bound.
async fn stream(tx: &ProgressTx, text: impl Into<String>) {
    let _ = tx.send(json!({"stream": text.into()})).await;
}

/// The short id Docker prints (` ---> 0123456789ab`).
fn short(id: &str) -> &str {
    names::short_id(id)
}

impl Cluster {
    /// Receives the context (a tar stream) and parses the Dockerfile.
    pub async fn prepare_build<S>(
        &self,
        account: &str,
        opts: BuildOptions,
        body: S,
    ) -> Result<PreparedBuild>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin + 'static,
    {
        // A tenant's context counts against its storage while it is here,
        // and it runs a few builds at a time.
        let slot = self.build_slot(account).await;
        let limit = match self.storage_left(account).await? {
            Some(left) => left.min(MAX_CONTEXT),
            None => MAX_CONTEXT,
        };
        let context = self.receive_context(body, limit).await?;
        let name = if opts.dockerfile.is_empty() {
            "Dockerfile".to_string()
        } else {
            build::context::normalize(&opts.dockerfile)
        };
        let mut text = context
            .read_file(&name, MAX_DOCKERFILE)
            .map_err(build_error)?;
        if text.is_none() && name == "Dockerfile" {
            text = context
                .read_file("dockerfile", MAX_DOCKERFILE)
                .map_err(build_error)?;
        }
        let Some(text) = text else {
            return Err(Error::InvalidArgument(format!(
                "Cannot locate specified Dockerfile: {name}"
            )));
        };
        let text = String::from_utf8(text)
            .map_err(|_| Error::InvalidArgument("the Dockerfile is not UTF-8 text".into()))?;
        let dockerfile = build::dockerfile::parse(&text).map_err(build_error)?;
        let stages = needed_stages(&dockerfile, opts.target.as_deref())?;
        // As Docker's classic builder: a cache source the account lacks is
        // skipped, not an error.
        let mut sources = Vec::new();
        for name in &opts.cache_from {
            match self.find_image(account, name).await {
                Ok(i) => sources.push(Current {
                    config: self.image_config(&i.id)?,
                    id: i.id,
                    layers: i.layers,
                }),
                Err(e) => tracing::debug!("cache source {name} skipped: {e}"),
            }
        }
        Ok(PreparedBuild {
            _slot: slot,
            account: account.to_string(),
            opts,
            context: Arc::new(context),
            dockerfile,
            stages,
            live: Default::default(),
            server: Default::default(),
            touched: Default::default(),
            sources,
        })
    }

    async fn build_slot(&self, account: &str) -> tokio::sync::OwnedSemaphorePermit {
        let sem = self
            .build_slots
            .lock()
            .expect("build slots")
            .entry(account.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(BUILDS_PER_ACCOUNT)))
            .clone();
        sem.acquire_owned().await.expect("never closed")
    }

    /// Spools the context: a plain tar chunk by chunk as it arrives (a
    /// blocking writer fed through a short queue), a compressed one through
    /// its decompressor.
    async fn receive_context<S>(&self, mut body: S, limit: u64) -> Result<Context>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Unpin + 'static,
    {
        let dir = self.build_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal("build dir", e))?;
        let bad =
            |e: std::io::Error| Error::InvalidArgument(format!("reading the build context: {e}"));
        let first = body
            .next()
            .await
            .transpose()
            .map_err(bad)?
            .unwrap_or_default();
        let plain = first.len() >= 6
            && images::compress::detect(&first)? == images::compress::Compression::None;
        if !plain {
            let rest = futures::stream::iter([Ok(first)]).chain(body);
            let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(rest));
            return tokio::task::spawn_blocking(move || {
                Context::receive(reader, &dir, MAX_CONTEXT)
            })
            .await
            .map_err(|e| Error::internal("build context", e))?
            .map_err(build_error);
        }
        let (chunks, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(32);
        let writer = tokio::task::spawn_blocking(move || {
            let mut spool = build::context::Spool::new(&dir, limit)?;
            while let Some(chunk) = rx.blocking_recv() {
                spool.write(&chunk)?;
            }
            spool.finish()
        });
        let mut next = Some(first);
        let mut failed = None;
        while let Some(chunk) = next.take() {
            // A full queue waits for the disk; a writer that stopped (too
            // large, disk error) ends the upload and says why below, once
            // some more of it is read (within a bound), so the client gets
            // the answer rather than a broken pipe.
            if chunks.send(chunk).await.is_err() {
                let mut drained = 0usize;
                while drained < DRAIN_ON_REFUSAL {
                    match body.next().await {
                        Some(Ok(c)) => drained += c.len(),
                        _ => break,
                    }
                }
                break;
            }
            match body.next().await {
                Some(Ok(c)) => next = Some(c),
                Some(Err(e)) => failed = Some(e),
                None => {}
            }
        }
        drop(chunks);
        let context = writer
            .await
            .map_err(|e| Error::internal("build context", e))?
            .map_err(build_error)?;
        match failed {
            Some(e) => Err(bad(e)),
            None => Ok(context),
        }
    }

    /// Runs a prepared build, streaming Docker's classic output to `tx`;
    /// returns the image id.
    /// A client that goes away cancels the build: the steps stop and their
    /// containers are removed. (A blank line every few seconds keeps the
    /// stream written to, so a hang-up is seen during a silent step too.)
    pub async fn run_build(self: &Arc<Self>, b: PreparedBuild, tx: ProgressTx) -> Result<String> {
        let keepalive = {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(KEEPALIVE).await;
                    if tx.send(Value::Null).await.is_err() {
                        break;
                    }
                }
            })
        };
        let result = tokio::select! {
            r = self.run_build_steps(&b, &tx) => r,
            _ = tx.closed() => Err(Error::Conflict("the client went away: build cancelled".into())),
        };
        keepalive.abort();
        // Uses of cache entries are written after the answer, off its path.
        let touched = std::mem::take(&mut *b.touched.lock().expect("touched"));
        if !touched.is_empty() {
            let store = self.store.clone();
            tokio::spawn(async move {
                for e in touched {
                    // Not if a prune took it meanwhile.
                    if let Ok(Some(_)) = store.get_build_cache(&e.account, &e.key).await {
                        let _ = store.put_build_cache(&e).await;
                    }
                }
            });
        }
        if tx.is_closed() {
            let left: Vec<String> = b.live.lock().expect("live set").iter().cloned().collect();
            for cid in left {
                self.drop_step_container(&b, &cid).await;
            }
        }
        result
    }

    async fn drop_step_container(&self, b: &PreparedBuild, cid: &str) {
        let me = self.me.upgrade();
        if let Some(me) = me {
            let _ = me.remove_container(&b.account, cid, true).await;
        }
        b.live.lock().expect("live set").remove(cid);
    }

    async fn run_build_steps(
        self: &Arc<Self>,
        b: &PreparedBuild,
        tx: &ProgressTx,
    ) -> Result<String> {
        let tx = tx.clone();
        let total: usize = b
            .stages
            .iter()
            .map(|i| 1 + b.dockerfile.stages[*i].steps.len())
            .sum::<usize>()
            + usize::from(!b.opts.labels.is_empty());
        let platform = b
            .opts
            .platform
            .clone()
            .unwrap_or_else(|| "linux/amd64".into());
        let predefined = predefined_args(&platform);
        let mut consumed: BTreeSet<String> = BTreeSet::new();
        // Global ARG values, with the client's overrides.
        let mut globals: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in &b.dockerfile.global_args {
            let value = match b.opts.build_args.get(k) {
                Some(Some(v)) => {
                    consumed.insert(k.clone());
                    Some(v.clone())
                }
                _ => v.clone().or_else(|| predefined.get(k).cloned()),
            };
            if let Some(v) = value {
                globals.insert(k.clone(), v);
            }
        }
        let global_vars: Vec<String> = globals.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut results: BTreeMap<usize, Current> = BTreeMap::new();
        let mut n = 0;
        let last_stage = *b.stages.last().expect("a target stage");
        for &si in &b.stages {
            let stage = &b.dockerfile.stages[si];
            n += 1;
            stream(&tx, format!("Step {n}/{total} : {}\n", stage.text)).await;
            let mut st = StageState {
                cur: self
                    .stage_base(b, stage, &global_vars, &results, &tx)
                    .await?,
                args: BTreeMap::new(),
                cmd_set: false,
            };
            stream(&tx, format!(" ---> {}\n", short(&st.cur.id))).await;
            let mut scope = Scope {
                results: &results,
                globals: &globals,
                predefined: &predefined,
                consumed: &mut consumed,
            };
            // The base's ONBUILD triggers run first, then leave the config.
            let triggers: Vec<String> = st.cur.config["config"]["OnBuild"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            if !triggers.is_empty() {
                stream(
                    &tx,
                    format!(
                        "# Executing {} build trigger{}\n",
                        triggers.len(),
                        if triggers.len() == 1 { "" } else { "s" }
                    ),
                )
                .await;
                let text = format!("FROM scratch\n{}\n", triggers.join("\n"));
                let parsed = build::dockerfile::parse(&text).map_err(build_error)?;
                st.cur.config["config"]["OnBuild"] = Value::Null;
                for step in &parsed.stages[0].steps {
                    self.run_step(b, &mut st, step, &mut scope, &tx).await?;
                }
            }
            for step in &stage.steps {
                n += 1;
                stream(&tx, format!("Step {n}/{total} : {}\n", step.text)).await;
                self.run_step(b, &mut st, step, &mut scope, &tx).await?;
                stream(&tx, format!(" ---> {}\n", short(&st.cur.id))).await;
            }
            if si == last_stage && !b.opts.labels.is_empty() {
                n += 1;
                let line = format!(
                    "LABEL {}",
                    b.opts
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                stream(&tx, format!("Step {n}/{total} : {line}\n")).await;
                let step = build::dockerfile::Step {
                    line: 0,
                    text: line.clone(),
                    kind: StepKind::Config {
                        instruction: "LABEL".into(),
                        line,
                    },
                };
                self.run_step(b, &mut st, &step, &mut scope, &tx).await?;
                stream(&tx, format!(" ---> {}\n", short(&st.cur.id))).await;
            }
            results.insert(si, st.cur);
        }
        let unused: Vec<&String> = b
            .opts
            .build_args
            .keys()
            .filter(|k| !consumed.contains(*k) && !PROXY_ARGS.contains(&k.as_str()))
            .collect();
        if !unused.is_empty() {
            stream(
                &tx,
                format!(
                    "[Warning] One or more build-args [{}] were not consumed\n",
                    unused
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            )
            .await;
        }
        let fin = results.remove(&last_stage).expect("the target stage ran");
        let digest = Digest::parse(&fin.id)?;
        let rec = self
            .record_image(&b.account, &digest, fin.layers.clone(), None)
            .await?;
        let _ = tx.send(json!({"aux": {"ID": rec.id}})).await;
        stream(&tx, format!("Successfully built {}\n", short(&rec.id))).await;
        for t in &b.opts.tags {
            let r = images::reference::Reference::parse(t)?.with_default_tag();
            self.set_tag(&b.account, &r.to_string(), &rec.id).await?;
            stream(&tx, format!("Successfully tagged {}\n", r.familiar())).await;
        }
        self.emit_image(&b.account, "build", &rec.id, &rec.id);
        Ok(rec.id)
    }

    /// The account's build cache, newest use first.
    pub async fn build_cache(&self, account: &str) -> Result<Vec<BuildCacheRecord>> {
        let mut v = self.store.list_build_cache(account).await?;
        v.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        Ok(v)
    }

    /// `docker builder prune`: without `all`, the entries no image of the
    /// account is (and every cache mount); with it, everything; `until`
    /// keeps entries used since. Returns the entries' keys and the bytes
    /// their layers took.
    pub async fn prune_build_cache(
        &self,
        account: &str,
        all: bool,
        until: Option<chrono::DateTime<Utc>>,
    ) -> Result<(Vec<String>, i64)> {
        let images: BTreeSet<String> = self
            .store
            .list_images(account)
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        let mut deleted = Vec::new();
        let mut reclaimed = 0;
        for e in self.store.list_build_cache(account).await? {
            if until.is_some_and(|u| e.last_used >= u) {
                continue;
            }
            if !all && images.contains(&e.image_id) {
                continue;
            }
            self.store.delete_build_cache(account, &e.key).await?;
            if let Some(rest) = e.key.strip_prefix("mount/")
                && let Some((node, volume)) = rest.split_once('/')
            {
                if let Ok(agent) = self.agent(node) {
                    let _ = agent.remove_volume(volume).await;
                }
            } else {
                let mut blobs: Vec<String> = e.layers.iter().map(|l| l.blob.clone()).collect();
                blobs.push(e.image_id.clone());
                self.delete_unused_blobs(blobs).await?;
            }
            reclaimed += e.size;
            deleted.push(e.key);
        }
        Ok((deleted, reclaimed))
    }

    /// The image a stage starts from: `scratch`, an earlier stage, or an
    /// image of the account's (pulled when missing, or always with `--pull`).
    async fn stage_base(
        &self,
        b: &PreparedBuild,
        stage: &Stage,
        global_vars: &[String],
        results: &BTreeMap<usize, Current>,
        tx: &ProgressTx,
    ) -> Result<Current> {
        let base = images::import::expand_word(&stage.base, global_vars)?;
        if base.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "base name ({}) should not be blank",
                stage.base
            )));
        }
        let lower = base.to_ascii_lowercase();
        if let Some(prev) = b.dockerfile.stages[..stage.index]
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()) || s.index.to_string() == lower)
        {
            return results.get(&prev.index).cloned().ok_or_else(|| {
                Error::internal("build", format!("stage {} did not run", prev.index))
            });
        }
        if lower == "scratch" {
            let config = json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            });
            let id = self.put_config(&config)?;
            return Ok(Current {
                id,
                layers: Vec::new(),
                config,
            });
        }
        let found = if b.opts.pull {
            None
        } else {
            self.find_image(&b.account, &base).await.ok()
        };
        let image = match found {
            Some(i) => i,
            None => {
                let r = images::reference::Reference::parse(&base)?.with_default_tag();
                let creds = b.opts.credentials.get(&r.domain).cloned().or_else(|| {
                    (r.domain == "docker.io")
                        .then(|| {
                            b.opts
                                .credentials
                                .get("https://index.docker.io/v1/")
                                .cloned()
                        })
                        .flatten()
                });
                let platform = b
                    .opts
                    .platform
                    .as_deref()
                    .or(stage.platform.as_deref())
                    .map(|p| p.parse())
                    .transpose()
                    .map_err(|e: images::ImageError| Error::InvalidArgument(e.to_string()))?;
                self.pull_image(&b.account, &r.to_string(), creds, platform, tx.clone())
                    .await?;
                self.find_image(&b.account, &r.to_string()).await?
            }
        };
        Ok(Current {
            config: self.image_config(&image.id)?,
            id: image.id,
            layers: image.layers,
        })
    }

    fn put_config(&self, config: &Value) -> Result<String> {
        let bytes = serde_json::to_vec(config).map_err(|e| Error::internal("config", e))?;
        Ok(self
            .blobs
            .put_bytes(&bytes)
            .map_err(|e| Error::internal("storing an image config", e))?
            .to_string())
    }

    /// A step's earlier result, if the build may use the cache: the
    /// account's own entry for `key`, else one from the `--cache-from`
    /// images. `cfg` is the step's container config when it changes it.
    async fn reuse(
        &self,
        b: &PreparedBuild,
        cur: &Current,
        key: &str,
        probe: Probe<'_>,
    ) -> Result<Option<Current>> {
        if b.opts.no_cache {
            return Ok(None);
        }
        if let Some(mut hit) = self.store.get_build_cache(&b.account, key).await?
            // Its blobs must still be here (a crash between writes could lose them).
            && let Ok(config) = self.image_config(&hit.image_id)
        {
            let cur = Current {
                id: hit.image_id.clone(),
                layers: hit.layers.clone(),
                config,
            };
            hit.last_used = Utc::now();
            hit.usage_count += 1;
            b.touched.lock().expect("touched").push(hit);
            return Ok(Some(cur));
        }
        let Some(found) = b
            .sources
            .iter()
            .find_map(|src| from_source(cur, src, &probe))
        else {
            return Ok(None);
        };
        // Kept as an entry of the account's cache (its layers are the
        // source image's: it adds no storage).
        match found {
            Reused::Image(src) => {
                let now = Utc::now();
                self.store
                    .put_build_cache(&BuildCacheRecord {
                        account: b.account.clone(),
                        key: key.to_string(),
                        image_id: src.id.clone(),
                        layers: src.layers.clone(),
                        description: probe.description.to_string(),
                        size: 0,
                        created: now,
                        last_used: now,
                        usage_count: 1,
                    })
                    .await?;
                Ok(Some(src))
            }
            Reused::Built { config, layers } => self
                .remember(b, key, probe.description, config, layers, 0)
                .await
                .map(Some),
        }
    }

    /// Records a step's image: its config blob and a cache entry.
    async fn remember(
        &self,
        b: &PreparedBuild,
        key: &str,
        description: &str,
        config: Value,
        layers: Vec<ImageLayer>,
        added: i64,
    ) -> Result<Current> {
        if added > 0
            && let Some(left) = self.storage_left(&b.account).await?
            && added as u64 > left
        {
            if let Some(l) = layers.last() {
                self.delete_unused_blobs(vec![l.blob.clone()]).await?;
            }
            return Err(Error::Forbidden(format!(
                "account limit reached: the build step needs {added} bytes of storage, {left} are left"
            )));
        }
        let id = self.put_config(&config)?;
        let now = Utc::now();
        self.store
            .put_build_cache(&BuildCacheRecord {
                account: b.account.clone(),
                key: key.to_string(),
                image_id: id.clone(),
                layers: layers.clone(),
                description: description.to_string(),
                size: added,
                created: now,
                last_used: now,
                usage_count: 0,
            })
            .await?;
        Ok(Current { id, layers, config })
    }

    async fn run_step(
        self: &Arc<Self>,
        b: &PreparedBuild,
        st: &mut StageState,
        step: &build::dockerfile::Step,
        scope: &mut Scope<'_>,
        tx: &ProgressTx,
    ) -> Result<()> {
        let at_line = |e: Error| match e {
            Error::InvalidArgument(m) if step.line > 0 => {
                Error::InvalidArgument(format!("Dockerfile line {}: {m}", step.line))
            }
            e => e,
        };
        match &step.kind {
            StepKind::Arg(pairs) => {
                for (k, default) in pairs {
                    let value = match b.opts.build_args.get(k) {
                        Some(Some(v)) => {
                            scope.consumed.insert(k.clone());
                            Some(v.clone())
                        }
                        _ => match default {
                            Some(d) => Some(images::import::expand_word(d, &st.vars())?),
                            None => scope
                                .globals
                                .get(k)
                                .or_else(|| scope.predefined.get(k))
                                .cloned(),
                        },
                    };
                    st.args.insert(k.clone(), value.unwrap_or_default());
                }
                Ok(())
            }
            StepKind::Config { line, .. } => {
                let mut cfg = st.container_config()?;
                images::import::apply_instruction(&mut cfg, line, &st.arg_vars(), &mut st.cmd_set)
                    .map_err(|e| at_line(e.into()))?;
                self.config_step(b, st, &step.text, cfg, None, tx).await
            }
            StepKind::Shell(shell) => {
                if shell.is_empty() {
                    return Err(at_line(Error::InvalidArgument(
                        "SHELL requires the arguments to be in JSON form".into(),
                    )));
                }
                let mut cfg = st.container_config()?;
                cfg.shell = Some(shell.clone());
                self.config_step(b, st, &step.text, cfg, None, tx).await
            }
            StepKind::Maintainer(m) => {
                let cfg = st.container_config()?;
                self.config_step(b, st, &step.text, cfg, Some(m.clone()), tx)
                    .await
            }
            StepKind::Run {
                command,
                mounts,
                network,
            } => {
                let step_mounts = self.step_mounts(b, st, mounts).map_err(at_line)?;
                self.run_run(b, st, step, command, network.as_deref(), step_mounts, tx)
                    .await
            }
            StepKind::Copy(c) => self
                .run_copy(b, st, step, c, scope.results, tx)
                .await
                .map_err(at_line),
        }
    }

    /// The containers' side of `RUN --mount`: cache mounts as volumes of
    /// the building server named by account and cache id, tmpfs as tmpfs.
    /// Build secrets need BuildKit's session, which the classic API does not
    /// carry: a required one fails the step, an optional one is absent.
    fn step_mounts(
        &self,
        b: &PreparedBuild,
        st: &StageState,
        mounts: &[build::dockerfile::RunMount],
    ) -> Result<StepMounts> {
        use build::dockerfile::RunMount;
        let vars = st.vars();
        let cfg = st.container_config()?;
        let absolute = |t: &str| -> Result<String> {
            let t = images::import::expand_word(t, &vars)?;
            Ok(if t.starts_with('/') {
                t
            } else {
                let wd = cfg.working_dir.clone().unwrap_or_default();
                format!("{}/{t}", wd.trim_end_matches('/'))
            })
        };
        let mut out = StepMounts::default();
        for m in mounts {
            match m {
                RunMount::Cache {
                    target,
                    id,
                    sharing,
                    mode,
                    uid,
                    gid,
                } => {
                    let target = absolute(target)?;
                    let cache_id = id.clone().unwrap_or_else(|| target.clone());
                    let volume = match sharing.as_str() {
                        // Volume ids are 64 hex digits, like the head's own.
                        "shared" | "locked" => {
                            build::cache::step_key(&b.account, "cache mount", &[&cache_id])
                        }
                        "private" => {
                            let v = names::new_id();
                            out.private.push(v.clone());
                            v
                        }
                        other => {
                            return Err(Error::InvalidArgument(format!(
                                "invalid sharing {other:?} in --mount=type=cache (shared, private or locked)"
                            )));
                        }
                    };
                    if sharing == "locked" {
                        out.locked.push(volume.clone());
                    }
                    out.volumes.push(agent_client::MountSpec {
                        kind: agent_client::MountKind::Volume,
                        source: volume,
                        destination: target,
                        read_only: false,
                        size_bytes: crate::storage::volume_size(&b.account, None),
                        // As BuildKit: a new cache starts empty, owned as asked.
                        fresh: Some(agent_client::FreshVolume {
                            uid: uid.unwrap_or(0),
                            gid: gid.unwrap_or(0),
                            mode: mode.unwrap_or(0o755),
                        }),
                    });
                }
                RunMount::Tmpfs { target } => out.tmpfs.push(absolute(target)?),
                RunMount::Secret { id, required, .. } => {
                    if *required {
                        return Err(Error::InvalidArgument(format!(
                            "secret {id} is not available: build secrets need BuildKit, which the classic builder API atoll serves does not carry"
                        )));
                    }
                }
            }
        }
        Ok(out)
    }

    /// A step that changes only the config: a new image id, no layer.
    async fn config_step(
        &self,
        b: &PreparedBuild,
        st: &mut StageState,
        text: &str,
        cfg: ContainerConfig,
        author: Option<String>,
        tx: &ProgressTx,
    ) -> Result<()> {
        let cfg = serde_json::to_value(&cfg).map_err(|e| Error::internal("config", e))?;
        let key = build::cache::step_key(&st.cur.id, text, &[&cfg.to_string()]);
        let by = format!("/bin/sh -c #(nop)  {}", history_text(text, &st.vars()));
        let probe = Probe {
            description: text,
            created_by: &by,
            cfg: Some(&cfg),
        };
        if let Some(hit) = self.reuse(b, &st.cur, &key, probe).await? {
            stream(tx, " ---> Using cache\n").await;
            st.cur = hit;
            return Ok(());
        }
        let mut config = st.cur.config.clone();
        let t = now();
        config["config"] = cfg;
        config["created"] = json!(t);
        if let Some(a) = author {
            config["author"] = json!(a);
        }
        push_history(&mut config, &t, &by, true);
        st.cur = self
            .remember(b, &key, text, config, st.cur.layers.clone(), 0)
            .await?;
        Ok(())
    }

    /// A step that adds a layer: the new image config on top of the
    /// current one, remembered under `key`.
    #[allow(clippy::too_many_arguments)]
    async fn add_layer(
        &self,
        b: &PreparedBuild,
        st: &mut StageState,
        key: &str,
        description: &str,
        created_by: &str,
        container: Option<&str>,
        layer: ImageLayer,
        size: i64,
    ) -> Result<()> {
        let mut config = st.cur.config.clone();
        let t = now();
        config["created"] = json!(t);
        if let Some(c) = container {
            config["container"] = json!(c);
        }
        push_layer(&mut config, &layer.diff_id);
        push_history(&mut config, &t, created_by, false);
        let mut layers = st.cur.layers.clone();
        layers.push(layer);
        st.cur = self
            .remember(b, key, description, config, layers, size)
            .await?;
        Ok(())
    }

    /// A container of `image` that a `COPY` or `ADD` reads from or writes
    /// into (never started, no network).
    async fn copy_container(
        self: &Arc<Self>,
        b: &PreparedBuild,
        image: &Current,
        kw: &str,
    ) -> Result<String> {
        self.step_container(
            b,
            image,
            vec![format!("#(nop) {kw}")],
            Vec::new(),
            Some("none"),
            &StepMounts::default(),
        )
        .await
    }

    /// Creates a step's container (not started) on the current image.
    async fn step_container(
        self: &Arc<Self>,
        b: &PreparedBuild,
        cur: &Current,
        cmd: Vec<String>,
        env: Vec<String>,
        network: Option<&str>,
        mounts: &StepMounts,
    ) -> Result<String> {
        let image = ImageRecord {
            account: b.account.clone(),
            id: cur.id.clone(),
            size: cur.layers.iter().map(|l| l.size).sum(),
            layers: cur.layers.clone(),
            created: Utc::now(),
            added: Utc::now(),
            repo_digests: Vec::new(),
        };
        let host_config = HostConfig {
            network_mode: network
                .map(str::to_string)
                .or_else(|| b.opts.network_mode.clone())
                .filter(|n| n != "default"),
            extra_hosts: (!b.opts.extra_hosts.is_empty()).then(|| b.opts.extra_hosts.clone()),
            shm_size: b.opts.shm_size,
            memory: b.opts.memory,
            memory_swap: b.opts.memory_swap,
            cpu_shares: b.opts.cpu_shares,
            cpu_period: b.opts.cpu_period,
            cpu_quota: b.opts.cpu_quota,
            cpuset_cpus: b.opts.cpuset_cpus.clone(),
            tmpfs: (!mounts.tmpfs.is_empty()).then(|| {
                mounts
                    .tmpfs
                    .iter()
                    .map(|t| (t.clone(), String::new()))
                    .collect()
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(cur.id.clone()),
            cmd: Some(cmd),
            entrypoint: Some(Vec::new()),
            env: Some(env),
            host_config: Some(host_config.clone()),
            ..Default::default()
        };
        let security = crate::security::check(&b.account, &host_config)?;
        // Steps follow the build's first server, where the layers are; a
        // server that cannot take one any more lets placement choose again.
        let server = b.server.lock().expect("build server").clone();
        let create = |server: Option<String>| {
            self.create_from_image(
                &b.account,
                None,
                body.clone(),
                Vec::new(),
                security.clone(),
                image.clone(),
                cur.id.clone(),
                server,
            )
        };
        let (id, _warnings) = match create(server.clone()).await {
            Err(_) if server.is_some() => create(None).await?,
            r => r?,
        };
        b.live.lock().expect("live set").insert(id.clone());
        if let Ok(Some(c)) = self.store.get_container(&b.account, &id).await {
            *b.server.lock().expect("build server") = Some(c.node);
        }
        if !mounts.volumes.is_empty() {
            // Cache mounts are volumes of the server the step landed on,
            // kept there between builds (not volume records of the account).
            let mut rec = self
                .store
                .get_container(&b.account, &id)
                .await?
                .ok_or_else(|| Error::no_such_container(&id))?;
            rec.spec.mounts.extend(mounts.volumes.iter().cloned());
            self.store.update_container(&rec).await?;
            for v in mounts
                .volumes
                .iter()
                .filter(|v| !mounts.private.contains(&v.source))
            {
                let key = format!("mount/{}/{}", rec.node, v.source);
                let now = Utc::now();
                let mut entry = self
                    .store
                    .get_build_cache(&b.account, &key)
                    .await?
                    .unwrap_or(BuildCacheRecord {
                        account: b.account.clone(),
                        key: key.clone(),
                        image_id: String::new(),
                        layers: Vec::new(),
                        description: format!("RUN --mount=type=cache,target={}", v.destination),
                        size: 0,
                        created: now,
                        last_used: now,
                        usage_count: 0,
                    });
                entry.last_used = now;
                entry.usage_count += 1;
                self.store.put_build_cache(&entry).await?;
            }
        }
        Ok(id)
    }

    async fn run_run(
        self: &Arc<Self>,
        b: &PreparedBuild,
        st: &mut StageState,
        step: &build::dockerfile::Step,
        command: &CommandForm,
        network: Option<&str>,
        step_mounts: StepMounts,
        tx: &ProgressTx,
    ) -> Result<()> {
        let cfg = st.container_config()?;
        let cmd = match command {
            CommandForm::Exec(v) => v.clone(),
            CommandForm::Shell(s) => {
                let mut sh = cfg
                    .shell
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
                sh.push(s.clone());
                sh
            }
        };
        // ARGs reach the command as environment, beneath ENV.
        let env_names: BTreeSet<String> = cfg
            .env
            .iter()
            .flatten()
            .map(|e| e.split_once('=').map(|(k, _)| k).unwrap_or(e).to_string())
            .collect();
        let arg_env: Vec<String> = st
            .args
            .iter()
            .filter(|(k, _)| !env_names.contains(*k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut env = arg_env.clone();
        for p in PROXY_ARGS {
            if let Some(Some(v)) = b.opts.build_args.get(p)
                && !st.args.contains_key(p)
            {
                env.push(format!("{p}={v}"));
            }
        }
        // Docker's cache key: the command with the args in effect.
        let description = if arg_env.is_empty() {
            format!("RUN {}", serde_json::to_string(&cmd).unwrap_or_default())
        } else {
            format!(
                "RUN |{} {} {}",
                arg_env.len(),
                arg_env.join(" "),
                serde_json::to_string(&cmd).unwrap_or_default()
            )
        };
        let mount_points: Vec<String> = step_mounts
            .volumes
            .iter()
            .map(|v| v.destination.clone())
            .chain(step_mounts.tmpfs.iter().map(|t| format!("tmpfs:{t}")))
            .collect();
        let key = build::cache::step_key(
            &st.cur.id,
            &description,
            &[
                network.unwrap_or(""),
                &cfg.user.clone().unwrap_or_default(),
                &mount_points.join(","),
            ],
        );
        // History names it as Docker does (`|N ARGS… cmd`), with the flags
        // that change what it does.
        let mut shown = if arg_env.is_empty() {
            cmd.join(" ")
        } else {
            format!("|{} {} {}", arg_env.len(), arg_env.join(" "), cmd.join(" "))
        };
        if !mount_points.is_empty() {
            shown = format!("--mount={} {shown}", mount_points.join(","));
        }
        if let Some(n) = network {
            shown = format!("--network={n} {shown}");
        }
        let probe = Probe {
            description: &step.text,
            created_by: &shown,
            cfg: None,
        };
        if let Some(hit) = self.reuse(b, &st.cur, &key, probe).await? {
            stream(tx, " ---> Using cache\n").await;
            st.cur = hit;
            return Ok(());
        }
        let cid = self
            .step_container(b, &st.cur, cmd.clone(), env, network, &step_mounts)
            .await?;
        stream(tx, format!(" ---> Running in {}\n", short(&cid))).await;
        let mut guards = Vec::new();
        for v in &step_mounts.locked {
            guards.push(
                self.lock(&format!("build-cache-mount:{}:{v}", b.account))
                    .await,
            );
        }
        let res = self.run_and_commit(b, &cid, &cmd, tx).await;
        drop(guards);
        let node = match self.store.get_container(&b.account, &cid).await {
            Ok(Some(c)) => Some(c.node),
            _ => None,
        };
        let keep = res.is_err() && !b.opts.force_remove;
        if !keep && (b.opts.remove || b.opts.force_remove) {
            self.drop_step_container(b, &cid).await;
            if res.is_ok() {
                stream(
                    tx,
                    format!("Removing intermediate container {}\n", short(&cid)),
                )
                .await;
            }
        }
        if !step_mounts.private.is_empty()
            && let Some(agent) = node.and_then(|n| self.agent(&n).ok())
        {
            self.drop_step_container(b, &cid).await;
            for v in &step_mounts.private {
                let _ = agent.remove_volume(v).await;
            }
        }
        let (layer, size) = res?;
        self.add_layer(b, st, &key, &step.text, &shown, Some(&cid), layer, size)
            .await
    }

    /// Starts the step's container, streams its output, waits for it and
    /// takes its changes as a layer.
    async fn run_and_commit(
        self: &Arc<Self>,
        b: &PreparedBuild,
        cid: &str,
        cmd: &[String],
        tx: &ProgressTx,
    ) -> Result<(ImageLayer, i64)> {
        let exited = self
            .wait_container(&b.account, cid, WaitCondition::NextExit)
            .await?;
        self.start_container(&b.account, cid).await?;
        let (_, logs) = self
            .container_logs(&b.account, cid, "follow=1&stdout=1&stderr=1")
            .await?;
        forward_frames(logs, tx).await;
        let code = exited.await?;
        if code != 0 {
            return Err(Error::Upstream(format!(
                "The command '{}' returned a non-zero code: {code}",
                cmd.join(" ")
            )));
        }
        self.take_layer(&b.account, cid).await
    }

    /// A stopped container's changes, into the blob store (uncompressed:
    /// blob = diff_id).
    async fn take_layer(&self, account: &str, cid: &str) -> Result<(ImageLayer, i64)> {
        let (c, agent) = self.files_target(account, cid).await?;
        let body = agent.diff_layer_kept(&c.id).await.map_err(upstream)?;
        let (digest, size) = self.store_layer(body).await?;
        Ok((
            ImageLayer::new(
                &digest,
                &digest,
                size,
                "application/vnd.docker.image.rootfs.diff.tar",
            ),
            size as i64,
        ))
    }

    async fn run_copy(
        self: &Arc<Self>,
        b: &PreparedBuild,
        st: &mut StageState,
        step: &build::dockerfile::Step,
        c: &CopyStep,
        results: &BTreeMap<usize, Current>,
        tx: &ProgressTx,
    ) -> Result<()> {
        let kw = if c.add { "ADD" } else { "COPY" };
        if let Some(from) = &c.from {
            return self.run_copy_from(b, st, step, c, from, results, tx).await;
        }
        let vars = st.vars();
        let (dest, chmod, chown) = copy_target(st, c)?;

        let checksum = c
            .checksum
            .as_deref()
            .map(|s| images::import::expand_word(s, &vars))
            .transpose()?;
        if checksum.is_some()
            && c.sources.iter().any(|s| match s {
                CopySource::Path(p) => !is_url(p),
                CopySource::HereDoc { .. } => true,
            })
        {
            return Err(Error::InvalidArgument(
                "checksum can't be specified for non-HTTP(S) sources".into(),
            ));
        }

        // Sources: context paths (wildcards expanded), heredocs, downloads.
        let mut paths: Vec<String> = Vec::new();
        let mut extras: Vec<Extra> = Vec::new();
        for s in &c.sources {
            match s {
                CopySource::HereDoc { name, body, expand } => {
                    let body = if *expand {
                        images::import::expand_word(
                            &format!("\"{}\"", body.replace('"', "\\\"")),
                            &vars,
                        )
                        .unwrap_or_else(|_| body.clone())
                    } else {
                        body.clone()
                    };
                    extras.push(Extra {
                        origin: format!("heredoc {name}"),
                        name: name.clone(),
                        sum: build::cache::step_key("", &body, &[]),
                        mode: chmod.unwrap_or(0o644),
                        mtime: Utc::now().timestamp().max(0) as u64,
                        content: ExtraContent::Text(body),
                    });
                }
                CopySource::Path(p) => {
                    let p = images::import::expand_word(p, &vars)?;
                    if is_url(&p) {
                        if !c.add {
                            return Err(Error::InvalidArgument(
                                "COPY failed: source can't be a URL for COPY".into(),
                            ));
                        }
                        extras.push(self.download(b, &p, checksum.as_deref(), chmod).await?);
                        continue;
                    }
                    if build::context::has_wildcards(&p) {
                        let m = b.context.matches(&p);
                        if m.is_empty() {
                            return Err(Error::InvalidArgument(format!(
                                "{kw} failed: no source files were specified"
                            )));
                        }
                        paths.extend(m);
                    } else {
                        let resolved = b
                            .context
                            .resolve(&p)
                            .filter(|r| r.is_empty() || b.context.entry(r).is_some());
                        match resolved {
                            Some(r) => paths.push(r),
                            None => {
                                return Err(Error::InvalidArgument(format!(
                                    "{kw} failed: file not found in build context or excluded by .dockerignore: stat {p}: file does not exist"
                                )));
                            }
                        }
                    }
                }
            }
        }
        let many = paths.len() + extras.len() > 1
            || c.sources
                .iter()
                .any(|s| matches!(s, CopySource::Path(p) if build::context::has_wildcards(p)));
        if many && !dest.ends_with('/') {
            return Err(Error::InvalidArgument(format!(
                "When using {kw} with more than one source file, the destination must be a directory and end with a /"
            )));
        }
        // Where the tar is extracted, and each source's name in it.
        let cid = self.copy_container(b, &st.cur, kw).await?;
        let res = self
            .copy_into(
                b,
                st,
                &cid,
                &dest,
                &paths,
                extras,
                chmod,
                chown.as_deref(),
                c,
                step,
                tx,
            )
            .await;
        self.drop_step_container(b, &cid).await;
        res
    }

    /// `COPY --from=stage|image`: the files come from a container of that
    /// image, through the head, into the step's container.
    #[allow(clippy::too_many_arguments)]
    async fn run_copy_from(
        self: &Arc<Self>,
        b: &PreparedBuild,
        st: &mut StageState,
        step: &build::dockerfile::Step,
        c: &CopyStep,
        from: &str,
        results: &BTreeMap<usize, Current>,
        tx: &ProgressTx,
    ) -> Result<()> {
        let vars = st.vars();
        let from = images::import::expand_word(from, &vars)?;
        let lower = from.to_ascii_lowercase();
        let src = match b
            .dockerfile
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()) || s.index.to_string() == lower)
        {
            Some(s) => results.get(&s.index).cloned().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "COPY --from={from}: the stage must come before the one that copies from it"
                ))
            })?,
            None => {
                let fake = Stage {
                    index: 0,
                    name: None,
                    base: from.clone(),
                    platform: None,
                    line: step.line,
                    text: String::new(),
                    steps: Vec::new(),
                };
                self.stage_base(b, &fake, &[], &BTreeMap::new(), tx).await?
            }
        };
        let (dest, chmod, chown) = copy_target(st, c)?;
        let mut paths = Vec::new();
        for s in &c.sources {
            match s {
                CopySource::Path(p) => {
                    let p = images::import::expand_word(p, &vars)?;
                    let p = if p.starts_with('/') {
                        p
                    } else {
                        format!("/{p}")
                    };
                    if build::context::has_wildcards(&p) {
                        let found = self.source_matches(b, &src, &p).await?;
                        if found.is_empty() {
                            return Err(Error::InvalidArgument(format!(
                                "COPY failed: no source files were specified: nothing in {from} matches {p}"
                            )));
                        }
                        paths.extend(found);
                    } else {
                        paths.push(p);
                    }
                }
                CopySource::HereDoc { .. } => {
                    return Err(Error::InvalidArgument(
                        "COPY --from cannot copy a heredoc".into(),
                    ));
                }
            }
        }
        if paths.len() > 1 && !dest.ends_with('/') {
            return Err(Error::InvalidArgument(
                "When using COPY with more than one source file, the destination must be a directory and end with a /".into(),
            ));
        }
        let description = format!(
            "COPY --from={} chown={} chmod={} {} {dest}",
            src.id,
            chown.as_deref().unwrap_or(""),
            chmod.map(|m| format!("{m:o}")).unwrap_or_default(),
            paths.join(" ")
        );
        let key = build::cache::step_key(&st.cur.id, &description, &[]);
        let kind = if paths.len() > 1 { "multi" } else { "file" };
        let by = copy_history("COPY", chown.as_deref(), kind, &[&description], &dest);
        let probe = Probe {
            description: &step.text,
            created_by: &by,
            cfg: None,
        };
        if let Some(hit) = self.reuse(b, &st.cur, &key, probe).await? {
            stream(tx, " ---> Using cache\n").await;
            st.cur = hit;
            return Ok(());
        }
        let src_cid = self.copy_container(b, &src, "COPY").await?;
        let res = async {
            let cid = self.copy_container(b, &st.cur, "COPY").await?;
            let res = self
                .copy_between(b, &src_cid, &cid, &paths, &dest, chmod, chown.as_deref())
                .await;
            let res = match res {
                Ok(()) => self.take_layer(&b.account, &cid).await,
                Err(e) => Err(e),
            };
            self.drop_step_container(b, &cid).await;
            res
        }
        .await;
        self.drop_step_container(b, &src_cid).await;
        let (layer, size) = res?;
        self.add_layer(b, st, &key, &step.text, &by, None, layer, size)
            .await
    }

    /// The paths of `src` that a wildcard pattern matches (Go's
    /// `filepath.Match`, one component per `*`), found by reading the tar
    /// of the directory above its first wildcard, in a container of `src`.
    async fn source_matches(
        self: &Arc<Self>,
        b: &PreparedBuild,
        src: &Current,
        pattern: &str,
    ) -> Result<Vec<String>> {
        let fixed: Vec<&str> = pattern
            .split('/')
            .take_while(|c| !build::context::has_wildcards(c))
            .collect();
        let dir = match fixed.join("/") {
            d if d.is_empty() => "/".to_string(),
            d => d,
        };
        // Entries of the tar are named from the directory's own name.
        let parent = match dir.rsplit_once('/') {
            Some((p, _)) if !p.is_empty() => p.to_string(),
            _ => String::new(),
        };
        let cid = self.copy_container(b, src, "COPY").await?;
        let listed = async {
            let (_, body) = match self
                .archive_get(&b.account, &cid, &dir, &own_root(&dir))
                .await
            {
                Err(Error::NotFound(_)) => return Ok(Vec::new()),
                r => r?,
            };
            let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(
                body.into_data_stream()
                    .map(|r| r.map_err(std::io::Error::other)),
            ));
            let pattern = build::context::normalize(pattern);
            tokio::task::spawn_blocking(move || -> std::io::Result<Vec<String>> {
                let mut found = BTreeSet::new();
                let mut tar = tar::Archive::new(reader);
                for entry in tar.entries()? {
                    let entry = entry?;
                    let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                    let full = build::context::normalize(&format!("{parent}/{name}"));
                    if build::context::glob_match(&pattern, &full) {
                        found.insert(format!("/{full}"));
                        if found.len() > MAX_WILDCARD_MATCHES {
                            return Err(std::io::Error::other(format!(
                                "{pattern} matches more than {MAX_WILDCARD_MATCHES} paths"
                            )));
                        }
                    }
                }
                Ok(found.into_iter().collect())
            })
            .await
            .map_err(|e| Error::internal("listing a stage", e))?
            .map_err(|e| Error::InvalidArgument(format!("COPY failed: {e}")))
        }
        .await;
        self.drop_step_container(b, &cid).await;
        listed
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_between(
        self: &Arc<Self>,
        b: &PreparedBuild,
        src_cid: &str,
        cid: &str,
        paths: &[String],
        dest: &str,
        chmod: Option<u32>,
        chown: Option<&str>,
    ) -> Result<()> {
        let dest_is_dir = dest.ends_with('/')
            || paths.len() > 1
            || self
                .archive_stat(&b.account, cid, dest, &enc(dest))
                .await
                .ok()
                .and_then(|s| stat_is_dir(&s))
                .unwrap_or(false);
        for p in paths {
            let (stat, body) = self
                .archive_get(&b.account, src_cid, p, &own_root(p))
                .await
                .map_err(|e| match e {
                    Error::NotFound(_) => Error::InvalidArgument(format!(
                        "COPY failed: stat {p}: file does not exist"
                    )),
                    e => e,
                })?;
            let is_dir = stat_is_dir(&stat).unwrap_or(false);
            let base = p
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            let (dir, name) = if is_dir || dest_is_dir {
                (dest.trim_end_matches('/').to_string(), base)
            } else {
                let (parent, name) = dest.rsplit_once('/').unwrap_or(("", dest));
                (parent.to_string(), name.to_string())
            };
            let dir = if dir.is_empty() { "/".to_string() } else { dir };
            let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(
                body.into_data_stream()
                    .map(|r| r.map_err(std::io::Error::other)),
            ));
            let tar = tar_stream(move |w| retarget_tar(reader, w, is_dir, &name, chmod));
            let mut query = format!("path={}&mkdir=1&rootfs=1", enc(&dir));
            if let Some(o) = chown {
                query.push_str(&format!("&chown={}", enc(o)));
            }
            self.archive_put(&b.account, cid, &dir, &query, tar)
                .await
                .map_err(|e| copy_failed("COPY", e))?;
        }
        Ok(())
    }

    /// `ADD <url>`: the head downloads it (see `images::registry::fetch`
    /// for which addresses it may reach) into an unnamed file, within what
    /// the account may still store, and checks `--checksum`.
    async fn download(
        &self,
        b: &PreparedBuild,
        url: &str,
        checksum: Option<&str>,
        chmod: Option<u32>,
    ) -> Result<Extra> {
        let want = checksum
            .map(|c| {
                images::Digest::parse(c).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "invalid checksum {c:?}: expected sha256:<64 hex digits>"
                    ))
                })
            })
            .transpose()?;
        let limit = match self.storage_left(&b.account).await? {
            Some(left) => left.min(MAX_CONTEXT),
            None => MAX_CONTEXT,
        };
        let file = tempfile::tempfile_in(&self.build_dir)
            .map_err(|e| Error::internal("a download's file", e))?;
        let mut out = tokio::fs::File::from_std(
            file.try_clone()
                .map_err(|e| Error::internal("a download's file", e))?,
        );
        let got = self
            .registry
            .download(url, &mut out, limit)
            .await
            .map_err(|e| Error::Upstream(format!("ADD failed: {e}")))?;
        if let Some(want) = want
            && want != got.digest
        {
            return Err(Error::InvalidArgument(format!(
                "ADD failed: checksum mismatch for {url}: expected {want}, got {}",
                got.digest
            )));
        }
        Ok(Extra {
            origin: url.to_string(),
            name: download_name(url, got.file_name.as_deref()),
            // The server's time is part of the file (a heredoc's is not).
            sum: format!("{}@{}", got.digest, got.modified.unwrap_or(0)),
            mode: chmod.unwrap_or(0o600),
            mtime: got.modified.unwrap_or(0).max(0) as u64,
            content: ExtraContent::File(file, got.size),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn copy_into(
        self: &Arc<Self>,
        b: &PreparedBuild,
        st: &mut StageState,
        cid: &str,
        dest: &str,
        paths: &[String],
        mut extras: Vec<Extra>,
        chmod: Option<u32>,
        chown: Option<&str>,
        c: &CopyStep,
        step: &build::dockerfile::Step,
        tx: &ProgressTx,
    ) -> Result<()> {
        let kw = if c.add { "ADD" } else { "COPY" };
        // One file (not an archive ADD unpacks) to a path not ending in `/`
        // is copied as that path, unless it names an existing directory.
        let single = paths.len() + extras.len() == 1
            && !dest.ends_with('/')
            && paths
                .first()
                .is_none_or(|p| !(b.context.is_dir(p) || (c.add && b.context.is_archive(p))));
        let into_dir = !single
            || self
                .archive_stat(&b.account, cid, dest, &enc(dest))
                .await
                .ok()
                .and_then(|s| stat_is_dir(&s))
                .unwrap_or(false);
        let (dir, mut items) = if into_dir {
            let mut items = Vec::new();
            for p in paths {
                if b.context.is_dir(p) {
                    items.extend(b.context.items(p, ""));
                } else {
                    let name = p.rsplit('/').next().unwrap_or(p).to_string();
                    items.push(Item {
                        src: p.clone(),
                        dest: name,
                    });
                }
            }
            (dest.trim_end_matches('/').to_string(), items)
        } else {
            let (parent, name) = dest.rsplit_once('/').unwrap_or(("", dest));
            match paths.first() {
                Some(p) => (
                    parent.to_string(),
                    vec![Item {
                        src: p.clone(),
                        dest: name.to_string(),
                    }],
                ),
                None => {
                    extras[0].name = name.to_string();
                    (parent.to_string(), Vec::new())
                }
            }
        };
        let dir = if dir.is_empty() { "/".to_string() } else { dir };
        // Local archives given to ADD are unpacked, not copied.
        let mut archives = Vec::new();
        if c.add {
            items.retain(|it| {
                let tarball = b.context.is_archive(&it.src);
                if tarball {
                    archives.push(it.src.clone());
                }
                !tarball
            });
        }
        let ctx = b.context.clone();
        let (items2, archives2) = (items.clone(), archives.clone());
        let sum = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut parts = vec![ctx.checksum(&items2, chmod)?];
            for a in &archives2 {
                parts.push(ctx.checksum(&ctx.items(a, "archive"), None)?);
            }
            Ok(parts.join(","))
        })
        .await
        .map_err(|e| Error::internal("checksum", e))?
        .map_err(|e| Error::internal("checksum", e))?;
        if let Some(e) = extras.iter().find(|e| e.name.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "{kw} failed: cannot determine a file name for {}: give a destination file name",
                e.origin
            )));
        }
        let extra_sum: Vec<String> = extras
            .iter()
            .map(|e| format!("{}:{:o}:{}", e.name, e.mode, e.sum))
            .collect();
        let description = format!(
            "{kw} chown={} chmod={} dir={dir} into={into_dir} {}",
            chown.unwrap_or(""),
            chmod.map(|m| format!("{m:o}")).unwrap_or_default(),
            items
                .iter()
                .map(|i| i.dest.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let extra_sum = extra_sum.join(",");
        let key = build::cache::step_key(&st.cur.id, &description, &[&sum, &extra_sum]);
        let kind = if paths.len() + extras.len() > 1 {
            "multi"
        } else if paths.first().is_some_and(|p| b.context.is_dir(p)) {
            "dir"
        } else {
            "file"
        };
        let by = copy_history(kw, chown, kind, &[&description, &sum, &extra_sum], dest);
        let probe = Probe {
            description: &step.text,
            created_by: &by,
            cfg: None,
        };
        if let Some(hit) = self.reuse(b, &st.cur, &key, probe).await? {
            stream(tx, " ---> Using cache\n").await;
            st.cur = hit;
            return Ok(());
        }
        let mut query = format!("path={}&mkdir=1&rootfs=1", enc(&dir));
        if let Some(o) = chown {
            query.push_str(&format!("&chown={}", enc(o)));
        }
        if !items.is_empty() || !extras.is_empty() {
            let ctx = b.context.clone();
            let body = tar_stream(move |w| {
                let mut t = tar::Builder::new(w);
                ctx.write_tar(&mut t, &items, chmod)?;
                for e in &extras {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(e.mode);
                    h.set_mtime(e.mtime);
                    match &e.content {
                        ExtraContent::Text(text) => {
                            h.set_size(text.len() as u64);
                            t.append_data(&mut h, &e.name, text.as_bytes())?;
                        }
                        ExtraContent::File(f, size) => {
                            h.set_size(*size);
                            let r = build::context::FileRange::new(f, 0, *size);
                            t.append_data(&mut h, &e.name, r)?;
                        }
                    }
                }
                t.finish()
            });
            self.archive_put(&b.account, cid, &dir, &query, body)
                .await
                .map_err(|e| copy_failed(kw, e))?;
        }
        for a in archives {
            let ctx = b.context.clone();
            let body = tar_stream(move |w| {
                let r = ctx
                    .reader(&a)
                    .ok_or_else(|| std::io::Error::other("archive vanished"))?;
                let mut r = images::compress::decompressed(r).map_err(std::io::Error::other)?;
                std::io::copy(&mut r, w).map(|_| ())
            });
            let q = if chown.is_some() {
                query.clone()
            } else {
                format!("{query}&copyUIDGID=1")
            };
            self.archive_put(&b.account, cid, &dir, &q, body)
                .await
                .map_err(|e| copy_failed(kw, e))?;
        }
        let (layer, size) = self.take_layer(&b.account, cid).await?;
        self.add_layer(b, st, &key, &step.text, &by, None, layer, size)
            .await
    }
}

/// How history names a config step: the instruction with its variables
/// expanded, as Docker records it (so that images built with other values
/// do not match as cache sources).
fn history_text(text: &str, vars: &[String]) -> String {
    let (kw, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let expands = matches!(
        kw.to_ascii_uppercase().as_str(),
        "ENV" | "LABEL" | "EXPOSE" | "STOPSIGNAL" | "USER" | "VOLUME" | "WORKDIR"
    );
    if !expands || !rest.contains('$') {
        return text.to_string();
    }
    match images::import::expand_words(rest.trim(), vars) {
        Ok(words) => format!("{kw} {}", words.join(" ")),
        Err(_) => text.to_string(),
    }
}

/// How history names a `COPY` or `ADD`, as Docker does (`COPY file:<hash>
/// in <dest> `), the hash covering what the step copies and how.
fn copy_history(kw: &str, chown: Option<&str>, kind: &str, parts: &[&str], dest: &str) -> String {
    let hash = build::cache::step_key("", kw, parts);
    let chown = chown.map(|c| format!("--chown={c} ")).unwrap_or_default();
    format!("/bin/sh -c #(nop) {kw} {chown}{kind}:{hash} in {dest} ")
}

/// Docker's classic rule for `--cache-from`: `src` continues `cur`'s history
/// (the same entries and layers) with an entry the same instruction made.
fn from_source(cur: &Current, src: &Current, probe: &Probe<'_>) -> Option<Reused> {
    let list = |c: &Value, k: &str| -> Vec<Value> {
        let v = if k == "history" {
            &c["history"]
        } else {
            &c["rootfs"]["diff_ids"]
        };
        v.as_array().cloned().unwrap_or_default()
    };
    let (ph, pd) = (list(&cur.config, "history"), list(&cur.config, "diff_ids"));
    let (sh, sd) = (list(&src.config, "history"), list(&src.config, "diff_ids"));
    if sh.len() <= ph.len()
        || sd.len() < pd.len()
        || sh[..ph.len()] != ph[..]
        || sd[..pd.len()] != pd[..]
    {
        return None;
    }
    let entry = &sh[ph.len()];
    if entry["created_by"].as_str() != Some(probe.created_by) {
        return None;
    }
    let empty = entry["empty_layer"].as_bool().unwrap_or(false);
    if sh.len() == ph.len() + 1 {
        return (sd.len() == pd.len() + usize::from(!empty)).then(|| Reused::Image(src.clone()));
    }
    let mut config = cur.config.clone();
    let mut layers = cur.layers.clone();
    if !empty {
        let diff = sd.get(pd.len())?.as_str()?;
        let layer = src.layers.get(pd.len()).filter(|l| l.diff_id == diff)?;
        push_layer(&mut config, diff);
        layers.push(layer.clone());
    }
    if let Some(cfg) = probe.cfg {
        config["config"] = cfg.clone();
    }
    config["created"] = entry["created"].clone();
    match config["history"].as_array_mut() {
        Some(h) => h.push(entry.clone()),
        None => config["history"] = json!([entry]),
    }
    Some(Reused::Built { config, layers })
}

/// The name a download takes in a directory: the URL path's last part
/// (decoded), else what the server's `Content-Disposition` says.
fn download_name(url: &str, disposition: Option<&str>) -> String {
    let path = url
        .parse::<http::Uri>()
        .map(|u| u.path().to_string())
        .unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or("");
    let last = percent_encoding::percent_decode_str(last)
        .decode_utf8_lossy()
        .to_string();
    if !last.is_empty() && last != "." && last != ".." && !last.contains('/') {
        return last;
    }
    disposition.unwrap_or("").to_string()
}

/// A `COPY`'s destination (absolute, under `WORKDIR`), `--chmod` and `--chown`.
fn copy_target(st: &StageState, c: &CopyStep) -> Result<(String, Option<u32>, Option<String>)> {
    let vars = st.vars();
    let cfg = st.container_config()?;
    let mut dest = images::import::expand_word(&c.dest, &vars)?;
    if !dest.starts_with('/') {
        let wd = cfg
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or("/".into());
        dest = format!("{}/{dest}", wd.trim_end_matches('/'));
    }
    let chmod = c
        .chmod
        .as_deref()
        .map(|m| {
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| Error::InvalidArgument(format!("invalid chmod {m:?}")))
        })
        .transpose()?;
    let chown = c
        .chown
        .as_deref()
        .map(|o| images::import::expand_word(o, &vars))
        .transpose()?;
    Ok((dest, chmod, chown))
}

/// Renames the entries of a container's tar (`GET archive`: the source's
/// basename on top) for extraction: a directory's contents lose the top
/// name, a file takes `name`. Owners are left to the extraction.
fn retarget_tar(
    r: impl std::io::Read,
    w: &mut dyn Write,
    dir_contents: bool,
    name: &str,
    chmod: Option<u32>,
) -> std::io::Result<()> {
    let mut ar = tar::Archive::new(r);
    let mut out = tar::Builder::new(w);
    let rename = |p: &[u8]| -> Option<String> {
        let p = String::from_utf8_lossy(p).into_owned();
        let p = p.trim_start_matches("./").trim_end_matches('/').to_string();
        match p.split_once('/') {
            Some((_, rest)) if dir_contents => Some(rest.to_string()),
            None if dir_contents => None,
            Some((_, rest)) => Some(format!("{name}/{rest}")),
            None => Some(name.to_string()),
        }
    };
    for e in ar.entries()? {
        let mut e = e?;
        let Some(path) = rename(&e.path_bytes()) else {
            continue;
        };
        let mut h = e.header().clone();
        if let Some(m) = chmod {
            h.set_mode(m);
        }
        match h.entry_type() {
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let Some(target) = rename(&target) else {
                    continue;
                };
                out.append_link(&mut h, &path, &target)?;
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                out.append_link(&mut h, &path, String::from_utf8_lossy(&target).as_ref())?;
            }
            _ => out.append_data(&mut h, &path, &mut e)?,
        }
    }
    out.finish()
}

fn copy_failed(kw: &str, e: Error) -> Error {
    match e {
        Error::InvalidArgument(m) | Error::NotFound(m) => {
            Error::InvalidArgument(format!("{kw} failed: {m}"))
        }
        e => e,
    }
}

/// A tar written by a blocking writer, as a byte stream.
fn tar_stream(
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()> + Send + 'static,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static {
    let (reader, writer) = tokio::io::duplex(256 * 1024);
    tokio::task::spawn_blocking(move || {
        let mut w = tokio_util::io::SyncIoBridge::new(writer);
        if let Err(e) = write(&mut w) {
            tracing::debug!("build tar stream: {e}");
        }
        let _ = w.flush();
    });
    tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024)
}

fn enc(s: &str) -> String {
    percent_encode(s)
}

/// A path's query for reading a step's container: its own files, never a
/// volume mounted over them (what a build copies comes from images).
fn own_root(path: &str) -> String {
    format!("{}&rootfs=1", enc(path))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a base64 stat header (Docker's) names a directory.
fn stat_is_dir(b64: &str) -> Option<bool> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let mode = v["mode"].as_u64()?;
    // Go's os.ModeDir bit.
    Some(mode & (1 << 31) != 0)
}

fn quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c))
        && !s.is_empty()
    {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn push_layer(config: &mut Value, diff_id: &str) {
    match config["rootfs"]["diff_ids"].as_array_mut() {
        Some(ids) => ids.push(json!(diff_id)),
        None => config["rootfs"] = json!({"type": "layers", "diff_ids": [diff_id]}),
    }
}

fn push_history(config: &mut Value, created: &str, by: &str, empty: bool) {
    let mut h = json!({"created": created, "created_by": by});
    if empty {
        h["empty_layer"] = json!(true);
    }
    match config["history"].as_array_mut() {
        Some(list) => list.push(h),
        None => config["history"] = json!([h]),
    }
}

/// Forwards a container's multiplexed log stream as `stream` lines.
async fn forward_frames(body: hyper::body::Incoming, tx: &ProgressTx) {
    let mut frames = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(Ok(chunk)) = frames.next().await {
        buf.extend_from_slice(&chunk);
        while buf.len() >= 8 {
            let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
            if buf.len() < 8 + len {
                break;
            }
            let text = String::from_utf8_lossy(&buf[8..8 + len]).into_owned();
            buf.drain(..8 + len);
            stream(tx, text).await;
        }
    }
}

/// The stages the target needs, in order: the target and every stage it
/// reaches through `FROM` or `COPY --from`.
fn needed_stages(d: &Dockerfile, target: Option<&str>) -> Result<Vec<usize>> {
    let target_index = match target.filter(|t| !t.is_empty()) {
        None => d.stages.len() - 1,
        Some(t) => {
            let t = t.to_ascii_lowercase();
            d.stages
                .iter()
                .find(|s| s.name.as_deref() == Some(t.as_str()))
                .map(|s| s.index)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "failed to reach build target {t} in Dockerfile"
                    ))
                })?
        }
    };
    let by_name = |name: &str, before: usize| -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        d.stages[..before]
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()) || s.index.to_string() == lower)
            .map(|s| s.index)
    };
    let mut needed = BTreeSet::new();
    let mut todo = vec![target_index];
    while let Some(i) = todo.pop() {
        if !needed.insert(i) {
            continue;
        }
        let s = &d.stages[i];
        if let Some(dep) = by_name(&s.base, i) {
            todo.push(dep);
        }
        for step in &s.steps {
            if let StepKind::Copy(c) = &step.kind
                && let Some(from) = &c.from
                && let Some(dep) = by_name(from, i)
            {
                todo.push(dep);
            }
        }
    }
    Ok(needed.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(history: &[(&str, bool)]) -> Current {
        let mut config = json!({"config": {}, "rootfs": {"type": "layers", "diff_ids": []}});
        let mut layers = Vec::new();
        for (i, (by, empty)) in history.iter().enumerate() {
            push_history(&mut config, &format!("t{i}"), by, *empty);
            if !empty {
                let d = images::Digest::of(by.as_bytes());
                push_layer(&mut config, d.as_ref());
                layers.push(ImageLayer::new(&d, &d, 1, "x"));
            }
        }
        Current {
            id: format!("id-{}", history.len()),
            layers,
            config,
        }
    }

    #[test]
    fn cache_sources_continue_the_current_history() {
        let src = image(&[("base", false), ("ENV A=1", true), ("run", false)]);
        let base = image(&[("base", false)]);
        let probe = |by| Probe {
            description: "",
            created_by: by,
            cfg: None,
        };
        // A step in the middle: the current image plus the source's entry.
        let Some(Reused::Built { config, layers }) = from_source(&base, &src, &probe("ENV A=1"))
        else {
            panic!("the ENV step should match");
        };
        assert_eq!(
            config["history"].as_array().unwrap()[..],
            src.config["history"].as_array().unwrap()[..2]
        );
        assert_eq!(layers.len(), 1);
        let mid = Current {
            id: "mid".into(),
            layers,
            config,
        };
        // The last step: the source itself.
        assert!(
            matches!(from_source(&mid, &src, &probe("run")), Some(Reused::Image(i)) if i.id == src.id)
        );
        // Controls: another instruction, another parent, a source no longer.
        assert!(from_source(&mid, &src, &probe("other")).is_none());
        let other = image(&[("other base", false)]);
        assert!(from_source(&other, &src, &probe("ENV A=1")).is_none());
        assert!(from_source(&src, &src, &probe("run")).is_none());
    }

    #[test]
    fn config_steps_are_named_with_their_values() {
        let vars = vec!["V=1.2".to_string()];
        assert_eq!(history_text("ENV X=$V", &vars), "ENV X=1.2");
        assert_eq!(history_text("CMD echo $V", &vars), "CMD echo $V");
        assert_eq!(history_text("LABEL a=b", &vars), "LABEL a=b");
    }

    #[test]
    fn only_the_stages_the_target_needs() {
        let d = build::dockerfile::parse(
            "FROM a AS base\nRUN x\nFROM b AS unused\nRUN y\nFROM base AS tools\nFROM c AS final\nCOPY --from=tools /x /y\n",
        )
        .unwrap();
        assert_eq!(needed_stages(&d, None).unwrap(), vec![0, 2, 3]);
        assert_eq!(needed_stages(&d, Some("unused")).unwrap(), vec![1]);
        assert_eq!(needed_stages(&d, Some("TOOLS")).unwrap(), vec![0, 2]);
        let e = needed_stages(&d, Some("nope")).unwrap_err().to_string();
        assert!(e.contains("failed to reach build target nope"), "{e}");
    }
}
