//! Waiting for a condition with a deadline, instead of sleeping and hoping.

use std::future::Future;
use std::time::Duration;

use anyhow::bail;

/// Polls `check` every 50 ms until it returns `Some`, or fails after `deadline`
/// with `what` and the last state seen.
pub async fn wait_until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if tokio::time::Instant::now() >= end {
            match last_error {
                Some(error) => {
                    bail!("timed out after {deadline:?} waiting for {what}; last error: {error:#}")
                }
                None => bail!("timed out after {deadline:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
