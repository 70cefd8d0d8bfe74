//! Wire types shared by every resource: pages and list queries. Resource DTOs live beside
//! their handlers; domain records are converted to them at the edge.

use crate::domain::Invalid;
use crate::store::{Page, PageRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One page of a list; pass `next_cursor` as `cursor` to get the next.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageDto<T: ToSchema> {
    pub items: Vec<T>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> PageDto<T> {
    pub fn from_page<U>(page: Page<U>, f: impl FnMut(U) -> T) -> Self {
        let page = page.map(f);
        Self {
            items: page.items,
            next_cursor: page.next_cursor,
        }
    }
}

/// Paging parameters of every list endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Items per page, 1 to 1000 (default 100).
    pub limit: Option<u64>,
}

impl PageQuery {
    pub fn request(&self) -> Result<PageRequest, Invalid> {
        PageRequest::parse(self.cursor.as_deref(), self.limit)
    }
}

/// RFC 3339 text of an optional timestamp.
pub fn ts(ms: Option<i64>) -> Option<String> {
    ms.map(crate::clock::rfc3339)
}
