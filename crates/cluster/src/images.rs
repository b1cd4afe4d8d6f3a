//! Image commands: load, import, save, pull, list, tag, rmi, history, prune.
//! Blobs are shared between accounts; records and tags are per account.

use std::collections::HashSet;
use std::io::Read;

use chrono::{DateTime, Utc};
use images::Digest;
use images::reference::Reference;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::model::{ImageLayer, ImageRecord, Status, TagRecord};
use crate::names;

/// One line of pull progress, already in Docker's JSON message shape.
pub type ProgressTx = mpsc::Sender<Value>;

/// Result of `rmi`: Docker's `[{"Untagged": ..}, {"Deleted": ..}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemovedItem {
    Untagged(String),
    Deleted(String),
}

/// A registry's refusal during a pull or push is the registry's failure
/// (500), as dockerd reports it, not a 401 of atoll's own: the docker CLI
/// answers a 401 by prompting for a password.
fn transfer_error(e: images::ImageError) -> Error {
    match e {
        images::ImageError::Unauthorized(m) => Error::Upstream(m),
        e => e.into(),
    }
}

fn familiar(reference: &str) -> String {
    Reference::parse(reference)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| reference.to_string())
}

impl Cluster {
    /// The parsed config JSON of an image.
    pub fn image_config(&self, id: &str) -> Result<Value> {
        let d = Digest::parse(id)?;
        let bytes = self
            .blobs
            .read(&d)
            .map_err(|e| Error::internal("reading image config", e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::internal("parsing image config", e))
    }

    /// Docker's lookup order: full id (with or without `sha256:`), reference, id prefix.
    pub async fn find_image(&self, account: &str, key: &str) -> Result<ImageRecord> {
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        if hex.len() == 64
            && names::is_hex(hex)
            && let Some(i) = self
                .store
                .get_image(account, &format!("sha256:{hex}"))
                .await?
        {
            return Ok(i);
        }
        if let Ok(r) = Reference::parse(key) {
            if let Some(d) = &r.digest {
                // name@sha256:... — matched against the repo digests we know.
                for i in self.store.list_images(account).await? {
                    if i.repo_digests.iter().any(|rd| rd.ends_with(&d.to_string()))
                        || i.id == d.to_string()
                    {
                        return Ok(i);
                    }
                }
            } else {
                let full = r.with_default_tag().to_string();
                if let Some(t) = self.store.get_tag(account, &full).await?
                    && let Some(i) = self.store.get_image(account, &t.image_id).await?
                {
                    return Ok(i);
                }
            }
        }
        if !hex.is_empty() && names::is_hex(hex) {
            let all = self.store.list_images(account).await?;
            let m: Vec<&ImageRecord> = all
                .iter()
                .filter(|i| i.id["sha256:".len()..].starts_with(hex))
                .collect();
            if m.len() == 1 {
                return Ok(m[0].clone());
            }
        }
        Err(Error::no_such_image(key))
    }

    /// Tags of an image in Docker's short form, sorted.
    pub async fn image_tags(&self, account: &str, id: &str) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .store
            .list_tags(account)
            .await?
            .into_iter()
            .filter(|t| t.image_id == id)
            .map(|t| familiar(&t.reference))
            .collect();
        v.sort();
        Ok(v)
    }

    /// Records an image (config + layers already in the blob store) for an account.
    pub(crate) async fn record_image(
        &self,
        account: &str,
        config: &Digest,
        layers: Vec<ImageLayer>,
        repo_digest: Option<String>,
    ) -> Result<ImageRecord> {
        let cfg = self.image_config(config.as_ref())?;
        let created = cfg["created"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        // What it adds to the account's storage: the blobs it holds no
        // other image of the account holds.
        let storage = if self.storage_limit(account).await?.is_some() {
            let owned = self.owned_blobs(account).await?;
            let mut counted = HashSet::new();
            layers
                .iter()
                .filter_map(|l| {
                    Digest::parse(&l.blob)
                        .ok()
                        .map(|d| (d, l.size.max(0) as u64))
                })
                .chain(std::iter::once((
                    config.clone(),
                    self.blobs.size(config).unwrap_or(0),
                )))
                .filter(|(d, _)| !owned.contains(d) && counted.insert(d.clone()))
                .map(|(_, size)| size)
                .sum()
        } else {
            0
        };
        let limits = self
            .check_account_limits(
                account,
                crate::accounts::Needs {
                    storage,
                    what: "image",
                    ..Default::default()
                },
            )
            .await;
        let _limits = match limits {
            Ok(guard) => guard,
            Err(e) => {
                // Its blobs go, unless an image of any account holds them.
                let mut blobs: Vec<String> = layers.iter().map(|l| l.blob.clone()).collect();
                blobs.push(config.to_string());
                self.delete_unused_blobs(blobs).await?;
                return Err(e);
            }
        };
        let existing = self.store.get_image(account, config.as_ref()).await?;
        let mut repo_digests = existing.map(|e| e.repo_digests).unwrap_or_default();
        if let Some(rd) = repo_digest
            && !repo_digests.contains(&rd)
        {
            repo_digests.push(rd);
        }
        let rec = ImageRecord {
            account: account.to_string(),
            id: config.to_string(),
            size: layers.iter().map(|l| l.size).sum(),
            layers,
            created,
            added: Utc::now(),
            repo_digests,
        };
        self.store.put_image(&rec).await?;
        Ok(rec)
    }

    /// Points a tag at an image. Returns the normalised reference.
    pub async fn tag_image(&self, account: &str, key: &str, repo: &str, tag: &str) -> Result<()> {
        let image = self.find_image(account, key).await?;
        let target = if tag.is_empty() {
            repo.to_string()
        } else {
            format!("{repo}:{tag}")
        };
        let r = Reference::parse(&target)?;
        if r.digest.is_some() {
            return Err(Error::InvalidArgument(
                "refusing to create a tag with a digest reference".into(),
            ));
        }
        let r = r.with_default_tag();
        self.set_tag(account, &r.to_string(), &image.id).await?;
        self.emit_image(account, "tag", &image.id, &r.familiar());
        Ok(())
    }

    /// An image event; `name` is the reference it concerns.
    pub(crate) fn emit_image(&self, account: &str, action: &str, id: &str, name: &str) {
        let attrs = std::collections::BTreeMap::from([("name".to_string(), name.to_string())]);
        self.emit(account, "image", action, id, attrs);
    }

    pub(crate) async fn set_tag(
        &self,
        account: &str,
        reference: &str,
        image_id: &str,
    ) -> Result<()> {
        self.store
            .set_tag(&TagRecord {
                account: account.to_string(),
                reference: reference.to_string(),
                image_id: image_id.to_string(),
            })
            .await?;
        Ok(())
    }

    /// `docker load`: reads an archive (docker-save or OCI layout). Returns Docker's
    /// "Loaded image: ..." lines.
    pub async fn load_images<R: Read + Send + 'static>(
        &self,
        account: &str,
        reader: R,
    ) -> Result<Vec<String>> {
        let blobs = self.blobs.clone();
        let loaded =
            tokio::task::spawn_blocking(move || images::archive::load_archive(reader, &blobs))
                .await
                .map_err(|e| Error::internal("load task", e))??;
        let mut lines = Vec::new();
        for img in loaded {
            let layers = img
                .layers
                .iter()
                .map(|l| ImageLayer::new(&l.blob, &l.diff_id, l.size, &l.media_type))
                .collect();
            let rec = self
                .record_image(account, &img.config, layers, None)
                .await?;
            let name = img
                .repo_tags
                .first()
                .and_then(|t| Reference::parse(t).ok())
                .map(|r| r.with_default_tag().familiar())
                .unwrap_or_else(|| rec.id.clone());
            self.emit_image(account, "load", &rec.id, &name);
            if img.repo_tags.is_empty() {
                lines.push(format!("Loaded image ID: {}", rec.id));
            }
            for t in &img.repo_tags {
                let r = Reference::parse(t)?.with_default_tag();
                self.set_tag(account, &r.to_string(), &rec.id).await?;
                lines.push(format!("Loaded image: {}", r.familiar()));
            }
        }
        Ok(lines)
    }

    /// `docker import`: a rootfs tarball becomes a one-layer image.
    pub async fn import_image<R: Read + Send + 'static>(
        &self,
        account: &str,
        reader: R,
        reference: Option<&str>,
        changes: Vec<String>,
        message: String,
    ) -> Result<String> {
        let target = reference
            .filter(|r| !r.is_empty())
            .map(|r| Reference::parse(r).map(|r| r.with_default_tag()))
            .transpose()?;
        let blobs = self.blobs.clone();
        let imported = tokio::task::spawn_blocking(move || {
            images::import::import_rootfs(reader, &blobs, &changes, &message, ("linux", "amd64"))
        })
        .await
        .map_err(|e| Error::internal("import task", e))??;
        let size = self
            .blobs
            .size(&imported.layer_blob)
            .map_err(|e| Error::internal("layer size", e))? as i64;
        let layers = vec![ImageLayer {
            blob: imported.layer_blob.to_string(),
            diff_id: imported.diff_id.to_string(),
            size,
            media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
        }];
        let rec = self
            .record_image(account, &imported.config, layers, None)
            .await?;
        let mut name = rec.id.clone();
        if let Some(t) = target {
            self.set_tag(account, &t.to_string(), &rec.id).await?;
            name = t.familiar();
        }
        self.emit_image(account, "import", &rec.id, &name);
        Ok(rec.id)
    }

    /// `docker save`: resolves names, then the caller streams `write_archive`.
    pub async fn save_plan(
        &self,
        account: &str,
        names: &[String],
    ) -> Result<Vec<images::archive::SaveImage>> {
        let mut out: Vec<images::archive::SaveImage> = Vec::new();
        for n in names {
            let img = self.find_image(account, n).await?;
            let mut tags = Vec::new();
            if let Ok(r) = Reference::parse(n)
                && r.digest.is_none()
                && !n.starts_with("sha256:")
                && (!names::is_hex(n) || n.contains(':'))
            {
                tags.push(r.with_default_tag().familiar());
            }
            let config = Digest::parse(&img.id)?;
            if let Some(existing) = out.iter_mut().find(|s| s.config == config) {
                existing.repo_tags.extend(tags);
                continue;
            }
            let layers = img
                .layers
                .iter()
                .map(|l| Ok((Digest::parse(&l.blob)?, Digest::parse(&l.diff_id)?)))
                .collect::<Result<Vec<_>>>()?;
            out.push(images::archive::SaveImage {
                config,
                layers,
                repo_tags: tags,
            });
        }
        Ok(out)
    }

    /// `docker login`: whether the registry takes `credentials`; the
    /// identity token its token server gave, if any (not kept).
    pub async fn registry_login(
        &self,
        server: &str,
        credentials: &images::registry::Credentials,
    ) -> Result<Option<String>> {
        Ok(self.registry.login(server, credentials).await?)
    }

    /// How the head reaches registries (mirrors, insecure ones).
    pub fn registry(&self) -> &images::registry::RegistryClient {
        &self.registry
    }

    pub fn blob_store(&self) -> &images::BlobStore {
        &self.blobs
    }

    /// `docker pull`: fetches into the shared blob store once, then records the
    /// image for the account; `platform` is `--platform`'s. Progress goes to
    /// `tx` as Docker JSON messages.
    pub async fn pull_image(
        &self,
        account: &str,
        reference: &str,
        credentials: Option<images::registry::Credentials>,
        platform: Option<images::registry::Platform>,
        tx: ProgressTx,
    ) -> Result<()> {
        let r = Reference::parse(reference)?.with_default_tag();
        let requested;
        let registry = match platform {
            Some(p) => {
                requested = self.registry.clone().with_requested_platform(p);
                &requested
            }
            None => &self.registry,
        };
        let send = |v: Value| {
            let _ = tx.try_send(v);
        };
        // "Pulling from" is sent with the first layer event, so that failures while
        // resolving (unknown tag, unreachable registry) are still plain HTTP errors.
        let mut announced = false;
        let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
        let path = r.path.clone();
        let mut progress = |p: images::registry::PullProgress| {
            use images::registry::PullProgress as P;
            if !announced && !matches!(p, P::Resolving) {
                announced = true;
                let _ = tx.try_send(
                    serde_json::json!({"status": format!("Pulling from {path}"), "id": tag}),
                );
            }
            let v = match p {
                P::Resolving => return,
                P::LayerWaiting { id } => {
                    serde_json::json!({"status": "Pulling fs layer", "id": id})
                }
                P::LayerAlreadyExists { id } => {
                    serde_json::json!({"status": "Already exists", "id": id})
                }
                P::LayerDownloading { id, current, total } => serde_json::json!({
                    "status": "Downloading", "id": id,
                    "progressDetail": {"current": current, "total": total}
                }),
                P::LayerVerifying { id } => {
                    serde_json::json!({"status": "Verifying Checksum", "id": id})
                }
                P::LayerDownloadComplete { id } => {
                    serde_json::json!({"status": "Download complete", "id": id})
                }
                P::Digest(d) => serde_json::json!({"status": format!("Digest: {d}")}),
            };
            let _ = tx.try_send(v);
        };
        // What the account already holds needs no registry's word.
        let allowance = images::registry::Allowance {
            owns: self.owned_blobs(account).await?,
            bytes: self.storage_left(account).await?,
        };
        let pulled = registry
            .pull_with_credentials(
                &r,
                credentials.as_ref(),
                &self.blobs,
                &allowance,
                &mut progress,
            )
            .await
            .map_err(transfer_error)?;
        let layers: Vec<ImageLayer> = pulled
            .layers
            .iter()
            .map(|l| ImageLayer::new(&l.blob, &l.diff_id, l.size, &l.media_type))
            .collect();
        for l in &layers {
            send(serde_json::json!({"status": "Pull complete", "id": names::short_id(&l.blob)}));
        }
        let repo_digest = format!("{}@{}", r.repository(), pulled.manifest_digest);
        let old = self.store.get_tag(account, &r.to_string()).await?;
        let rec = self
            .record_image(account, &pulled.config, layers, Some(repo_digest))
            .await?;
        self.set_tag(account, &r.to_string(), &rec.id).await?;
        let newer = old.map(|o| o.image_id != rec.id).unwrap_or(true);
        self.emit_image(account, "pull", &r.familiar(), &r.familiar());
        send(serde_json::json!({"status": if newer {
            format!("Status: Downloaded newer image for {}", r.familiar())
        } else {
            format!("Status: Image is up to date for {}", r.familiar())
        }}));
        Ok(())
    }

    /// `docker push`: `name` with `tag`, or every tag of the repository when
    /// `tag` is empty (`--all-tags`). Progress goes to `tx` as Docker JSON
    /// messages; each pushed tag's digest joins its image's `RepoDigests`.
    pub async fn push_image(
        &self,
        account: &str,
        name: &str,
        tag: &str,
        credentials: Option<images::registry::Credentials>,
        tx: ProgressTx,
    ) -> Result<()> {
        let mut repo = Reference::parse(name)?;
        if repo.digest.is_some() {
            return Err(Error::InvalidArgument(format!(
                "cannot push a digest reference: {name}"
            )));
        }
        let tag = match (tag, repo.tag.take()) {
            ("", named) => named,
            (t, _) => Some(t.to_string()),
        };
        let mut targets = Vec::new();
        for t in self.store.list_tags(account).await? {
            let Ok(r) = Reference::parse(&t.reference) else {
                continue;
            };
            if r.domain == repo.domain && r.path == repo.path && (tag.is_none() || r.tag == tag) {
                targets.push((r, t.image_id));
            }
        }
        if targets.is_empty() {
            let wanted = match &tag {
                Some(t) => format!("{}:{t}", repo.familiar()),
                None => repo.familiar(),
            };
            return Err(Error::NotFound(format!(
                "An image does not exist locally with the tag: {wanted}"
            )));
        }
        targets.sort_by(|a, b| a.0.tag.cmp(&b.0.tag));
        let send = |v: Value| {
            let _ = tx.try_send(v);
        };
        send(serde_json::json!({
            "status": format!("The push refers to repository [{}]", repo.full_repository())
        }));
        for (r, image_id) in targets {
            let img = self
                .store
                .get_image(account, &image_id)
                .await?
                .ok_or_else(|| Error::no_such_image(&image_id))?;
            let layers = img
                .layers
                .iter()
                .map(|l| {
                    Ok(images::registry::PulledLayer {
                        blob: Digest::parse(&l.blob)?,
                        diff_id: Digest::parse(&l.diff_id)?,
                        size: l.size.max(0) as u64,
                        media_type: l.media_type.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let config = Digest::parse(&img.id)?;
            let mut progress = |p: images::registry::PushProgress| {
                use images::registry::PushProgress as P;
                let (status, id, detail) = match p {
                    P::Preparing { id } => ("Preparing".to_string(), id, None),
                    P::Waiting { id } => ("Waiting".to_string(), id, None),
                    P::Pushing { id, current, total } => {
                        ("Pushing".to_string(), id, Some((current, total)))
                    }
                    P::Pushed { id } => ("Pushed".to_string(), id, None),
                    P::AlreadyExists { id } => ("Layer already exists".to_string(), id, None),
                    P::Mounted { id, from } => (format!("Mounted from {from}"), id, None),
                };
                let detail = match detail {
                    Some((current, total)) => {
                        serde_json::json!({"current": current, "total": total})
                    }
                    None => serde_json::json!({}),
                };
                send(serde_json::json!({"status": status, "progressDetail": detail, "id": id}));
            };
            let pushed = self
                .registry
                .push(
                    &r,
                    credentials.as_ref(),
                    &self.blobs,
                    images::registry::PushImage {
                        config: &config,
                        layers: &layers,
                    },
                    &mut progress,
                )
                .await
                .map_err(transfer_error)?;
            let t = r.tag.clone().unwrap_or_else(|| "latest".into());
            // The last lines are the ones the CLI shows: never dropped.
            let _ = tx
                .send(serde_json::json!({"status": format!(
                    "{t}: digest: {} size: {}", pushed.digest, pushed.size
                )}))
                .await;
            let _ = tx
                .send(serde_json::json!({"progressDetail": {}, "aux": {
                    "Tag": t, "Digest": pushed.digest.to_string(), "Size": pushed.size
                }}))
                .await;
            let repo_digest = format!("{}@{}", r.repository(), pushed.digest);
            if let Some(mut rec) = self.store.get_image(account, &image_id).await?
                && !rec.repo_digests.contains(&repo_digest)
            {
                rec.repo_digests.push(repo_digest);
                self.store.put_image(&rec).await?;
            }
            self.emit_image(account, "push", &r.familiar(), &r.familiar());
        }
        Ok(())
    }

    /// `docker rmi`.
    pub async fn remove_image(
        &self,
        account: &str,
        key: &str,
        force: bool,
    ) -> Result<Vec<RemovedItem>> {
        let id = self.find_image(account, key).await?.id;
        let out = self.remove_image_inner(account, key, force).await?;
        for item in &out {
            match item {
                RemovedItem::Untagged(name) => self.emit_image(account, "untag", &id, name),
                RemovedItem::Deleted(d) => self.emit_image(account, "delete", d, d),
            }
        }
        Ok(out)
    }

    async fn remove_image_inner(
        &self,
        account: &str,
        key: &str,
        force: bool,
    ) -> Result<Vec<RemovedItem>> {
        let img = self.find_image(account, key).await?;
        let tags: Vec<TagRecord> = self
            .store
            .list_tags(account)
            .await?
            .into_iter()
            .filter(|t| t.image_id == img.id)
            .collect();
        let by_ref = Reference::parse(key)
            .ok()
            .filter(|r| r.digest.is_none())
            .map(|r| r.with_default_tag().to_string())
            .filter(|full| tags.iter().any(|t| &t.reference == full));
        let users: Vec<_> = self
            .store
            .list_containers(account)
            .await?
            .into_iter()
            .filter(|c| c.image_id == img.id)
            .collect();
        let short = names::short_id(&img.id).to_string();
        let mut out = Vec::new();

        if let Some(full) = &by_ref {
            // Untag only, unless this is the last tag of an image nothing else names.
            if tags.len() > 1 || (!users.is_empty() && force) {
                self.store.delete_tag(account, full).await?;
                out.push(RemovedItem::Untagged(familiar(full)));
                return Ok(out);
            }
            if let Some(u) = users.first() {
                return Err(Error::Conflict(format!(
                    "conflict: unable to remove repository reference \"{key}\" (must force) - container {} is using its referenced image {short}",
                    names::short_id(&u.id)
                )));
            }
        } else {
            if tags.len() > 1 && !force {
                return Err(Error::Conflict(format!(
                    "conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
                )));
            }
            if let Some(u) = users.iter().find(|u| u.state.status.is_running()) {
                return Err(Error::Conflict(format!(
                    "conflict: unable to delete {short} (cannot be forced) - image is being used by running container {}",
                    names::short_id(&u.id)
                )));
            }
            if let Some(u) = users.first() {
                if !force {
                    return Err(Error::Conflict(format!(
                        "conflict: unable to delete {short} (must be forced) - image is being used by stopped container {}",
                        names::short_id(&u.id)
                    )));
                }
                // Forced with stopped users: untag all, keep the image for them.
                for t in &tags {
                    self.store.delete_tag(account, &t.reference).await?;
                    out.push(RemovedItem::Untagged(familiar(&t.reference)));
                }
                return Ok(out);
            }
        }
        for t in &tags {
            self.store.delete_tag(account, &t.reference).await?;
            out.push(RemovedItem::Untagged(familiar(&t.reference)));
        }
        for rd in &img.repo_digests {
            out.push(RemovedItem::Untagged(rd.clone()));
        }
        self.delete_image_record(&img).await?;
        out.push(RemovedItem::Deleted(img.id.clone()));
        Ok(out)
    }

    /// Drops the account's record and any blob no account uses any more.
    async fn delete_image_record(&self, img: &ImageRecord) -> Result<()> {
        self.store.delete_image(&img.account, &img.id).await?;
        let mut blobs: Vec<String> = img.layers.iter().map(|l| l.blob.clone()).collect();
        blobs.push(img.id.clone());
        self.delete_unused_blobs(blobs).await
    }

    /// Deletes the blobs no image of any account holds.
    pub(crate) async fn delete_unused_blobs(&self, blobs: Vec<String>) -> Result<()> {
        for b in blobs {
            if !self.store.blob_in_use(&b).await?
                && let Ok(d) = Digest::parse(&b)
            {
                let _ = self.blobs.delete(&d);
            }
        }
        Ok(())
    }

    /// `docker image prune`: dangling images (or, with `all`, every unused one).
    pub async fn prune_images(
        &self,
        account: &str,
        all: bool,
        keep: impl Fn(&ImageRecord) -> bool,
    ) -> Result<(Vec<RemovedItem>, i64)> {
        let used: Vec<String> = self
            .store
            .list_containers(account)
            .await?
            .into_iter()
            .map(|c| c.image_id)
            .collect();
        let tags = self.store.list_tags(account).await?;
        let mut out = Vec::new();
        let mut reclaimed = 0;
        for img in self.store.list_images(account).await? {
            let tagged: Vec<&TagRecord> = tags.iter().filter(|t| t.image_id == img.id).collect();
            if used.contains(&img.id) || (!all && !tagged.is_empty()) || keep(&img) {
                continue;
            }
            for t in tagged {
                self.store.delete_tag(account, &t.reference).await?;
                out.push(RemovedItem::Untagged(familiar(&t.reference)));
            }
            self.delete_image_record(&img).await?;
            reclaimed += img.size;
            out.push(RemovedItem::Deleted(img.id.clone()));
        }
        Ok((out, reclaimed))
    }

    /// Counts for `docker info`.
    pub async fn counts(&self, account: &str) -> Result<(usize, usize, usize, usize, usize)> {
        let cs = self.store.list_containers(account).await?;
        let running = cs
            .iter()
            .filter(|c| c.state.status == Status::Running || c.state.status == Status::Restarting)
            .count();
        let paused = cs
            .iter()
            .filter(|c| c.state.status == Status::Paused)
            .count();
        let images = self.store.list_images(account).await?.len();
        Ok((
            cs.len(),
            running,
            paused,
            cs.len() - running - paused,
            images,
        ))
    }
}
