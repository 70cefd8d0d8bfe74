//! sea-orm entities, one per table; only the store module sees them.

pub mod api_key;
pub mod asset_node;
pub mod asset_node_device;
pub mod asset_tree;
pub mod device;
pub mod device_attribute;
pub mod device_group;
pub mod device_list;
pub mod device_list_member;
pub mod device_module;
pub mod device_tag;
pub mod group_member;
pub mod package;
pub mod package_file;
pub mod policy;
pub mod product;
pub mod rollout;
pub mod rollout_event;
pub mod server_setting;
pub mod task;
pub mod task_event;
pub mod tenant;
pub mod version_report;
