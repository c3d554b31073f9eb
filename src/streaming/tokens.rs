//! Single-use, short-lived tokens that stand for a validated streaming request.
//!
//! A CRI Exec/Attach/PortForward call validates its request and parks it here; the URL
//! it returns names the token. The HTTP request that presents the token takes the
//! request out, so a token works once, and only within its time to live.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

/// How many requests may wait for their client at once, as kubelet's streaming cache.
pub const MAX_IN_FLIGHT: usize = 1000;

/// Parked requests by token.
pub struct Tokens<T> {
    ttl: Duration,
    parked: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T> Tokens<T> {
    /// An empty cache whose tokens live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Tokens {
            ttl,
            parked: Mutex::new(HashMap::new()),
        }
    }

    /// Parks `request` under a fresh token (128 random bits, URL-safe), or gives it back
    /// when [`MAX_IN_FLIGHT`] requests already wait.
    pub fn issue(&self, request: T) -> Result<String, T> {
        let now = Instant::now();
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        parked.retain(|_, (expires, _)| *expires > now);
        if parked.len() >= MAX_IN_FLIGHT {
            return Err(request);
        }
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
        parked.insert(token.clone(), (now + self.ttl, request));
        Ok(token)
    }

    /// Takes the request parked under `token` if it has not expired; either way the
    /// token is spent.
    pub fn redeem(&self, token: &str) -> Option<T> {
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, request) = parked.remove(token)?;
        (expires > Instant::now()).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_works_once() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let t = tokens.issue(7).unwrap();
        assert!(t.len() >= 22, "{t}");
        assert!(
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(tokens.redeem(&t), Some(7));
        assert_eq!(tokens.redeem(&t), None);
        assert_eq!(tokens.redeem("nonsense"), None);
    }

    #[test]
    fn tokens_are_distinct() {
        let tokens = Tokens::new(Duration::from_secs(60));
        let a = tokens.issue(1).unwrap();
        let b = tokens.issue(2).unwrap();
        assert_ne!(a, b);
        assert_eq!(tokens.redeem(&b), Some(2));
        assert_eq!(tokens.redeem(&a), Some(1));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let tokens = Tokens::new(Duration::from_millis(10));
        let t = tokens.issue(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(tokens.redeem(&t), None);
    }

    #[test]
    fn too_many_waiting_requests_are_refused_until_they_expire() {
        let tokens = Tokens::new(Duration::from_millis(50));
        for i in 0..MAX_IN_FLIGHT {
            tokens.issue(i).unwrap();
        }
        assert_eq!(tokens.issue(9999), Err(9999));
        std::thread::sleep(Duration::from_millis(60));
        assert!(tokens.issue(1).is_ok());
    }
}
