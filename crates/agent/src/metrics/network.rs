//! Network traffic from `/proc/net/dev`: counters since each interface
//! came up; samples carry the differences.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
}

/// The counters of each interface but loopback.
pub fn parse(dev: &str) -> BTreeMap<String, NetCounters> {
    dev.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" || name.is_empty() {
                return None;
            }
            let values: Vec<u64> = rest
                .split_ascii_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            if values.len() < 16 {
                return None;
            }
            Some((
                name.to_owned(),
                NetCounters {
                    rx_bytes: values[0],
                    rx_packets: values[1],
                    rx_errors: values[2],
                    tx_bytes: values[8],
                    tx_packets: values[9],
                    tx_errors: values[10],
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0
  eth0: 9876543   54321    2    0    0     0          0        10  1234567   4321    1    0    0     0       0          0
wlan0:1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16
";

    #[test]
    fn every_interface_but_loopback() {
        let net = parse(DEV);
        assert_eq!(net.keys().collect::<Vec<_>>(), ["eth0", "wlan0"]);
        assert_eq!(
            net["eth0"],
            NetCounters {
                rx_bytes: 9_876_543,
                rx_packets: 54_321,
                rx_errors: 2,
                tx_bytes: 1_234_567,
                tx_packets: 4_321,
                tx_errors: 1,
            }
        );
        assert_eq!(net["wlan0"].tx_bytes, 9);
    }
}
