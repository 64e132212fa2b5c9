//! MMDS V2 session tokens: `PUT /latest/api/token` hands one out for a
//! lifetime the guest chooses; requests show it in `X-metadata-token`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Token lifetimes Firecracker (and EC2) accept, in seconds.
pub const TTL_RANGE: std::ops::RangeInclusive<u64> = 1..=21_600;
/// Live tokens kept at most: a guest asking for tokens in a loop makes the
/// oldest expire early rather than grow ember's memory.
const MAX_TOKENS: usize = 1024;
/// Random bytes per token (printed as hex).
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A lifetime outside [`TTL_RANGE`].
    #[error("Invalid time to live value provided for token: {0}. Please provide a value between 1 and 21600.")]
    Ttl(String),
    /// The kernel gave no randomness.
    #[error("cannot generate a token: {0}")]
    Random(String),
}

/// The tokens handed out and when each expires.
#[derive(Debug, Default)]
pub struct Tokens {
    expiry: HashMap<String, Instant>,
}

impl Tokens {
    /// A new token valid for `ttl` seconds (as the header spelled it) from `now`.
    pub fn generate(&mut self, ttl: &str, now: Instant) -> Result<String, Error> {
        let seconds = ttl
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|s| TTL_RANGE.contains(s))
            .ok_or_else(|| Error::Ttl(ttl.to_string()))?;
        let mut bytes = [0u8; TOKEN_BYTES];
        crate::random::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.expiry.retain(|_, expires| *expires > now);
        if self.expiry.len() >= MAX_TOKENS {
            let oldest = self
                .expiry
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(t, _)| t.clone());
            oldest.map(|t| self.expiry.remove(&t));
        }
        self.expiry
            .insert(token.clone(), now + Duration::from_secs(seconds));
        Ok(token)
    }

    /// Whether `token` was handed out and has not expired at `now`.
    pub fn is_valid(&self, token: &str, now: Instant) -> bool {
        self.expiry.get(token).is_some_and(|expires| *expires > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_for_their_lifetime_only() {
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let token = tokens.generate("60", now).expect("a valid ttl");
        assert_eq!(token.len(), 2 * TOKEN_BYTES);
        assert!(tokens.is_valid(&token, now + Duration::from_secs(59)));
        assert!(!tokens.is_valid(&token, now + Duration::from_secs(60)));
        assert!(!tokens.is_valid("0123", now));
        let other = tokens.generate("1", now).expect("a valid ttl");
        assert_ne!(token, other);
    }

    #[test]
    fn lifetimes_outside_the_range_are_refused() {
        let mut tokens = Tokens::default();
        for bad in ["0", "21601", "-1", "ten", ""] {
            assert_eq!(
                tokens.generate(bad, Instant::now()),
                Err(Error::Ttl(bad.to_string()))
            );
        }
    }

    #[test]
    fn a_token_flood_keeps_the_newest_within_the_cap() {
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let first = tokens.generate("100", now).expect("a token");
        let mut last = String::new();
        for _ in 0..MAX_TOKENS {
            last = tokens.generate("21600", now).expect("a token");
        }
        assert_eq!(tokens.expiry.len(), MAX_TOKENS);
        assert!(!tokens.is_valid(&first, now), "the earliest to expire went");
        assert!(tokens.is_valid(&last, now));
    }
}
