//! The `Store` trait: desired state and metadata of the head. Implementations live in
//! the `store` crate (SQLite now, PostgreSQL later) and share one test suite.
//! Every query that touches tenant objects takes the account.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::model::{
    AccountRecord, BuildCacheRecord, CertificateRecord, ContainerRecord, EndpointRow, ImageRecord,
    NetworkRecord, NodeRecord, TagRecord, VolumeRecord,
};
pub use placement::Package;

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // images
    async fn put_image(&self, image: &ImageRecord) -> StoreResult<()>;
    async fn get_image(&self, account: &str, id: &str) -> StoreResult<Option<ImageRecord>>;
    async fn list_images(&self, account: &str) -> StoreResult<Vec<ImageRecord>>;
    async fn delete_image(&self, account: &str, id: &str) -> StoreResult<()>;
    /// Whether any account still has an image or a build cache entry that
    /// uses this blob.
    async fn blob_in_use(&self, blob: &str) -> StoreResult<bool>;

    // build cache
    async fn put_build_cache(&self, entry: &BuildCacheRecord) -> StoreResult<()>;
    async fn get_build_cache(
        &self,
        account: &str,
        key: &str,
    ) -> StoreResult<Option<BuildCacheRecord>>;
    async fn list_build_cache(&self, account: &str) -> StoreResult<Vec<BuildCacheRecord>>;
    async fn delete_build_cache(&self, account: &str, key: &str) -> StoreResult<()>;

    // tags
    /// Points `reference` at `image_id`, replacing an existing tag. Returns the old image id.
    async fn set_tag(&self, tag: &TagRecord) -> StoreResult<Option<String>>;
    async fn get_tag(&self, account: &str, reference: &str) -> StoreResult<Option<TagRecord>>;
    async fn list_tags(&self, account: &str) -> StoreResult<Vec<TagRecord>>;
    async fn delete_tag(&self, account: &str, reference: &str) -> StoreResult<()>;

    // containers
    /// Fails with `Conflict` when the name is taken in this account.
    async fn insert_container(&self, c: &ContainerRecord) -> StoreResult<()>;
    /// Replaces the record; `Conflict` on a name clash (rename), `NotFound` if gone.
    async fn update_container(&self, c: &ContainerRecord) -> StoreResult<()>;
    async fn get_container(&self, account: &str, id: &str) -> StoreResult<Option<ContainerRecord>>;
    /// Internal lookup by full id across accounts (agent reports carry no account).
    async fn get_container_by_id(&self, id: &str) -> StoreResult<Option<ContainerRecord>>;
    async fn list_containers(&self, account: &str) -> StoreResult<Vec<ContainerRecord>>;
    /// All containers of all accounts placed on a node (for reconciliation).
    async fn containers_on_node(&self, node: &str) -> StoreResult<Vec<ContainerRecord>>;
    async fn delete_container(&self, account: &str, id: &str) -> StoreResult<()>;

    // networks
    /// Stores a new network and returns the VNI it was given (never one given
    /// before); `Conflict("network")` when the account has one of that name.
    async fn insert_network(&self, n: &NetworkRecord) -> StoreResult<u32>;
    async fn get_network(&self, account: &str, id: &str) -> StoreResult<Option<NetworkRecord>>;
    async fn list_networks(&self, account: &str) -> StoreResult<Vec<NetworkRecord>>;
    /// Deletes the network unless a container is on it (`Conflict("in use")`).
    async fn delete_network(&self, account: &str, id: &str) -> StoreResult<()>;
    /// The addresses handed out on a network and the version of its overlay
    /// map (bumped, in the same transaction, by every change of its
    /// containers' endpoints, which `insert_container`, `update_container`
    /// and `delete_container` write from `spec.networks`; a taken address is
    /// `Conflict("ip")`).
    async fn network_endpoints(&self, network: &str) -> StoreResult<(u64, Vec<EndpointRow>)>;
    /// Just the version of the network's overlay map.
    async fn network_version(&self, network: &str) -> StoreResult<u64>;
    /// Every public address held by a container (`spec.public`, unique in
    /// the datacenter: a taken one is `Conflict("public ip")`).
    async fn public_ips(&self) -> StoreResult<Vec<std::net::Ipv4Addr>>;

    // volumes
    /// Fails with `Conflict` when the name is taken in this account.
    async fn insert_volume(&self, v: &VolumeRecord) -> StoreResult<()>;
    async fn get_volume(&self, account: &str, name: &str) -> StoreResult<Option<VolumeRecord>>;
    async fn list_volumes(&self, account: &str) -> StoreResult<Vec<VolumeRecord>>;
    async fn delete_volume(&self, account: &str, name: &str) -> StoreResult<()>;

    // nodes
    async fn upsert_node(&self, n: &NodeRecord) -> StoreResult<()>;
    async fn list_nodes(&self) -> StoreResult<Vec<NodeRecord>>;
    /// Forgets a server (the caller checks it holds nothing).
    async fn delete_node(&self, id: &str) -> StoreResult<()>;
    /// What is reserved on each server that holds containers, all accounts.
    async fn node_allocations(&self) -> StoreResult<Vec<NodeAllocation>>;

    // packages (operator objects, not per account)
    async fn put_package(&self, p: &Package) -> StoreResult<()>;
    async fn list_packages(&self) -> StoreResult<Vec<Package>>;
    async fn delete_package(&self, name: &str) -> StoreResult<()>;

    // operator settings
    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>>;
    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()>;

    // join tokens (hashes; `expires_at` in seconds since the epoch)
    async fn put_join_token(&self, hash: &str, expires_at: i64) -> StoreResult<()>;
    /// Deletes the token if it exists and has not expired at `now`: whether it did.
    /// One statement, so two agents racing with one token cannot both win.
    async fn take_join_token(&self, hash: &str, now: i64) -> StoreResult<bool>;

    // accounts and the certificates issued to them (operator objects)
    /// Creates the account; `Conflict("account")` if the name is taken.
    async fn insert_account(&self, a: &AccountRecord) -> StoreResult<()>;
    async fn update_account(&self, a: &AccountRecord) -> StoreResult<()>;
    async fn get_account(&self, name: &str) -> StoreResult<Option<AccountRecord>>;
    async fn list_accounts(&self) -> StoreResult<Vec<AccountRecord>>;
    /// Deletes the account and its certificate records.
    async fn delete_account(&self, name: &str) -> StoreResult<()>;
    async fn put_certificate(&self, c: &CertificateRecord) -> StoreResult<()>;
    async fn get_certificate(&self, serial: &str) -> StoreResult<Option<CertificateRecord>>;
    async fn list_certificates(&self, holder: &str) -> StoreResult<Vec<CertificateRecord>>;
    /// How many containers an account has, and the sum of their reservations' memory.
    async fn account_usage(&self, account: &str) -> StoreResult<(u64, u64)>;
    /// The first host id of the account's user-namespace range (`size` ids),
    /// allocated on first use above every range ever handed out, starting at
    /// `first`; `Conflict` when the id space is used up. Deleting the account
    /// retires its range.
    async fn account_id_range(&self, account: &str, first: u32, size: u32) -> StoreResult<u32>;
}

/// The sum of the reservations of the containers on one server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAllocation {
    pub node: String,
    pub memory: u64,
    pub disk: u64,
    pub containers: u64,
}
