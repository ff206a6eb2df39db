//! Keyset pagination: a page token is an opaque cursor over a monotonically
//! increasing sequence column, so pages stay stable while rows are added.

/// Page size when the client sends 0.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: i64 = 100;

const TOKEN_PREFIX: &str = "p1.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PagingError {
    #[error(
        "page_size must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), got {0}"
    )]
    BadPageSize(i32),
    #[error(
        "page_token is not one this API issued; pass next_page_token from the previous response, or empty for the first page"
    )]
    BadPageToken,
}

/// A validated page request: how many rows, and after which cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub size: i64,
    pub after: Option<i64>,
}

impl Page {
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, PagingError> {
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > 0 && i64::from(n) <= MAX_PAGE_SIZE => i64::from(n),
            n => return Err(PagingError::BadPageSize(n)),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let cursor = page_token
                .strip_prefix(TOKEN_PREFIX)
                .and_then(|rest| rest.parse::<i64>().ok())
                .filter(|c| *c >= 0)
                .ok_or(PagingError::BadPageToken)?;
            Some(cursor)
        };
        Ok(Self { size, after })
    }

    /// How many rows to fetch: one more than the page, to learn whether a
    /// next page exists without a count query.
    pub fn fetch_limit(&self) -> i64 {
        self.size + 1
    }

    /// Trims the extra row fetched by [`Page::fetch_limit`] and returns the
    /// next page token (empty on the last page). `cursor` reads a row's
    /// sequence value.
    pub fn finish<T>(&self, rows: &mut Vec<T>, cursor: impl Fn(&T) -> i64) -> String {
        let limit = usize::try_from(self.size).unwrap_or(usize::MAX);
        if rows.len() > limit {
            rows.truncate(limit);
            rows.last()
                .map(|row| token(cursor(row)))
                .unwrap_or_default()
        } else {
            String::new()
        }
    }
}

fn token(cursor: i64) -> String {
    format!("{TOKEN_PREFIX}{cursor}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(
            Page::parse(0, "").unwrap(),
            Page {
                size: 50,
                after: None
            }
        );
        assert_eq!(Page::parse(100, "").unwrap().size, 100);
        assert_eq!(Page::parse(101, ""), Err(PagingError::BadPageSize(101)));
        assert_eq!(Page::parse(-1, ""), Err(PagingError::BadPageSize(-1)));
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_rejected() {
        let page = Page::parse(2, "").unwrap();
        let mut rows = vec![10_i64, 20, 30];
        let next = page.finish(&mut rows, |r| *r);
        assert_eq!(rows, vec![10, 20]);
        assert_eq!(Page::parse(2, &next).unwrap().after, Some(20));
        assert_eq!(Page::parse(2, "20"), Err(PagingError::BadPageToken));
        assert_eq!(Page::parse(2, "p1.-4"), Err(PagingError::BadPageToken));
    }

    #[test]
    fn last_page_has_no_token() {
        let page = Page::parse(5, "").unwrap();
        let mut rows = vec![1_i64, 2];
        assert_eq!(page.finish(&mut rows, |r| *r), "");
        assert_eq!(rows.len(), 2);
    }
}
