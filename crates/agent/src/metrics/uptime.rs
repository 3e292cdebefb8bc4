//! Seconds since boot from `/proc/uptime`.

pub fn parse(uptime: &str) -> Option<u64> {
    let seconds: f64 = uptime.split_ascii_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_seconds_since_boot() {
        assert_eq!(super::parse("350735.47 234388.90\n"), Some(350_735));
        assert_eq!(super::parse("soon"), None);
    }
}
