//! Page tokens that carry more than a sequence number (a search's rank, an
//! export's position) and must not be forged or replayed elsewhere: the
//! position is sealed with an HMAC-SHA256 tag over it and the request it
//! belongs to (tenant, caller, scope, query). A token edited by hand, or
//! one issued for another tenant, caller or query, fails to open, so a
//! client gets `InvalidArgument` instead of a page of something else.
//!
//! The position itself is not secret (it is a rank and a sequence number),
//! only tamper-evident. Tokens open on every replica that shares the key
//! and survive restarts, so a long export can resume where it stopped.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const PREFIX: &str = "s1.";
/// Tag bytes kept: 128 bits, ample for a token that grants nothing the
/// caller could not read anyway.
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error(
        "page_token was not issued for this request: pass next_page_token from the previous \
         response to the same query (same scope, same caller), or empty for the first page"
    )]
    NotIssuedHere,
    #[error("the page-token key must be at least 32 bytes, got {0}")]
    ShortKey(usize),
}

/// Seals and opens page tokens with one key.
#[derive(Clone)]
pub struct TokenSealer {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSealer(<key>)")
    }
}

impl TokenSealer {
    /// A sealer keyed by `key` (at least 32 bytes): replicas sharing it
    /// open each other's tokens.
    pub fn new(key: &[u8]) -> Result<Self, SealError> {
        if key.len() < 32 {
            return Err(SealError::ShortKey(key.len()));
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| SealError::ShortKey(0))?;
        Ok(Self { mac })
    }

    fn tag(&self, binding: &[&[u8]], position: &[u8]) -> Vec<u8> {
        let mut mac = self.mac.clone();
        for part in binding {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(position);
        mac.finalize().into_bytes()[..TAG_LEN].to_vec()
    }

    /// A token for `position` that opens only with the same `binding`.
    pub fn seal(&self, binding: &[&[u8]], position: &[u8]) -> String {
        format!(
            "{PREFIX}{}.{}",
            hex::encode(position),
            hex::encode(self.tag(binding, position))
        )
    }

    /// The position sealed in `token`, if this sealer issued it for the
    /// same `binding`. Compared in constant time.
    pub fn open(&self, binding: &[&[u8]], token: &str) -> Result<Vec<u8>, SealError> {
        let (position, tag) = token
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('.'))
            .ok_or(SealError::NotIssuedHere)?;
        let position = hex::decode(position).map_err(|_| SealError::NotIssuedHere)?;
        let tag = hex::decode(tag).map_err(|_| SealError::NotIssuedHere)?;
        let mut mac = self.mac.clone();
        for part in binding {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&position);
        mac.verify_truncated_left(&tag)
            .ok()
            .filter(|()| tag.len() == TAG_LEN)
            .map(|()| position)
            .ok_or(SealError::NotIssuedHere)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> TokenSealer {
        TokenSealer::new(&[byte; 32]).expect("a 32-byte key")
    }

    #[test]
    fn a_token_opens_for_the_request_it_was_issued_for() {
        let s = sealer(1);
        let binding: [&[u8]; 3] = [b"tenant-a", b"alice", b"hiring plan"];
        let token = s.seal(&binding, &[1, 2, 3, 4]);
        assert_eq!(s.open(&binding, &token), Ok(vec![1, 2, 3, 4]));
        // Another replica with the same key opens it too.
        assert_eq!(sealer(1).open(&binding, &token), Ok(vec![1, 2, 3, 4]));
    }

    #[test]
    fn forged_moved_or_foreign_tokens_do_not_open() {
        let s = sealer(1);
        let binding: [&[u8]; 3] = [b"tenant-a", b"alice", b"hiring plan"];
        let token = s.seal(&binding, &[1, 2, 3, 4]);
        let refused = Err(SealError::NotIssuedHere);
        // Another tenant, caller or query.
        assert_eq!(
            s.open(&[b"tenant-b", b"alice", b"hiring plan"], &token),
            refused
        );
        assert_eq!(
            s.open(&[b"tenant-a", b"bob", b"hiring plan"], &token),
            refused
        );
        assert_eq!(s.open(&[b"tenant-a", b"alice", b"hiring"], &token), refused);
        // Parts shifted between fields.
        assert_eq!(
            s.open(&[b"tenant-aalice", b"", b"hiring plan"], &token),
            refused
        );
        // Another key.
        assert_eq!(sealer(2).open(&binding, &token), refused);
        // The position edited by hand, the tag kept.
        let (_, tag) = token.rsplit_once('.').expect("a tag");
        assert_eq!(s.open(&binding, &format!("s1.01020305.{tag}")), refused);
        // A shortened tag, garbage, an old-style token.
        assert_eq!(s.open(&binding, &token[..token.len() - 2]), refused);
        for garbage in ["", "s1.", "s1..", "s1.zz.zz", "p1.20", "s1.01020304"] {
            assert_eq!(s.open(&binding, garbage), refused, "{garbage:?}");
        }
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(
            TokenSealer::new(b"too short").err(),
            Some(SealError::ShortKey(9))
        );
    }
}
