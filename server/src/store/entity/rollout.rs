//! Entity of table `rollout` (see the migrations crate for its indexes).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rollout")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub tenant_id: i64,
    pub product_id: i64,
    pub package_id: i64,
    pub module: String,
    pub target_version: String,
    pub name: String,
    pub description: String,
    pub method: String,
    pub rollout_type: String,
    pub state: String,
    pub scope_kind: String,
    pub scope: String,
    pub device_list_id: Option<i64>,
    pub group_id: Option<i64>,
    pub source_versions: String,
    pub start_at: Option<i64>,
    pub end_at: Option<i64>,
    pub daily_repeat: bool,
    pub utc_offset_minutes: i32,
    pub push_mode: String,
    pub rate_kind: Option<String>,
    pub rate_base: Option<i32>,
    pub rate_factor_centi: Option<i32>,
    pub rate_max: Option<i32>,
    pub rate_threshold: Option<i32>,
    pub rate_count_on: Option<String>,
    pub max_concurrency: Option<i32>,
    pub retry_interval_minutes: Option<i32>,
    pub retry_max: Option<i32>,
    pub timeout_minutes: Option<i32>,
    pub retry_timeouts: bool,
    pub multi_module: bool,
    pub override_previous: bool,
    pub only_new_reports: bool,
    pub app_confirm: bool,
    pub download_protocol: String,
    pub tags: String,
    pub open_dynamic_package_id: Option<i64>,
    pub strategy_cancelled: bool,
    pub task_count: i64,
    pub created_by_key: Option<i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub rate_per_minute: Option<i32>,
    pub rate_next_threshold: Option<i64>,
    pub rate_bucket: i64,
    pub released_total: i64,
    pub succeeded_total: i64,
    pub ticked_at: Option<i64>,
    pub paused_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
