//! Tenant accounts: the operator's commands on them, the certificates issued to
//! them, who a TLS caller is ([`Cluster::authenticate`]), and their limits.
//! Certificates themselves are made by the `pki` crate; this keeps their
//! records (for listing and revocation).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent_client::IdMap;

use chrono::Utc;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::error::{Error, Result, StoreError};
use crate::model::{AccountLimits, AccountRecord, CertificateRecord, OPERATOR};

/// How long an answer of [`Cluster::authenticate`] is reused. A revocation or a
/// disabled account takes effect at once on this head (the cache is cleared),
/// and within this time on other heads.
const AUTH_CACHE_TTL: Duration = Duration::from_secs(2);
/// How often an open stream checks its caller again when nothing changed here.
const RECHECK_STREAMS: Duration = Duration::from_secs(3);

/// An answer of [`Cluster::authenticate`] and when it was given: the account,
/// or the refusal the caller is shown.
pub(crate) type CachedAuth = (Instant, Result<String, String>);

/// An account as the operator sees it: the record and what it holds.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    #[serde(flatten)]
    pub account: AccountRecord,
    pub containers: u64,
    pub memory_reserved: u64,
    /// What it holds on disk, as its storage limit counts it.
    pub storage: crate::storage::StorageUse,
    /// Its user-namespace range: container ids 0.. are host ids `host_base`..
    pub userns: IdMap,
}

/// Where tenants' user-namespace ranges start: far above the ids of host
/// users and of the subordinate ranges tools hand out from 100000.
pub const FIRST_TENANT_ID: u32 = 1_000_000_000;
/// Ids per account: the whole 16-bit space images expect (nobody is 65534).
pub const IDS_PER_ACCOUNT: u32 = 65536;

/// Account names: what a certificate's CN and every tenant object are keyed by.
pub fn validate_account_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "invalid account name {name:?}: use 1-63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
        )));
    }
    if name == OPERATOR {
        return Err(Error::InvalidArgument(format!(
            "{OPERATOR} is the operator's own account"
        )));
    }
    Ok(())
}

impl Cluster {
    pub async fn create_account(&self, name: &str) -> Result<AccountRecord> {
        validate_account_name(name)?;
        let a = AccountRecord {
            name: name.to_string(),
            created: Utc::now(),
            disabled: false,
            limits: AccountLimits::default(),
        };
        match self.store.insert_account(&a).await {
            Err(StoreError::Conflict(_)) => {
                Err(Error::Conflict(format!("account {name} exists already")))
            }
            r => r.map_err(Error::from),
        }?;
        self.id_map(name).await?;
        Ok(a)
    }

    /// The user-namespace mapping of `account`'s containers: none for the
    /// operator (host ids, like a plain Docker host), else the account's own
    /// range, allocated on first use and recorded in the store.
    pub async fn id_map(&self, account: &str) -> Result<Option<IdMap>> {
        if account == OPERATOR {
            return Ok(None);
        }
        if let Some(m) = self.lock_id_maps().get(account) {
            return Ok(Some(*m));
        }
        let host_base = match self
            .store
            .account_id_range(account, FIRST_TENANT_ID, IDS_PER_ACCOUNT)
            .await
        {
            Err(StoreError::Conflict(what)) => {
                return Err(Error::Internal(format!("cannot run containers: {what}")));
            }
            r => r?,
        };
        let m = IdMap {
            host_base,
            size: IDS_PER_ACCOUNT,
        };
        self.lock_id_maps().insert(account.to_string(), m);
        Ok(Some(m))
    }

    fn lock_id_maps(&self) -> std::sync::MutexGuard<'_, HashMap<String, IdMap>> {
        self.id_maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn account(&self, name: &str) -> Result<AccountRecord> {
        self.store
            .get_account(name)
            .await?
            .ok_or_else(|| Error::NotFound(format!("No such account: {name}")))
    }

    pub async fn list_accounts(&self) -> Result<Vec<AccountView>> {
        let mut out = Vec::new();
        for account in self.store.list_accounts().await? {
            let (containers, memory_reserved) = self.store.account_usage(&account.name).await?;
            let userns = self
                .id_map(&account.name)
                .await?
                .ok_or_else(|| Error::Internal("the operator has no id range".into()))?;
            let storage = self.storage_use(&account.name).await?;
            out.push(AccountView {
                account,
                containers,
                memory_reserved,
                storage,
                userns,
            });
        }
        Ok(out)
    }

    /// Disables (its certificates are refused) or enables an account, and/or
    /// sets its limits.
    pub async fn update_account(
        &self,
        name: &str,
        disabled: Option<bool>,
        limits: Option<AccountLimits>,
    ) -> Result<AccountRecord> {
        let mut a = self.account(name).await?;
        if let Some(d) = disabled {
            a.disabled = d;
        }
        if let Some(l) = limits {
            a.limits = l;
        }
        self.store.update_account(&a).await?;
        self.forget_authentications();
        Ok(a)
    }

    /// Deletes an account that holds no containers, volumes or images.
    pub async fn delete_account(&self, name: &str) -> Result<()> {
        self.account(name).await?;
        let containers = self.store.list_containers(name).await?.len();
        let volumes = self.store.list_volumes(name).await?.len();
        let images = self.store.list_images(name).await?.len();
        if containers + volumes + images > 0 {
            return Err(Error::Conflict(format!(
                "account {name} still holds {containers} container(s), {volumes} volume(s) and {images} image(s): disable it, or remove them first"
            )));
        }
        self.store.delete_account(name).await?;
        self.forget_authentications();
        self.lock_id_maps().remove(name);
        Ok(())
    }

    /// Records a certificate the CA just issued (to list and revoke it later).
    pub async fn record_certificate(&self, c: &CertificateRecord) -> Result<()> {
        Ok(self.store.put_certificate(c).await?)
    }

    pub async fn list_certificates(&self, holder: &str) -> Result<Vec<CertificateRecord>> {
        Ok(self.store.list_certificates(holder).await?)
    }

    /// Revokes a certificate by serial: it is refused from now on.
    pub async fn revoke_certificate(&self, serial: &str) -> Result<CertificateRecord> {
        let serial = serial.to_ascii_lowercase();
        let mut c = self
            .store
            .get_certificate(&serial)
            .await?
            .ok_or_else(|| Error::NotFound(format!("No such certificate: {serial}")))?;
        if c.revoked.is_none() {
            c.revoked = Some(Utc::now());
            self.store.put_certificate(&c).await?;
        }
        self.forget_authentications();
        Ok(c)
    }

    /// The account a verified client certificate acts as: an account's own
    /// (known, enabled, the certificate on record and not revoked), or the
    /// operator's. Every refusal says the same to the caller; the log says why.
    pub async fn authenticate(&self, id: &pki::Identity) -> Result<String> {
        if let Some((at, answer)) = self
            .auth_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id.serial)
            && at.elapsed() < AUTH_CACHE_TTL
        {
            return answer.clone().map_err(Error::Unauthorized);
        }
        let answer = self.check_identity(id).await?;
        if let Err(why) = &answer {
            tracing::info!("refused certificate {} of {}: {why}", id.serial, id.name);
        }
        let answer =
            answer.map_err(|_| "certificate refused: unknown, revoked or disabled".to_string());
        self.auth_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.serial.clone(), (Instant::now(), answer.clone()));
        answer.map_err(Error::Unauthorized)
    }

    /// Ok(account) or Err(why, for the log).
    async fn check_identity(&self, id: &pki::Identity) -> Result<Result<String, String>> {
        let Some(cert) = self.store.get_certificate(&id.serial).await? else {
            return Ok(Err("not on record".into()));
        };
        if cert.revoked.is_some() {
            return Ok(Err("revoked".into()));
        }
        if cert.holder != id.name {
            return Ok(Err("its record names someone else".into()));
        }
        match id.role {
            pki::Role::Operator => Ok(Ok(OPERATOR.to_string())),
            pki::Role::Account => match self.store.get_account(&id.name).await? {
                None => Ok(Err("no such account".into())),
                Some(a) if a.disabled => Ok(Err("account disabled".into())),
                Some(a) => Ok(Ok(a.name)),
            },
            _ => Ok(Err("not an account's or operator's certificate".into())),
        }
    }

    fn forget_authentications(&self) {
        self.auth_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.auth_changes.send_modify(|n| *n += 1);
    }

    /// Resolves once `id` is refused (revoked, its account disabled or
    /// gone): checked at every change of accounts on this head, and every
    /// few seconds for changes made elsewhere. Long-lived streams (attach,
    /// exec, logs, events, stats) end on it.
    pub async fn refused(&self, id: &pki::Identity) {
        let mut changes = self.auth_changes.subscribe();
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(RECHECK_STREAMS) => {}
            }
            if self.authenticate(id).await.is_err() {
                return;
            }
        }
    }

    /// Refuses a new object that would take `account` past its limits.
    /// Returns a guard that serialises the account's creates until the
    /// object is recorded, so concurrent creates cannot overshoot together.
    pub(crate) async fn check_account_limits(
        &self,
        account: &str,
        needs: Needs,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<()>>> {
        if account == OPERATOR {
            return Ok(None); // not an account: no store query on its creates
        }
        let Some(a) = self.store.get_account(account).await? else {
            return Ok(None);
        };
        if a.limits == AccountLimits::default() {
            return Ok(None);
        }
        let guard = self.lock(&format!("account:{account}")).await;
        let (count, reserved) = self.store.account_usage(account).await?;
        if let Some(max) = a.limits.containers
            && needs.containers > 0
            && count + needs.containers > max
        {
            return Err(Error::Forbidden(format!(
                "account limit reached: at most {max} containers"
            )));
        }
        if let Some(max) = a.limits.memory_bytes
            && needs.memory > 0
            && reserved + needs.memory > max
        {
            return Err(Error::Forbidden(format!(
                "account limit reached: {} of memory in all, {} in use, this container needs {}",
                placement::human(max),
                placement::human(reserved),
                placement::human(needs.memory)
            )));
        }
        if let Some(max) = a.limits.storage_bytes
            && needs.storage > 0
        {
            let used = self.storage_use(account).await?;
            if used.total() + needs.storage > max {
                let h = placement::human;
                return Err(Error::Forbidden(format!(
                    "account limit reached: {} of storage in all, {} in use (images {}, volumes {}, containers {}), this {} needs {}",
                    h(max),
                    h(used.total()),
                    h(used.images),
                    h(used.volumes),
                    h(used.containers),
                    needs.what,
                    h(needs.storage)
                )));
            }
        }
        Ok(Some(guard))
    }
}

/// What a new object takes from its account's limits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Needs {
    pub containers: u64,
    pub memory: u64,
    /// Bytes of storage (see `storage`).
    pub storage: u64,
    /// What it is, for the refusal: "container", "volume", "image".
    pub what: &'static str,
}
