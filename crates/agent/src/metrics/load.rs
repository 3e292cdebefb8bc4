//! Load averages from `/proc/loadavg`.

/// The 1, 5 and 15 minute load averages.
pub fn parse(loadavg: &str) -> Option<[f32; 3]> {
    let mut fields = loadavg.split_ascii_whitespace().map(str::parse::<f32>);
    Some([
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn three_averages_are_read() {
        assert_eq!(
            super::parse("0.52 0.58 0.59 2/1203 42133\n"),
            Some([0.52, 0.58, 0.59])
        );
        assert_eq!(super::parse("0.52 junk"), None);
        assert_eq!(super::parse(""), None);
    }
}
