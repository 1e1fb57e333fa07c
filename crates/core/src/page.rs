//! Cursor pagination: `limit` (1..=100) and an opaque `next_cursor` that encodes the last ID seen.

use crate::error::{ApiError, ErrorCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 100;

/// The `limit` and `cursor` query parameters every list route takes.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 100 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
}

/// A validated page request: where to start and how many to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Return items strictly after this sort key.
    pub after: Option<String>,
    pub limit: u32,
}

impl PageQuery {
    pub fn cursor(&self) -> Result<Cursor, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::query("limit", format!("limit must be between 1 and {MAX_LIMIT}")));
        }
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(decode_cursor(c)?),
        };
        Ok(Cursor { after, limit })
    }
}

#[derive(Serialize, Deserialize)]
struct CursorToken {
    a: String,
}

fn decode_cursor(c: &str) -> Result<String, ApiError> {
    let bad = || ApiError::new(ErrorCode::InvalidCursor, "the cursor is not one this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let tok: CursorToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok(tok.a)
}

/// Makes the opaque cursor for "after this sort key".
pub fn encode_cursor(after: &str) -> String {
    let json = serde_json::to_vec(&CursorToken { a: after.to_owned() }).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// One page of results.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items on this page, at most `limit`.
    pub data: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only tells that more exist.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more { rows.last().map(|r| encode_cursor(&key(r))) } else { None };
        Page { data: rows, next_cursor }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { data: self.data.into_iter().map(f).collect(), next_cursor: self.next_cursor }
    }

    /// Like [`Page::map`], for conversions that can fail (stored data that does not parse).
    pub fn try_map<U, E>(self, f: impl FnMut(T) -> Result<U, E>) -> Result<Page<U>, E> {
        Ok(Page { data: self.data.into_iter().map(f).collect::<Result<_, E>>()?, next_cursor: self.next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let q = PageQuery { limit: Some(2), cursor: Some(encode_cursor("tnt_x")) };
        assert_eq!(q.cursor().unwrap(), Cursor { after: Some("tnt_x".into()), limit: 2 });
    }

    #[test]
    fn bad_limit_and_cursor_are_refused() {
        assert!(PageQuery { limit: Some(0), cursor: None }.cursor().is_err());
        assert!(PageQuery { limit: Some(101), cursor: None }.cursor().is_err());
        let e = PageQuery { limit: None, cursor: Some("!!".into()) }.cursor().unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidCursor);
    }

    #[test]
    fn page_knows_when_more_exist() {
        let p = Page::from_rows(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(p.data, vec![1, 2]);
        assert_eq!(decode_cursor(p.next_cursor.as_deref().unwrap()).unwrap(), "2");
        let p = Page::from_rows(vec![1, 2], 2, |n| n.to_string());
        assert!(p.next_cursor.is_none());
    }
}
