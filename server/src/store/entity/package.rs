//! Entity of table `package` (see the migrations crate for its indexes).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "package")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub tenant_id: i64,
    pub product_id: i64,
    pub module: String,
    pub version: String,
    pub kind: String,
    pub source_version: String,
    pub sign_method: String,
    pub status: String,
    pub description: String,
    pub created_at: i64,
    pub withdrawn_at: Option<i64>,
    pub withdrawn_reason: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
