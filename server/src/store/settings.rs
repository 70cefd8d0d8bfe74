//! Server-wide settings kept in the database, shared by every process on it.

use super::entity::server_setting;
use super::{Store, StoreResult};
use sea_orm::{EntityTrait, Set};

impl Store {
    /// Returns the setting `name`, creating it with `make()` on first use. Safe when several
    /// processes start at once: the first insert wins and everyone reads the winner.
    pub async fn setting_or_init(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> StoreResult<String> {
        if let Some(row) = server_setting::Entity::find_by_id(name.to_owned())
            .one(self.db())
            .await?
        {
            return Ok(row.value);
        }
        let row = server_setting::ActiveModel {
            name: Set(name.to_owned()),
            value: Set(make()),
        };
        let insert = server_setting::Entity::insert(row)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(server_setting::Column::Name)
                    .do_nothing()
                    .to_owned(),
            )
            .do_nothing()
            .exec(self.db())
            .await;
        insert?;
        let row = server_setting::Entity::find_by_id(name.to_owned())
            .one(self.db())
            .await?
            .ok_or(super::StoreError::NotFound("setting"))?;
        Ok(row.value)
    }
}
