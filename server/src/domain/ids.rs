//! Newtype ids, so a device id can never be passed where a tenant id is meant.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<i64> for $name {
            fn from(v: i64) -> Self {
                Self(v)
            }
        }
    )*};
}

id_type!(
    /// A tenant: one customer, owner of everything else.
    TenantId,
    /// An API key of a tenant.
    ApiKeyId,
    /// A product (hardware model).
    ProductId,
    /// A device of a product.
    DeviceId,
    /// A node of a tenant's group tree.
    GroupId,
    /// An asset tree of a tenant.
    AssetTreeId,
    /// A node of an asset tree.
    AssetNodeId,
    /// A firmware package.
    PackageId,
    /// One file of a package.
    PackageFileId,
    /// An uploaded list of devices (B5 CSV scope).
    DeviceListId,
    /// A rollout (Alibaba "update batch", EnOS "OTA job").
    RolloutId,
    /// One device's task in one rollout.
    TaskId,
    /// One uploaded version of a tenant's policy (W1).
    PolicyId,
);
