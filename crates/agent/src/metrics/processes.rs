//! Processes running: the numeric entries of `/proc`.

/// How many of `names` (entries of `/proc`) are process ids.
pub fn count<'a>(names: impl IntoIterator<Item = &'a str>) -> u32 {
    let count = names
        .into_iter()
        .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_process_ids_count() {
        assert_eq!(
            super::count(["1", "42", "self", "cpuinfo", "1234567", "", "7a"]),
            3
        );
    }
}
