//! systemd-timesyncd's configuration (`timesyncd.conf`): an INI file
//! with one `[Time]` section of the keys `man timesyncd.conf` lists.

use super::Problem;

/// The keys of `[Time]`, and whether each is a time span (else a list of
/// servers).
const KEYS: [(&str, bool); 7] = [
    ("NTP", false),
    ("FallbackNTP", false),
    ("RootDistanceMaxSec", true),
    ("PollIntervalMinSec", true),
    ("PollIntervalMaxSec", true),
    ("ConnectionRetrySec", true),
    ("SaveIntervalSec", true),
];
/// timesyncd's lower bound for the poll interval.
const MIN_POLL_SECONDS: u64 = 16;

/// Checks a timesyncd.conf.
pub fn check(text: &str) -> Result<(), Problem> {
    let mut section: Option<&str> = None;
    let mut poll_min = None;
    let mut poll_max = None;
    let mut any_time = false;
    for (i, raw) in text.lines().enumerate() {
        let at = format!("line {}", i + 1);
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| Problem::new(&at, format!("{line:?} is not a section header")))?;
            if name != "Time" {
                return Err(Problem::new(
                    at,
                    format!("section [{name}]: timesyncd.conf has only [Time]"),
                ));
            }
            section = Some("Time");
            any_time = true;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(Problem::new(at, format!("{line:?} is not KEY=VALUE")));
        };
        let (key, value) = (key.trim(), value.trim());
        if section.is_none() {
            return Err(Problem::new(
                at,
                format!("{key} is outside the [Time] section"),
            ));
        }
        let Some((_, is_span)) = KEYS.iter().find(|(known, _)| *known == key) else {
            let known: Vec<_> = KEYS.iter().map(|(k, _)| *k).collect();
            return Err(Problem::new(
                at,
                format!("unknown key {key:?}; [Time] takes {}", known.join(", ")),
            ));
        };
        let at = format!("{at} ({key})");
        if *is_span {
            let seconds = time_span(value).map_err(|message| Problem::new(&at, message))?;
            match key {
                "PollIntervalMinSec" => poll_min = Some((seconds, at)),
                "PollIntervalMaxSec" => poll_max = Some((seconds, at)),
                _ => {}
            }
        } else {
            for server in value.split_whitespace() {
                check_server(server).map_err(|message| Problem::new(&at, message))?;
            }
        }
    }
    if !any_time {
        return Err(Problem::new("", "no [Time] section"));
    }
    if let Some((min, at)) = &poll_min
        && *min < MIN_POLL_SECONDS
    {
        return Err(Problem::new(
            at,
            format!("{min}s is below timesyncd's minimum of {MIN_POLL_SECONDS}s"),
        ));
    }
    if let (Some((min, _)), Some((max, at))) = (&poll_min, &poll_max)
        && max < min
    {
        return Err(Problem::new(
            at,
            format!("{max}s is less than PollIntervalMinSec ({min}s)"),
        ));
    }
    Ok(())
}

/// A systemd time span in whole seconds: a bare number is seconds,
/// else humantime's units (`30s`, `5min`, `1h 30min`).
fn time_span(value: &str) -> Result<u64, String> {
    if let Ok(seconds) = value.parse::<u64>() {
        return Ok(seconds);
    }
    humantime::parse_duration(value)
        .map(|duration| duration.as_secs())
        .map_err(|err| format!("{value:?} is not a time span ({err}); write e.g. 32, 64s or 5min"))
}

/// A host name or an IP address.
fn check_server(server: &str) -> Result<(), String> {
    if server.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let valid = server.len() <= 253
        && server.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{server:?} is neither a host name nor an IP address"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usual_file_passes() {
        check(
            "# site NTP\n[Time]\nNTP=ntp1.example.com 192.0.2.1\nFallbackNTP=pool.ntp.org\n\
             RootDistanceMaxSec=5\nPollIntervalMinSec=32\nPollIntervalMaxSec=2048s\n",
        )
        .expect("valid");
    }

    #[test]
    fn problems_name_their_line() {
        let problem = |text: &str| check(text).expect_err(text).to_string();
        assert!(problem("[Time]\nNTPServer=a\n").starts_with("line 2: unknown key \"NTPServer\""));
        assert!(problem("NTP=a\n").starts_with("line 1: NTP is outside"));
        assert!(problem("[Network]\n").starts_with("line 1: section [Network]"));
        assert!(problem("[Time]\nNTP=bad_host!\n").starts_with("line 2 (NTP): \"bad_host!\""));
        assert!(
            problem("[Time]\nPollIntervalMinSec=often\n")
                .starts_with("line 2 (PollIntervalMinSec): \"often\" is not a time span")
        );
        assert!(problem("[Time]\nPollIntervalMinSec=8\n").contains("minimum of 16s"));
        assert!(
            problem("[Time]\nPollIntervalMinSec=64\nPollIntervalMaxSec=32\n")
                .starts_with("line 3 (PollIntervalMaxSec): 32s is less than")
        );
        assert_eq!(problem("# nothing\n"), "no [Time] section");
        assert!(problem("[Time]\nNTP\n").contains("is not KEY=VALUE"));
    }
}
