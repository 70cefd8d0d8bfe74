//! Entity of table `policy`: one uploaded version of a tenant's policy (W1).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "policy")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    pub version: i32,
    pub digest: String,
    pub hooks: String,
    pub size: i64,
    #[sea_orm(column_type = "Blob")]
    pub component: Vec<u8>,
    pub created_by_key: Option<i64>,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
