//! Memory and swap from `/proc/meminfo`.

use tether_proto::metrics::MemorySample;

/// Totals in bytes. `MemAvailable` is the kernel's estimate of what new
/// work can use without swapping; kernels before 3.14 lack it, where
/// free, buffers and page cache stand in.
pub fn parse(meminfo: &str) -> Option<MemorySample> {
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_ascii_whitespace().next()?.parse().ok()?;
            Some(kib.saturating_mul(1024))
        })
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable").unwrap_or_else(|| {
        field("MemFree").unwrap_or(0) + field("Buffers").unwrap_or(0) + field("Cached").unwrap_or(0)
    });
    Some(MemorySample {
        t: total,
        a: available.min(total),
        st: field("SwapTotal").unwrap_or(0),
        sf: field("SwapFree").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_read_in_bytes() {
        let text = "MemTotal:        8000000 kB\nMemFree:  1000 kB\nMemAvailable:    6000000 kB\n\
                    Buffers: 1 kB\nSwapTotal:       2000 kB\nSwapFree:        500 kB\n";
        assert_eq!(
            parse(text),
            Some(MemorySample {
                t: 8_192_000_000,
                a: 6_144_000_000,
                st: 2_048_000,
                sf: 512_000,
            })
        );
    }

    #[test]
    fn old_kernels_without_mem_available_are_estimated() {
        let text = "MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 5 kB\nCached: 20 kB\n";
        assert_eq!(parse(text).map(|m| (m.a, m.st)), Some((35 * 1024, 0)));
        assert_eq!(parse("MemFree: 10 kB\n"), None);
    }
}
