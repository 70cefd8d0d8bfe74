//! Pure types and rules of the OTA domain: ids, validated names, roles, limits. No I/O.

pub mod groups;
pub mod ids;
pub mod names;
pub mod package;
pub mod policy;
pub mod projection;
pub mod rate;
pub mod registry;
pub mod role;
pub mod rollout;
pub mod safety;
pub mod task;

pub use groups::*;
pub use ids::*;
pub use names::*;
pub use package::*;
pub use policy::*;
pub use rate::*;
pub use registry::*;
pub use role::Role;
pub use rollout::*;
pub use safety::*;
pub use task::*;

/// A rule of the domain that an input broke; `field` names the input, `message` says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Upper bounds the seeds and SPEC set; kept in one place so API, store and docs agree.
pub mod limits {
    /// SPEC D1 / B5: one import or scope file holds at most this many device rows.
    pub const MAX_IMPORT_ROWS: usize = 1_000_000;
    /// Page size bounds for list endpoints.
    pub const MAX_PAGE_LIMIT: u64 = 1000;
    pub const DEFAULT_PAGE_LIMIT: u64 = 100;
    /// Depth of a group tree (root = 1); deep trees make scope queries expensive.
    pub const MAX_GROUP_DEPTH: usize = 5;
    pub const MAX_ASSET_TREE_DEPTH: usize = 16;
    /// Attributes and tags a single device may carry.
    pub const MAX_DEVICE_ATTRIBUTES: usize = 100;
    pub const MAX_DEVICE_TAGS: usize = 100;
    pub const MAX_ATTRIBUTE_VALUE_LEN: usize = 1024;
    pub const MAX_TAG_VALUE_LEN: usize = 1024;
    pub const MAX_DESCRIPTION_LEN: usize = 1024;
    /// A device may report at most this many modules (keeps the module table bounded).
    pub const MAX_MODULES_PER_DEVICE: usize = 32;
}
