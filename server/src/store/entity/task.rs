//! Entity of table `task` (see the migrations crate for its indexes).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "task")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub rollout_id: i64,
    pub device_id: i64,
    pub state: String,
    pub retries: i32,
    pub progress: i32,
    pub failure_reason: Option<String>,
    pub last_message: Option<String>,
    pub late_success_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub due_at: Option<i64>,
    pub pushed_at: Option<i64>,
    pub timeout_minutes: Option<i32>,
    pub wave: i16,
    pub not_before: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
