//! Cursor paging shared by the client API's lists: a `limit` of 1 to 200
//! (default 50), one extra row fetched to know whether another page follows,
//! and the last item's id as the next cursor.

use crate::domain::Invalid;

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
