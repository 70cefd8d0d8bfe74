//! Cursor paging shared by every list: the cursor is the last id of the previous page.

use crate::domain::{limits, Invalid};

#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// Rows with an id greater than this come next.
    pub after: i64,
    pub limit: u64,
}

impl PageRequest {
    /// Validates the API's `cursor` and `limit` query values.
    pub fn parse(cursor: Option<&str>, limit: Option<u64>) -> Result<Self, Invalid> {
        let after = match cursor {
            None | Some("") => 0,
            Some(c) => c.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                Invalid::new("cursor", "must be a next_cursor value from an earlier page")
            })?,
        };
        let limit = limit.unwrap_or(limits::DEFAULT_PAGE_LIMIT);
        if limit == 0 || limit > limits::MAX_PAGE_LIMIT {
            return Err(Invalid::new(
                "limit",
                format!("must be 1 to {}", limits::MAX_PAGE_LIMIT),
            ));
        }
        Ok(Self { after, limit })
    }

    pub fn first(limit: u64) -> Self {
        Self { after: 0, limit }
    }
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Set when more rows may follow.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows fetched in id order.
    pub fn from_rows(mut rows: Vec<T>, req: PageRequest, id: impl Fn(&T) -> i64) -> Self {
        let more = rows.len() as u64 > req.limit;
        rows.truncate(req.limit as usize);
        let next_cursor = if more {
            rows.last().map(|r| id(r).to_string())
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}
