//! A ServiceAccount token requested once and shared until two thirds of
//! its life are gone: a burst of requests costs one TokenRequest.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::KubeError;

/// The current token of one account; cheap to clone, clones share it.
#[derive(Debug, Clone, Default)]
pub struct TokenCache(Arc<Mutex<Option<Cached>>>);

#[derive(Debug)]
struct Cached {
    token: String,
    renew_at: Instant,
}

impl TokenCache {
    /// The kept token, or a new one from `issue` (valid for `life`), kept.
    pub async fn get_or_issue<Issue>(
        &self,
        life: Duration,
        issue: Issue,
    ) -> Result<String, KubeError>
    where
        Issue: Future<Output = Result<String, KubeError>>,
    {
        let now = Instant::now();
        let cached = self.0.lock().ok().and_then(|c| {
            c.as_ref()
                .filter(|c| c.renew_at > now)
                .map(|c| c.token.clone())
        });
        if let Some(token) = cached {
            return Ok(token);
        }
        let token = issue.await?;
        if let Ok(mut cache) = self.0.lock() {
            *cache = Some(Cached {
                token: token.clone(),
                renew_at: now + life * 2 / 3,
            });
        }
        Ok(token)
    }

    /// Forgets the token (its account was recreated, which revoked it).
    pub fn forget(&self) {
        if let Ok(mut cache) = self.0.lock() {
            *cache = None;
        }
    }
}
