//! `docker commit`: the container's changes (its overlay upper dir, as a layer
//! from its server) on top of its image, with the container's config and the
//! caller's `--change`s, as a new image.

use std::io::Write;

use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use http_body_util::BodyExt;
use images::config::ContainerConfig;
use images::reference::Reference;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::containers::upstream;
use crate::error::{Error, Result};
use crate::model::ImageLayer;

/// What the caller asked for (Docker's `POST /commit` query and body).
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// `repo[:tag]`, empty for an untagged image.
    pub reference: String,
    pub comment: String,
    pub author: String,
    pub changes: Vec<String>,
    /// Config fields given in the request body, over the container's.
    pub config: Option<Value>,
}

/// The image config's `config` for the new image: the image's, then the
/// container's own settings, then the request's, then the changes.
pub fn committed_config(
    image: &Value,
    container: &Value,
    env: &[String],
    labels: &std::collections::BTreeMap<String, String>,
    opts: &CommitOptions,
) -> Result<ContainerConfig> {
    let mut merged = image.clone();
    if !merged.is_object() {
        merged = json!({});
    }
    for key in [
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
        "Healthcheck",
        "StopSignal",
        "StopTimeout",
        "OnBuild",
        "Shell",
    ] {
        if let Some(v) = container.get(key).filter(|v| !v.is_null()) {
            merged[key] = v.clone();
        }
    }
    merged["Env"] = json!(env);
    merged["Labels"] = json!(labels);
    if let Some(Value::Object(over)) = &opts.config {
        for (k, v) in over {
            if !v.is_null() {
                merged[k.as_str()] = v.clone();
            }
        }
    }
    let mut cfg: ContainerConfig = serde_json::from_value(merged)
        .map_err(|e| Error::InvalidArgument(format!("invalid config: {e}")))?;
    images::import::apply_changes(&mut cfg, &opts.changes)?;
    Ok(cfg)
}

impl Cluster {
    /// A layer tar from a server, into the blob store as it is (uncompressed:
    /// blob = diff_id); its digest and size.
    pub(crate) async fn store_layer(
        &self,
        body: hyper::body::Incoming,
    ) -> Result<(images::Digest, u64)> {
        let mut frames = body.into_data_stream();
        let mut w = self
            .blobs
            .writer()
            .map_err(|e| Error::internal("blob writer", e))?;
        while let Some(chunk) = frames.next().await {
            let chunk = chunk.map_err(|e| Error::Upstream(format!("reading the layer: {e}")))?;
            w.write_all(&chunk)
                .map_err(|e| Error::internal("writing the layer", e))?;
        }
        let size = w.bytes_written();
        let digest = w
            .commit(None)
            .map_err(|e| Error::internal("storing the layer", e))?;
        Ok((digest, size))
    }

    /// The new image's id.
    pub async fn commit_container(
        &self,
        account: &str,
        key: &str,
        opts: CommitOptions,
    ) -> Result<String> {
        let target = if opts.reference.is_empty() {
            None
        } else {
            Some(Reference::parse(&opts.reference)?.with_default_tag())
        };
        let (c, agent) = self.files_target(account, key).await?;
        let image = self.find_image(account, &c.image_id).await?;
        let parent = self.image_config(&image.id)?;
        let cfg = committed_config(
            &parent["config"],
            &c.config,
            &c.spec.process.env,
            &c.labels,
            &opts,
        )?;
        // The layer, straight into the blob store (uncompressed: blob = diff_id).
        let body = agent.diff_layer(&c.id).await.map_err(upstream)?;
        let (digest, size) = self.store_layer(body).await?;

        let now = Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true);
        let mut new = parent.clone();
        new["config"] = serde_json::to_value(&cfg).map_err(|e| Error::internal("config", e))?;
        new["created"] = json!(now);
        new["container"] = json!(c.id);
        new["container_config"] = c.docker_config();
        if !opts.author.is_empty() {
            new["author"] = json!(opts.author);
        }
        match new["rootfs"]["diff_ids"].as_array_mut() {
            Some(ids) => ids.push(json!(digest.to_string())),
            None => new["rootfs"] = json!({"type": "layers", "diff_ids": [digest.to_string()]}),
        }
        let mut history = json!({"created": now, "created_by": c.spec.process.args.join(" ")});
        if !opts.comment.is_empty() {
            history["comment"] = json!(opts.comment);
        }
        match new["history"].as_array_mut() {
            Some(h) => h.push(history),
            None => new["history"] = json!([history]),
        }
        let bytes = serde_json::to_vec(&new).map_err(|e| Error::internal("config", e))?;
        let config_digest = self
            .blobs
            .put_bytes(&bytes)
            .map_err(|e| Error::internal("storing the config", e))?;
        let mut layers = image.layers.clone();
        layers.push(ImageLayer::new(
            &digest,
            &digest,
            size,
            "application/vnd.docker.image.rootfs.diff.tar",
        ));
        let rec = self
            .record_image(account, &config_digest, layers, None)
            .await?;
        if let Some(t) = &target {
            self.set_tag(account, &t.to_string(), &rec.id).await?;
        }
        self.emit_container(&c, "commit", &[("comment", opts.comment.clone())]);
        Ok(rec.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layers_image_container_request_and_changes() {
        let image = json!({"Cmd": ["sh"], "Env": ["PATH=/bin"], "WorkingDir": "/"});
        let container = json!({"Cmd": ["sleep", "1"], "WorkingDir": "/srv"});
        let env = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let labels = std::collections::BTreeMap::from([("k".to_string(), "v".to_string())]);
        let opts = CommitOptions {
            changes: vec!["CMD [\"echo\", \"hi\"]".into(), "ENV B=2".into()],
            config: Some(json!({"User": "nobody"})),
            ..Default::default()
        };
        let c = committed_config(&image, &container, &env, &labels, &opts).unwrap();
        assert_eq!(c.cmd.unwrap(), ["echo", "hi"]);
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.env.unwrap(), ["PATH=/bin", "A=1", "B=2"]);
        assert_eq!(c.labels.unwrap()["k"], "v");
        let bad = CommitOptions {
            changes: vec!["RUN rm -rf /".into()],
            ..Default::default()
        };
        assert!(committed_config(&image, &container, &env, &labels, &bad).is_err());
    }
}
