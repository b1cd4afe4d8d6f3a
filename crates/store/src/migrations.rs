//! Schema migrations, applied in order inside one transaction each. Never edit a
//! released step; add a new one.

pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE images (
        account TEXT NOT NULL,
        id TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (account, id)
    );
    CREATE TABLE image_blobs (
        account TEXT NOT NULL,
        image_id TEXT NOT NULL,
        blob TEXT NOT NULL
    );
    CREATE INDEX image_blobs_blob ON image_blobs (blob);
    CREATE INDEX image_blobs_image ON image_blobs (account, image_id);
    CREATE TABLE tags (
        account TEXT NOT NULL,
        reference TEXT NOT NULL,
        image_id TEXT NOT NULL,
        PRIMARY KEY (account, reference)
    );
    CREATE TABLE containers (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        name TEXT NOT NULL,
        node TEXT NOT NULL,
        ip TEXT,
        data TEXT NOT NULL
    );
    CREATE UNIQUE INDEX containers_name ON containers (account, name);
    CREATE UNIQUE INDEX containers_ip ON containers (node, ip);
    CREATE INDEX containers_node ON containers (node);
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );
    "#,
    // 2: volumes (a volume lives on one node).
    r#"
    CREATE TABLE volumes (
        account TEXT NOT NULL,
        name TEXT NOT NULL,
        node TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (account, name)
    );
    "#,
    // 3: packages, and each container's reservation (its package's memory and
    // disk) in columns, so per-server allocations are one aggregate query.
    r#"
    CREATE TABLE packages (
        name TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );
    ALTER TABLE containers ADD COLUMN memory INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE containers ADD COLUMN disk INTEGER NOT NULL DEFAULT 0;
    "#,
    // 4: operator settings of the datacenter (e.g. the placement strategy).
    r#"
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 5: one-time join tokens for servers (only the secret's hash is kept).
    r#"
    CREATE TABLE join_tokens (
        hash TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    );
    "#,
    // 6: tenant accounts and the certificates issued to them.
    r#"
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX certificates_holder ON certificates (holder);
    "#,
    // 7: user-namespace id ranges. Rows are never deleted, so a range is never
    // handed out twice (files a deleted account left on a server stay foreign
    // to every later account); an account holds one active range at a time.
    r#"
    CREATE TABLE id_ranges (
        base INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        active INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX id_ranges_active ON id_ranges (account) WHERE active = 1;
    "#,
    // 8: fabric networks (the VNI is the never-reused row id) and the
    // addresses handed out on them, unique per network, with the names they
    // answer to (JSON). `version` counts the changes of a network's
    // endpoints: agents keep the newest overlay map.
    r#"
    CREATE TABLE networks (
        vni INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        account TEXT NOT NULL,
        name TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 0,
        data TEXT NOT NULL
    );
    CREATE UNIQUE INDEX networks_name ON networks (account, name);
    CREATE TABLE endpoints (
        network TEXT NOT NULL,
        ip TEXT NOT NULL,
        container TEXT NOT NULL,
        node TEXT NOT NULL,
        mac TEXT NOT NULL,
        names TEXT NOT NULL,
        PRIMARY KEY (network, ip)
    );
    CREATE INDEX endpoints_container ON endpoints (container);
    "#,
    // 9: `containers.ip` is now the container's address on the public
    // network, unique in the whole datacenter (NULL: none).
    r#"
    DROP INDEX containers_ip;
    UPDATE containers SET ip = NULL;
    CREATE UNIQUE INDEX containers_public_ip ON containers (ip) WHERE ip IS NOT NULL;
    "#,
    // 10: the build cache: one row per account and step key, and the blobs
    // each row holds (so they outlive the images built from them).
    r#"
    CREATE TABLE build_cache (
        account TEXT NOT NULL,
        key TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (account, key)
    );
    CREATE TABLE build_cache_blobs (
        account TEXT NOT NULL,
        key TEXT NOT NULL,
        blob TEXT NOT NULL
    );
    CREATE INDEX build_cache_blobs_blob ON build_cache_blobs (blob);
    CREATE INDEX build_cache_blobs_key ON build_cache_blobs (account, key);
    "#,
];
