//! Paged reads: `?limit=N&after=CURSOR` on list routes. Items are ordered by their id; a page
//! holds the items after `after`, at most `limit` (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]), and `next` is the cursor of the following page (`null` on the last one). An
//! item present for the whole walk is returned exactly once, whatever is written meanwhile.

use super::ApiError;

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// Checks `limit`.
pub fn limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        ))),
    }
}

/// The page of `items` after `after`, ordered by `id`, and the next cursor.
pub fn page<T>(
    mut items: Vec<T>,
    id: impl Fn(&T) -> &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    items.sort_by(|a, b| id(a).cmp(id(b)));
    let start = match after {
        Some(c) => items.partition_point(|x| id(x) <= c),
        None => 0,
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let more = rest.len() > limit;
    rest.truncate(limit);
    let next = if more {
        rest.last().map(|x| id(x).to_string())
    } else {
        None
    };
    (rest, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once() {
        let items: Vec<String> = (0..25).map(|i| format!("{i:03}")).collect();
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (p, next) = page(items.clone(), |s| s.as_str(), after.as_deref(), 7);
            seen.extend(p);
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, items);
        assert!(limit(Some(0)).is_err() && limit(Some(MAX_LIMIT + 1)).is_err());
    }
}
