//! What tetherd refuses from a device because it is too large. The limits
//! themselves live beside the message they bound (`DeviceStatus::MAX_*`,
//! `ActionEvent::MAX_*`, `HostMetrics::MAX_*`) so the device contract can name
//! them; this is the error they share.

/// A device-sent field, or a whole payload, beyond its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {actual} bytes, more than the {max} allowed")]
pub struct TooLarge {
    pub field: &'static str,
    pub max: usize,
    pub actual: usize,
}

/// `Err` naming `field` if `actual` is over `max`.
pub fn check(field: &'static str, actual: usize, max: usize) -> Result<(), TooLarge> {
    if actual > max {
        Err(TooLarge { field, max, actual })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_itself_is_allowed() {
        assert!(check("x", 3, 3).is_ok());
        let err = check("agentVersion", 4, 3).expect_err("over");
        assert_eq!(
            err.to_string(),
            "agentVersion is 4 bytes, more than the 3 allowed"
        );
    }
}
