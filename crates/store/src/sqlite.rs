//! SQLite implementation of the `Store` trait.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use cluster::StoreError;
use cluster::model::{
    AccountRecord, BuildCacheRecord, CertificateRecord, ContainerRecord, EndpointRow, ImageRecord,
    NetworkRecord, NodeRecord, TagRecord, VolumeRecord,
};
use cluster::store::{NodeAllocation, Package, Store, StoreResult};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::migrations::MIGRATIONS;

pub struct SqliteStore {
    pool: SqlitePool,
}

fn backend(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        let msg = db.message();
        let what = if msg.contains("containers.name") || msg.contains("containers.account") {
            "name"
        } else if msg.contains("containers.ip") {
            "public ip"
        } else if msg.contains("endpoints.") {
            "ip"
        } else if msg.contains("networks.") {
            "network"
        } else if msg.contains("accounts.name") {
            "account"
        } else {
            "unique"
        };
        return StoreError::Conflict(what.to_string());
    }
    StoreError::Backend(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(e.to_string()))
}

fn from_json<T: DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Backend(format!("corrupt record: {e}")))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        let url = format!("sqlite://{}", path.display());
        let opts = SqliteConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Backend(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(backend)?;
        let s = SqliteStore { pool };
        s.migrate().await?;
        Ok(s)
    }

    /// An in-memory database, for tests.
    pub async fn in_memory() -> StoreResult<SqliteStore> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(backend)?;
        let s = SqliteStore { pool };
        s.migrate().await?;
        Ok(s)
    }

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?
            .get(0);
        if current as usize > MIGRATIONS.len() {
            return Err(StoreError::Backend(format!(
                "database schema version {current} is newer than this atoll ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let mut tx = self.pool.begin().await.map_err(backend)?;
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
                .bind((i + 1) as i64)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
        }
        Ok(())
    }

    async fn rows<T: DeserializeOwned>(&self, sql: &str, binds: &[&str]) -> StoreResult<Vec<T>> {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(*b);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter()
            .map(|r| from_json(r.get::<&str, _>(0)))
            .collect()
    }

    async fn write_container(
        tx: &mut Transaction<'_, Sqlite>,
        c: &ContainerRecord,
        insert: bool,
    ) -> StoreResult<u64> {
        // Fabric addresses are unique per network (the `endpoints` table);
        // this column is the public address, unique in the datacenter.
        let ip: Option<String> = c.spec.public.as_ref().map(|p| p.ip.to_string());
        let data = to_json(c)?;
        let sql = if insert {
            "INSERT INTO containers (account, name, node, ip, data, memory, disk, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        } else {
            "UPDATE containers SET account = ?, name = ?, node = ?, ip = ?, data = ?, memory = ?, disk = ? WHERE id = ?"
        };
        let r = sqlx::query(sql)
            .bind(&c.account)
            .bind(&c.name)
            .bind(&c.node)
            .bind(ip)
            .bind(data)
            .bind(c.reservation.memory as i64)
            .bind(c.reservation.disk as i64)
            .bind(&c.id)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        if r.rows_affected() > 0 {
            Self::write_endpoints(tx, Some(c), &c.id).await?;
        }
        Ok(r.rows_affected())
    }

    /// Makes container `id`'s endpoint rows those of `networks`, bumping the
    /// map version of every network whose rows changed. Most updates (state
    /// changes) change nothing here and write nothing.
    async fn write_endpoints(
        tx: &mut Transaction<'_, Sqlite>,
        c: Option<&ContainerRecord>,
        id: &str,
    ) -> StoreResult<()> {
        let have: Vec<(String, String, String, String, String)> =
            sqlx::query("SELECT network, ip, node, mac, names FROM endpoints WHERE container = ?")
                .bind(id)
                .fetch_all(&mut **tx)
                .await
                .map_err(backend)?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect();
        let mut want = Vec::new();
        for c in c.iter() {
            for e in &c.spec.networks {
                want.push((
                    e.network.clone(),
                    e.ip.to_string(),
                    c.node.clone(),
                    e.mac.clone(),
                    to_json(&c.dns_names(e))?,
                ));
            }
        }
        let mut sorted = have.clone();
        sorted.sort();
        want.sort();
        if sorted == want {
            return Ok(());
        }
        sqlx::query("DELETE FROM endpoints WHERE container = ?")
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        for (network, ip, node, mac, names) in &want {
            // Only on a network that still exists (a concurrent `network rm`).
            let r = sqlx::query(
                "INSERT INTO endpoints (network, ip, container, node, mac, names) SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM networks WHERE id = ?)",
            )
            .bind(network)
            .bind(ip)
            .bind(id)
            .bind(node)
            .bind(mac)
            .bind(names)
            .bind(network)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
            if r.rows_affected() == 0 {
                return Err(StoreError::Conflict("network gone".into()));
            }
        }
        let mut touched: Vec<&String> = have.iter().chain(want.iter()).map(|e| &e.0).collect();
        touched.sort();
        touched.dedup();
        for n in touched {
            sqlx::query("UPDATE networks SET version = version + 1 WHERE id = ?")
                .bind(n)
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_image(&self, image: &ImageRecord) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("INSERT INTO images (account, id, data) VALUES (?, ?, ?) ON CONFLICT (account, id) DO UPDATE SET data = excluded.data")
            .bind(&image.account)
            .bind(&image.id)
            .bind(to_json(image)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM image_blobs WHERE account = ? AND image_id = ?")
            .bind(&image.account)
            .bind(&image.id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let blobs = image
            .layers
            .iter()
            .map(|l| l.blob.as_str())
            .chain(std::iter::once(image.id.as_str()));
        for b in blobs {
            sqlx::query("INSERT INTO image_blobs (account, image_id, blob) VALUES (?, ?, ?)")
                .bind(&image.account)
                .bind(&image.id)
                .bind(b)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn get_image(&self, account: &str, id: &str) -> StoreResult<Option<ImageRecord>> {
        Ok(self
            .rows(
                "SELECT data FROM images WHERE account = ? AND id = ?",
                &[account, id],
            )
            .await?
            .pop())
    }

    async fn list_images(&self, account: &str) -> StoreResult<Vec<ImageRecord>> {
        self.rows("SELECT data FROM images WHERE account = ?", &[account])
            .await
    }

    async fn delete_image(&self, account: &str, id: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for sql in [
            "DELETE FROM images WHERE account = ? AND id = ?",
            "DELETE FROM image_blobs WHERE account = ? AND image_id = ?",
            "DELETE FROM tags WHERE account = ? AND image_id = ?",
        ] {
            sqlx::query(sql)
                .bind(account)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn blob_in_use(&self, blob: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM image_blobs WHERE blob = ?1) + (SELECT COUNT(*) FROM build_cache_blobs WHERE blob = ?1)",
        )
        .bind(blob)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?
            .get(0);
        Ok(n > 0)
    }

    async fn put_build_cache(&self, entry: &BuildCacheRecord) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("INSERT INTO build_cache (account, key, data) VALUES (?, ?, ?) ON CONFLICT (account, key) DO UPDATE SET data = excluded.data")
            .bind(&entry.account)
            .bind(&entry.key)
            .bind(to_json(entry)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("DELETE FROM build_cache_blobs WHERE account = ? AND key = ?")
            .bind(&entry.account)
            .bind(&entry.key)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let blobs = entry
            .layers
            .iter()
            .map(|l| l.blob.as_str())
            .chain(std::iter::once(entry.image_id.as_str()))
            .filter(|b| !b.is_empty());
        for b in blobs {
            sqlx::query("INSERT INTO build_cache_blobs (account, key, blob) VALUES (?, ?, ?)")
                .bind(&entry.account)
                .bind(&entry.key)
                .bind(b)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn get_build_cache(
        &self,
        account: &str,
        key: &str,
    ) -> StoreResult<Option<BuildCacheRecord>> {
        Ok(self
            .rows(
                "SELECT data FROM build_cache WHERE account = ? AND key = ?",
                &[account, key],
            )
            .await?
            .pop())
    }

    async fn list_build_cache(&self, account: &str) -> StoreResult<Vec<BuildCacheRecord>> {
        self.rows("SELECT data FROM build_cache WHERE account = ?", &[account])
            .await
    }

    async fn delete_build_cache(&self, account: &str, key: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        for sql in [
            "DELETE FROM build_cache WHERE account = ? AND key = ?",
            "DELETE FROM build_cache_blobs WHERE account = ? AND key = ?",
        ] {
            sqlx::query(sql)
                .bind(account)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn set_tag(&self, tag: &TagRecord) -> StoreResult<Option<String>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let old: Option<String> =
            sqlx::query("SELECT image_id FROM tags WHERE account = ? AND reference = ?")
                .bind(&tag.account)
                .bind(&tag.reference)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?
                .map(|r| r.get(0));
        sqlx::query("INSERT INTO tags (account, reference, image_id) VALUES (?, ?, ?) ON CONFLICT (account, reference) DO UPDATE SET image_id = excluded.image_id")
            .bind(&tag.account)
            .bind(&tag.reference)
            .bind(&tag.image_id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(old)
    }

    async fn get_tag(&self, account: &str, reference: &str) -> StoreResult<Option<TagRecord>> {
        let row = sqlx::query("SELECT image_id FROM tags WHERE account = ? AND reference = ?")
            .bind(account)
            .bind(reference)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.map(|r| TagRecord {
            account: account.to_string(),
            reference: reference.to_string(),
            image_id: r.get(0),
        }))
    }

    async fn list_tags(&self, account: &str) -> StoreResult<Vec<TagRecord>> {
        let rows = sqlx::query(
            "SELECT reference, image_id FROM tags WHERE account = ? ORDER BY reference",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .into_iter()
            .map(|r| TagRecord {
                account: account.to_string(),
                reference: r.get(0),
                image_id: r.get(1),
            })
            .collect())
    }

    async fn delete_tag(&self, account: &str, reference: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM tags WHERE account = ? AND reference = ?")
            .bind(account)
            .bind(reference)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn insert_container(&self, c: &ContainerRecord) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        Self::write_container(&mut tx, c, true).await?;
        tx.commit().await.map_err(backend)
    }

    async fn update_container(&self, c: &ContainerRecord) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let n = Self::write_container(&mut tx, c, false).await?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await.map_err(backend)
    }

    async fn get_container(&self, account: &str, id: &str) -> StoreResult<Option<ContainerRecord>> {
        Ok(self
            .rows(
                "SELECT data FROM containers WHERE account = ? AND id = ?",
                &[account, id],
            )
            .await?
            .pop())
    }

    async fn get_container_by_id(&self, id: &str) -> StoreResult<Option<ContainerRecord>> {
        Ok(self
            .rows("SELECT data FROM containers WHERE id = ?", &[id])
            .await?
            .pop())
    }

    async fn list_containers(&self, account: &str) -> StoreResult<Vec<ContainerRecord>> {
        self.rows("SELECT data FROM containers WHERE account = ?", &[account])
            .await
    }

    async fn containers_on_node(&self, node: &str) -> StoreResult<Vec<ContainerRecord>> {
        self.rows("SELECT data FROM containers WHERE node = ?", &[node])
            .await
    }

    async fn delete_container(&self, account: &str, id: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let r = sqlx::query("DELETE FROM containers WHERE account = ? AND id = ?")
            .bind(account)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if r.rows_affected() > 0 {
            Self::write_endpoints(&mut tx, None, id).await?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn insert_network(&self, n: &NetworkRecord) -> StoreResult<u32> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let r = sqlx::query("INSERT INTO networks (id, account, name, data) VALUES (?, ?, ?, ?)")
            .bind(&n.id)
            .bind(&n.account)
            .bind(&n.name)
            .bind("{}")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let vni = r.last_insert_rowid();
        // VXLAN network identifiers have 24 bits.
        let vni = u32::try_from(vni)
            .ok()
            .filter(|v| *v < 1 << 24)
            .ok_or_else(|| StoreError::Conflict("no network identifier left".into()))?;
        let mut rec = n.clone();
        rec.vni = vni;
        sqlx::query("UPDATE networks SET data = ? WHERE vni = ?")
            .bind(to_json(&rec)?)
            .bind(vni as i64)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(vni)
    }

    async fn get_network(&self, account: &str, id: &str) -> StoreResult<Option<NetworkRecord>> {
        Ok(self
            .rows(
                "SELECT data FROM networks WHERE account = ? AND id = ?",
                &[account, id],
            )
            .await?
            .pop())
    }

    async fn list_networks(&self, account: &str) -> StoreResult<Vec<NetworkRecord>> {
        self.rows(
            "SELECT data FROM networks WHERE account = ? ORDER BY vni",
            &[account],
        )
        .await
    }

    async fn delete_network(&self, account: &str, id: &str) -> StoreResult<()> {
        // One statement: a container joining meanwhile either lands first
        // (and the network stays) or finds the network gone.
        let r = sqlx::query(
            "DELETE FROM networks WHERE account = ? AND id = ? AND NOT EXISTS (SELECT 1 FROM endpoints WHERE network = ?)",
        )
        .bind(account)
        .bind(id)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if r.rows_affected() > 0 {
            return Ok(());
        }
        match self.get_network(account, id).await? {
            Some(_) => Err(StoreError::Conflict("in use".into())),
            None => Err(StoreError::NotFound),
        }
    }

    async fn network_version(&self, network: &str) -> StoreResult<u64> {
        let v: i64 = sqlx::query("SELECT version FROM networks WHERE id = ?")
            .bind(network)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|r| r.get(0))
            .ok_or(StoreError::NotFound)?;
        Ok(v as u64)
    }

    async fn public_ips(&self) -> StoreResult<Vec<std::net::Ipv4Addr>> {
        let rows = sqlx::query("SELECT ip FROM containers WHERE ip IS NOT NULL")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let ip: &str = r.get(0);
                ip.parse()
                    .map_err(|e| StoreError::Backend(format!("corrupt public address {ip}: {e}")))
            })
            .collect()
    }

    async fn network_endpoints(&self, network: &str) -> StoreResult<(u64, Vec<EndpointRow>)> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let version: i64 = sqlx::query("SELECT version FROM networks WHERE id = ?")
            .bind(network)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .map(|r| r.get(0))
            .ok_or(StoreError::NotFound)?;
        let rows = sqlx::query(
            "SELECT container, node, ip, mac, names FROM endpoints WHERE network = ? ORDER BY ip",
        )
        .bind(network)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let ip: String = r.get(2);
            out.push(EndpointRow {
                container: r.get(0),
                node: r.get(1),
                ip: ip
                    .parse()
                    .map_err(|e| StoreError::Backend(format!("corrupt endpoint {ip}: {e}")))?,
                mac: r.get(3),
                names: from_json(r.get::<&str, _>(4))?,
            });
        }
        Ok((version as u64, out))
    }

    async fn insert_volume(&self, v: &VolumeRecord) -> StoreResult<()> {
        sqlx::query("INSERT INTO volumes (account, name, node, data) VALUES (?, ?, ?, ?)")
            .bind(&v.account)
            .bind(&v.name)
            .bind(&v.node)
            .bind(to_json(v)?)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get_volume(&self, account: &str, name: &str) -> StoreResult<Option<VolumeRecord>> {
        Ok(self
            .rows(
                "SELECT data FROM volumes WHERE account = ? AND name = ?",
                &[account, name],
            )
            .await?
            .pop())
    }

    async fn list_volumes(&self, account: &str) -> StoreResult<Vec<VolumeRecord>> {
        self.rows(
            "SELECT data FROM volumes WHERE account = ? ORDER BY name",
            &[account],
        )
        .await
    }

    async fn delete_volume(&self, account: &str, name: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM volumes WHERE account = ? AND name = ?")
            .bind(account)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn upsert_node(&self, n: &NodeRecord) -> StoreResult<()> {
        sqlx::query("INSERT INTO nodes (id, data) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data")
            .bind(&n.id)
            .bind(to_json(n)?)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        self.rows("SELECT data FROM nodes ORDER BY id", &[]).await
    }

    async fn delete_node(&self, id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM nodes WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn node_allocations(&self) -> StoreResult<Vec<NodeAllocation>> {
        let rows = sqlx::query(
            "SELECT node, SUM(memory), SUM(disk), COUNT(*) FROM containers GROUP BY node ORDER BY node",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| NodeAllocation {
                node: r.get(0),
                memory: r.get::<i64, _>(1).max(0) as u64,
                disk: r.get::<i64, _>(2).max(0) as u64,
                containers: r.get::<i64, _>(3).max(0) as u64,
            })
            .collect())
    }

    async fn put_package(&self, p: &Package) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        if p.default {
            // One default at a time.
            let others: Vec<Package> = {
                let rows = sqlx::query("SELECT data FROM packages WHERE name != ?")
                    .bind(&p.name)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(backend)?;
                rows.iter()
                    .map(|r| from_json(r.get::<&str, _>(0)))
                    .collect::<StoreResult<_>>()?
            };
            for mut o in others.into_iter().filter(|o| o.default) {
                o.default = false;
                sqlx::query("UPDATE packages SET data = ? WHERE name = ?")
                    .bind(to_json(&o)?)
                    .bind(&o.name)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
        }
        sqlx::query("INSERT INTO packages (name, data) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET data = excluded.data")
            .bind(&p.name)
            .bind(to_json(p)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn list_packages(&self) -> StoreResult<Vec<Package>> {
        self.rows("SELECT data FROM packages ORDER BY name", &[])
            .await
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn put_join_token(&self, hash: &str, expires_at: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO join_tokens (hash, expires_at) VALUES (?, ?)")
            .bind(hash)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn take_join_token(&self, hash: &str, now: i64) -> StoreResult<bool> {
        // Expired tokens go as well, whoever asks.
        sqlx::query("DELETE FROM join_tokens WHERE expires_at <= ?")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        let r = sqlx::query("DELETE FROM join_tokens WHERE hash = ? AND expires_at > ?")
            .bind(hash)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(r.rows_affected() == 1)
    }

    async fn insert_account(&self, a: &AccountRecord) -> StoreResult<()> {
        sqlx::query("INSERT INTO accounts (name, data) VALUES (?, ?)")
            .bind(&a.name)
            .bind(to_json(a)?)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn update_account(&self, a: &AccountRecord) -> StoreResult<()> {
        let r = sqlx::query("UPDATE accounts SET data = ? WHERE name = ?")
            .bind(to_json(a)?)
            .bind(&a.name)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn get_account(&self, name: &str) -> StoreResult<Option<AccountRecord>> {
        Ok(self
            .rows("SELECT data FROM accounts WHERE name = ?", &[name])
            .await?
            .pop())
    }

    async fn list_accounts(&self) -> StoreResult<Vec<AccountRecord>> {
        self.rows("SELECT data FROM accounts ORDER BY name", &[])
            .await
    }

    async fn delete_account(&self, name: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let r = sqlx::query("DELETE FROM accounts WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query("DELETE FROM certificates WHERE holder = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        sqlx::query("UPDATE id_ranges SET active = 0 WHERE account = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn account_id_range(&self, account: &str, first: u32, size: u32) -> StoreResult<u32> {
        let get = || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT base FROM id_ranges WHERE account = ? AND active = 1",
            )
            .bind(account)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)
        };
        if let Some(base) = get().await? {
            return u32::try_from(base).map_err(|_| StoreError::Backend("corrupt id range".into()));
        }
        // One statement: concurrent allocations are serialised by SQLite, and
        // the partial unique index leaves a racing second one a no-op.
        sqlx::query(
            "INSERT OR IGNORE INTO id_ranges (base, account, active) \
             SELECT COALESCE(MAX(base) + ?, ?), ?, 1 FROM id_ranges",
        )
        .bind(i64::from(size))
        .bind(i64::from(first))
        .bind(account)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        let base = get()
            .await?
            .ok_or_else(|| StoreError::Backend("id range allocation failed".into()))?;
        match u32::try_from(base) {
            Ok(b) if b.checked_add(size).is_some() => Ok(b),
            _ => {
                sqlx::query("DELETE FROM id_ranges WHERE base = ?")
                    .bind(base)
                    .execute(&self.pool)
                    .await
                    .map_err(backend)?;
                Err(StoreError::Conflict("no user id range left".into()))
            }
        }
    }

    async fn put_certificate(&self, c: &CertificateRecord) -> StoreResult<()> {
        sqlx::query("INSERT INTO certificates (serial, holder, data) VALUES (?, ?, ?) ON CONFLICT (serial) DO UPDATE SET data = excluded.data")
            .bind(&c.serial)
            .bind(&c.holder)
            .bind(to_json(c)?)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get_certificate(&self, serial: &str) -> StoreResult<Option<CertificateRecord>> {
        Ok(self
            .rows("SELECT data FROM certificates WHERE serial = ?", &[serial])
            .await?
            .pop())
    }

    async fn list_certificates(&self, holder: &str) -> StoreResult<Vec<CertificateRecord>> {
        self.rows(
            "SELECT data FROM certificates WHERE holder = ? ORDER BY serial",
            &[holder],
        )
        .await
    }

    async fn account_usage(&self, account: &str) -> StoreResult<(u64, u64)> {
        let r = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(memory), 0) FROM containers WHERE account = ?",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok((
            r.get::<i64, _>(0).max(0) as u64,
            r.get::<i64, _>(1).max(0) as u64,
        ))
    }

    async fn delete_package(&self, name: &str) -> StoreResult<()> {
        let r = sqlx::query("DELETE FROM packages WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
