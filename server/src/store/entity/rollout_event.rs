//! Entity of table `rollout_event` (see the migrations crate for its indexes).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rollout_event")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub tenant_id: i64,
    pub rollout_id: i64,
    pub at: i64,
    pub event: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub tasks: Option<i64>,
    pub cause: String,
    pub actor: Option<String>,
    pub detail: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
