//! Paging shared by the lists. The client API pages with a cursor: a `limit`
//! of 1 to 200 (default 50), one extra row fetched to know whether another
//! page follows, and the last item's id as the next cursor. The admin lists
//! page by number ([`numbered`]).

use super::models::PageQuery;
use crate::domain::Invalid;

/// The highest page number the admin lists accept: far beyond any real list,
/// and low enough that `(page - 1) * limit` stays a small number.
pub const MAX_PAGE: u64 = 1_000_000;

/// `page` (1 to [`MAX_PAGE`], default 1) and `limit` (1 to 100, default 20)
/// of a numbered page, validated.
pub fn numbered(query: &PageQuery) -> Result<(u64, u64), Invalid> {
    let page = query.page.unwrap_or(1);
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(Invalid {
            field: "page",
            message: format!("must be 1 to {MAX_PAGE}"),
        });
    }
    if !(1..=100).contains(&limit) {
        return Err(Invalid {
            field: "limit",
            message: "must be 1 to 100".to_owned(),
        });
    }
    Ok((page, limit))
}

/// The page size asked for, validated.
pub fn limit(raw: Option<u64>) -> Result<u64, Invalid> {
    let limit = raw.unwrap_or(50);
    if (1..=200).contains(&limit) {
        Ok(limit)
    } else {
        Err(Invalid {
            field: "limit",
            message: "must be 1 to 200".to_owned(),
        })
    }
}

/// Turns `limit + 1` fetched rows into at most `limit` views and the cursor
/// of the next page (`None` on the last one).
pub fn page<T, V>(
    rows: &[T],
    limit: u64,
    view: impl Fn(&T) -> V,
    cursor: impl Fn(&V) -> String,
) -> (Vec<V>, Option<String>) {
    let more = rows.len() as u64 > limit;
    let page: Vec<V> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(view)
        .collect();
    let next = more.then(|| page.last().map(&cursor)).flatten();
    (page, next)
}
