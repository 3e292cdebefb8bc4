//! CPU use from `/proc/stat`: busy and total jiffies per line, turned
//! into percentages between two readings.

/// Jiffies of one `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// The `cpu` lines of `/proc/stat`: the total first, then each core in
/// the file's order. Guest time is already counted in user time, so only
/// the first eight columns (user … steal) add up to the total; idle and
/// iowait are not busy.
pub fn parse(stat: &str) -> Vec<CpuTimes> {
    stat.lines()
        .filter(|line| line.starts_with("cpu"))
        .filter_map(|line| {
            let values: Vec<u64> = line
                .split_ascii_whitespace()
                .skip(1)
                .take(8)
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            if values.len() < 4 {
                return None;
            }
            let total: u64 = values.iter().sum();
            let idle = values[3] + values.get(4).copied().unwrap_or(0);
            Some(CpuTimes {
                busy: total.saturating_sub(idle),
                total,
            })
        })
        .collect()
}

/// Percent busy of each line between `before` and `now`, to one decimal.
/// Lines that appeared since (a core brought online) count from zero.
pub fn percent(now: &[CpuTimes], before: &[CpuTimes]) -> Vec<f32> {
    now.iter()
        .enumerate()
        .map(|(i, now)| {
            let before = before.get(i).copied().unwrap_or_default();
            let total = now.total.saturating_sub(before.total);
            let busy = now.busy.saturating_sub(before.busy).min(total);
            if total == 0 {
                0.0
            } else {
                ((busy as f64 * 1000.0 / total as f64).round() / 10.0) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
cpu  100 0 100 700 100 0 0 0 0 0
cpu0 50 0 50 350 50 0 0 0 0 0
cpu1 50 0 50 350 50 0 0 0 0 0
intr 12345 0 0
ctxt 99
";
    const AFTER: &str = "\
cpu  250 0 150 800 100 0 0 0 50 0
cpu0 150 0 100 350 50 0 0 0 50 0
cpu1 100 0 50 450 50 0 0 0 0 0
intr 12399 0 0
";

    #[test]
    fn busy_share_between_two_readings_per_core_and_in_total() {
        let before = parse(BEFORE);
        assert_eq!(
            before[0],
            CpuTimes {
                busy: 200,
                total: 1000
            }
        );
        // Total: 200 busy of 300 jiffies; core 0: 150 of 150; core 1: 50 of 150.
        assert_eq!(percent(&parse(AFTER), &before), [66.7, 100.0, 33.3]);
    }

    #[test]
    fn a_first_reading_or_a_new_core_counts_from_zero() {
        assert_eq!(percent(&parse(BEFORE), &[]), [20.0, 20.0, 20.0]);
        assert_eq!(percent(&parse(BEFORE), &parse(BEFORE)), [0.0, 0.0, 0.0]);
        assert!(parse("intr 1 2 3\n").is_empty());
    }
}
