//! The syslog listener: the agent takes the place of syslogd (seed 003) on
//! a unix datagram socket like `/dev/log`, on UDP and on TCP (RFC 6587:
//! octet counting or newline framing), and turns each message into a log
//! record.
//!
//! The parser is pure: RFC 5424 and RFC 3164 (BSD, also the local form
//! glibc's `syslog()` writes to `/dev/log`, without a host name). Nothing is
//! dropped for its form: what cannot be parsed is kept whole as the message,
//! dated when it arrived and marked `malformed` with the reason; a message
//! longer than tetherd takes is cut and marked `truncated` with its length.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use tether_proto::telemetry::LogRecord;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, UdpSocket, UnixDatagram};

use super::queue::Inlet;
use super::{LogsError, truncate};

/// Mode of the syslog socket: every local process may log, as with
/// syslogd's `/dev/log`; nobody may read from it but the agent.
pub const SOCKET_MODE: u32 = 0o666;
/// Largest datagram or frame read; longer ones are cut to this before the
/// message is cut to what tetherd takes.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Most syslog TCP connections open at once (each holds up to a frame).
pub const MAX_TCP_CONNECTIONS: usize = 64;
/// Priority of a message without a `<PRI>` (RFC 3164 4.3.3: user.notice).
const DEFAULT_PRIORITY: u8 = 5;
/// Longest tag taken as one (RFC 3164 says 32; some senders write more).
const MAX_TAG_CHARS: usize = 48;

/// Syslog facility names by number (RFC 5424 §6.2.1); the journal's
/// `SYSLOG_FACILITY` uses the same numbers.
pub(super) const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Parses one syslog message received at `received` (device clock); BSD
/// timestamps, which carry neither year nor zone, are read in `zone` and
/// the year of `received`.
pub fn parse<Tz: TimeZone>(bytes: &[u8], received: DateTime<Utc>, zone: &Tz) -> LogRecord {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches(['\n', '\r', '\0']);
    let mut record = LogRecord {
        at: received,
        priority: DEFAULT_PRIORITY,
        unit: String::new(),
        message: String::new(),
        fields: BTreeMap::new(),
    };
    let rest = match pri(text) {
        Pri::Valid(pri, rest) => {
            record.priority = pri & 7;
            record
                .fields
                .insert("facility".into(), FACILITIES[usize::from(pri >> 3)].into());
            rest
        }
        Pri::Missing => text,
        Pri::Invalid(reason) => {
            return malformed(record, text, reason);
        }
    };
    let parsed = if let Some(rest) = rest.strip_prefix("1 ") {
        rfc5424(&mut record, rest)
    } else {
        rfc3164(&mut record, rest, received, zone);
        Ok(())
    };
    if let Err(reason) = parsed {
        return malformed(record, text, reason);
    }
    let (message, cut) = truncate(std::mem::take(&mut record.message));
    record.message = message;
    if let Some(length) = cut {
        record.fields.insert("truncated".into(), length.to_string());
    }
    record
}

/// The whole input as the message, dated when it arrived.
fn malformed(mut record: LogRecord, text: &str, reason: String) -> LogRecord {
    record.fields.insert("malformed".into(), reason);
    let (message, cut) = truncate(text.to_owned());
    record.message = message;
    if let Some(length) = cut {
        record.fields.insert("truncated".into(), length.to_string());
    }
    record
}

enum Pri<'a> {
    Valid(u8, &'a str),
    Missing,
    Invalid(String),
}

fn pri(text: &str) -> Pri<'_> {
    let Some(rest) = text.strip_prefix('<') else {
        return Pri::Missing;
    };
    let Some(close) = rest.find('>').filter(|&i| (1..=3).contains(&i)) else {
        return Pri::Invalid("no <PRI> of 1 to 3 digits closed by '>'".into());
    };
    match rest[..close].parse::<u8>() {
        Ok(pri) if pri <= 191 && rest[..close].bytes().all(|b| b.is_ascii_digit()) => {
            Pri::Valid(pri, &rest[close + 1..])
        }
        _ => Pri::Invalid(format!(
            "PRI {:?} is not a number from 0 to 191",
            &rest[..close]
        )),
    }
}

/// Takes the next space-separated field of `rest`.
fn field<'a>(rest: &mut &'a str, name: &str) -> Result<&'a str, String> {
    if rest.is_empty() {
        return Err(format!("RFC 5424 message ends before its {name}"));
    }
    let (value, after) = rest.split_once(' ').unwrap_or((rest, ""));
    *rest = after;
    Ok(value)
}

/// `VERSION` already taken: `TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]`.
fn rfc5424(record: &mut LogRecord, mut rest: &str) -> Result<(), String> {
    let timestamp = field(&mut rest, "TIMESTAMP")?;
    let hostname = field(&mut rest, "HOSTNAME")?;
    let app_name = field(&mut rest, "APP-NAME")?;
    let procid = field(&mut rest, "PROCID")?;
    let msgid = field(&mut rest, "MSGID")?;
    // RFC 5424 6.2's bounds; the unit, at least, must stay small.
    for (name, value, max) in [
        ("HOSTNAME", hostname, 255),
        ("APP-NAME", app_name, 48),
        ("PROCID", procid, 128),
        ("MSGID", msgid, 32),
    ] {
        if value.len() > max {
            return Err(format!("{name} is longer than {max} characters"));
        }
    }
    if rest.is_empty() {
        return Err("RFC 5424 message ends before its STRUCTURED-DATA".into());
    }
    let message = if let Some(after) = rest.strip_prefix('-') {
        after
    } else {
        structured_data(rest, &mut record.fields)?
    };
    let message = match message.strip_prefix(' ') {
        Some(message) => message,
        None if message.is_empty() => message,
        None => return Err("no space after STRUCTURED-DATA".into()),
    };
    if timestamp != "-" {
        match DateTime::parse_from_rfc3339(timestamp) {
            Ok(at) => record.at = at.with_timezone(&Utc),
            Err(e) => {
                record
                    .fields
                    .insert("badTimestamp".into(), format!("{timestamp:?}: {e}"));
            }
        }
    }
    for (key, value) in [("hostname", hostname), ("pid", procid), ("msgid", msgid)] {
        if value != "-" {
            record.fields.insert(key.into(), value.into());
        }
    }
    if app_name != "-" {
        record.unit = app_name.into();
    }
    record.fields.insert("format".into(), "rfc5424".into());
    record.message = message.strip_prefix('\u{feff}').unwrap_or(message).into();
    Ok(())
}

/// Parses `[id k="v" …]…` into `sd.ID.K` fields; returns what follows.
fn structured_data<'a>(
    mut rest: &'a str,
    fields: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    let bad = |what: &str| format!("bad STRUCTURED-DATA: {what}");
    while let Some(element) = rest.strip_prefix('[') {
        let id_end = element
            .find([' ', ']'])
            .ok_or_else(|| bad("element not closed"))?;
        let id = &element[..id_end];
        if id.is_empty() {
            return Err(bad("element without an SD-ID"));
        }
        let mut cursor = &element[id_end..];
        loop {
            cursor = cursor.trim_start_matches(' ');
            if let Some(after) = cursor.strip_prefix(']') {
                rest = after;
                break;
            }
            let eq = cursor
                .find('=')
                .ok_or_else(|| bad("parameter without '='"))?;
            let name = &cursor[..eq];
            let value_start = cursor[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| bad("parameter value not quoted"))?;
            let mut value = String::new();
            let mut chars = value_start.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c @ ('"' | '\\' | ']'))) => value.push(c),
                        Some((_, c)) => {
                            value.push('\\');
                            value.push(c);
                        }
                        None => return Err(bad("value not closed")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => return Err(bad("value not closed")),
                }
            };
            fields.insert(format!("sd.{id}.{name}"), value);
            cursor = &value_start[end + 1..];
        }
    }
    Ok(rest)
}

/// BSD syslog: `[TIMESTAMP ][HOSTNAME ]TAG[PID]: MSG`; every part may be
/// missing, then the rest is the message.
fn rfc3164<Tz: TimeZone>(record: &mut LogRecord, rest: &str, received: DateTime<Utc>, zone: &Tz) {
    record.fields.insert("format".into(), "rfc3164".into());
    let (timestamp, rest) = bsd_timestamp(rest, received, zone);
    let dated = timestamp.is_some();
    if let Some(at) = timestamp {
        record.at = at;
    }
    let (hostname, tag, message) = match tag(rest) {
        Some((tag, pid, message)) => (None, Some((tag, pid)), message),
        // A host name comes only after a timestamp.
        None if dated => match rest.split_once(' ') {
            Some((host, after)) if !host.is_empty() => match tag(after) {
                Some((tag, pid, message)) => (Some(host), Some((tag, pid)), message),
                None => (Some(host), None, after),
            },
            _ => (None, None, rest),
        },
        None => (None, None, rest),
    };
    if let Some(host) = hostname {
        record.fields.insert("hostname".into(), host.into());
    }
    if let Some((tag, pid)) = tag {
        record.unit = tag.into();
        if let Some(pid) = pid {
            record.fields.insert("pid".into(), pid.into());
        }
    }
    record.message = message.into();
}

/// `TAG[PID]: MSG` or `TAG: MSG`.
fn tag(rest: &str) -> Option<(&str, Option<&str>, &str)> {
    let end = rest.find([' ', ':', '['])?;
    let tag = &rest[..end];
    if tag.is_empty() || tag.chars().count() > MAX_TAG_CHARS {
        return None;
    }
    let mut after = &rest[end..];
    let mut pid = None;
    if let Some(bracketed) = after.strip_prefix('[') {
        let close = bracketed.find(']')?;
        pid = Some(&bracketed[..close]);
        after = &bracketed[close + 1..];
    }
    let message = after.strip_prefix(':')?;
    Some((tag, pid, message.strip_prefix(' ').unwrap_or(message)))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Mmm dd hh:mm:ss ` (in `zone`, year of `received`, or the year before
/// if that would be more than a day ahead), or an RFC 3339 timestamp.
fn bsd_timestamp<'a, Tz: TimeZone>(
    rest: &'a str,
    received: DateTime<Utc>,
    zone: &Tz,
) -> (Option<DateTime<Utc>>, &'a str) {
    if let Some((first, after)) = rest.split_once(' ')
        && first.len() >= 19
        && first.as_bytes()[4] == b'-'
        && let Ok(at) = DateTime::parse_from_rfc3339(first)
    {
        return (Some(at.with_timezone(&Utc)), after);
    }
    let Some(head) = rest.get(..16) else {
        return (None, rest);
    };
    let Some(month) = MONTHS.iter().position(|m| head.starts_with(m)) else {
        return (None, rest);
    };
    let bytes = head.as_bytes();
    if bytes[3] != b' ' || bytes[6] != b' ' || bytes[15] != b' ' {
        return (None, rest);
    }
    let day = head[4..6].trim_start().parse::<u32>();
    let time = chrono::NaiveTime::parse_from_str(&head[7..15], "%H:%M:%S");
    let (Ok(day), Ok(time)) = (day, time) else {
        return (None, rest);
    };
    let local_year = received.with_timezone(zone).year();
    let dated = |year: i32| {
        NaiveDate::from_ymd_opt(year, month as u32 + 1, day)
            .and_then(|date| zone.from_local_datetime(&date.and_time(time)).earliest())
            .map(|at| at.with_timezone(&Utc))
    };
    let at = match dated(local_year) {
        Some(at) if at > received + chrono::Duration::days(1) => dated(local_year - 1),
        at => at,
    };
    match at {
        Some(at) => (Some(at), &rest[16..]),
        // Feb 29 of another year, or a time skipped by a DST change: the
        // message keeps the receive time, the text is consumed all the same.
        None => (None, &rest[16..]),
    }
}

/// Where the syslog listener takes messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyslogConfig {
    pub socket: Option<PathBuf>,
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
}

/// The bound sockets, before they serve.
pub struct Listeners {
    socket: Option<(PathBuf, UnixDatagram)>,
    udp: Option<UdpSocket>,
    tcp: Option<TcpListener>,
}

impl Listeners {
    /// Binds what `config` names; an error names the address and the cause.
    pub async fn bind(config: &SyslogConfig) -> Result<Self, LogsError> {
        let socket = match &config.socket {
            Some(path) => Some((
                path.clone(),
                bind_socket(path).map_err(|source| LogsError::Bind {
                    what: format!("the syslog socket {}", path.display()),
                    source,
                })?,
            )),
            None => None,
        };
        let udp = match config.udp {
            Some(addr) => Some(
                UdpSocket::bind(addr)
                    .await
                    .map_err(|source| LogsError::Bind {
                        what: format!("syslog UDP on {addr}"),
                        source,
                    })?,
            ),
            None => None,
        };
        let tcp = match config.tcp {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| LogsError::Bind {
                            what: format!("syslog TCP on {addr}"),
                            source,
                        })?,
                )
            }
            None => None,
        };
        for (what, addr) in [
            ("UDP", udp.as_ref().and_then(|s| s.local_addr().ok())),
            ("TCP", tcp.as_ref().and_then(|s| s.local_addr().ok())),
        ] {
            if let Some(addr) = addr {
                tracing::info!(%addr, "syslog listening on {what} {addr}");
            }
        }
        Ok(Self { socket, udp, tcp })
    }

    /// Serves every bound socket, each through its own bounded inlet.
    pub fn spawn(
        self,
        mut inlet: impl FnMut(&str) -> Arc<Inlet>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        if let Some((path, socket)) = self.socket {
            let inlet = inlet(&format!("syslog socket {}", path.display()));
            tasks.spawn(async move {
                serve_datagrams(DatagramSocket::Unix(socket), inlet).await;
            });
        }
        if let Some(udp) = self.udp {
            let addr = udp.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let inlet = inlet(&format!("syslog UDP {addr}"));
            tasks.spawn(async move { serve_datagrams(DatagramSocket::Udp(udp), inlet).await });
        }
        if let Some(tcp) = self.tcp {
            let addr = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let inlet = inlet(&format!("syslog TCP {addr}"));
            tasks.spawn(async move { serve_tcp(tcp, inlet).await });
        }
    }
}

/// Binds a datagram socket at `path`, replacing a socket left behind (but
/// nothing else), with [`SOCKET_MODE`].
fn bind_socket(path: &Path) -> io::Result<UnixDatagram> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something other than a socket is there; remove it or choose another path",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let socket = UnixDatagram::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    Ok(socket)
}

enum DatagramSocket {
    Unix(UnixDatagram),
    Udp(UdpSocket),
}

async fn serve_datagrams(socket: DatagramSocket, inlet: Arc<Inlet>) {
    let mut buffer = vec![0u8; MAX_FRAME_BYTES];
    loop {
        let received = match &socket {
            DatagramSocket::Unix(socket) => socket.recv(&mut buffer).await,
            DatagramSocket::Udp(socket) => socket.recv(&mut buffer).await,
        };
        match received {
            Ok(n) => inlet.push_raw(&buffer[..n]),
            Err(error) => {
                tracing::warn!(source = inlet.name(), %error, "syslog receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_tcp(listener: TcpListener, inlet: Arc<Inlet>) {
    // Ended with this task, so a stop ends every connection.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) if connections.len() >= MAX_TCP_CONNECTIONS => {
                tracing::warn!(%peer, "refusing a syslog TCP connection: {MAX_TCP_CONNECTIONS} are open already");
                drop(stream);
            }
            Ok((stream, peer)) => {
                let inlet = inlet.clone();
                connections.spawn(async move {
                    if let Err(error) = read_frames(stream, |frame| inlet.push_raw(frame)).await {
                        tracing::debug!(%peer, %error, "syslog TCP connection ended");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(source = inlet.name(), %error, "syslog TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads RFC 6587 frames until the end of the stream: octet counting
/// (`LEN SP MSG`) where a frame starts with a digit, else up to a newline.
/// A frame longer than [`MAX_FRAME_BYTES`] is cut to that (the rest is
/// read and discarded), so a sender cannot grow the agent's memory.
pub async fn read_frames(
    stream: impl AsyncRead + Unpin,
    mut frame: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    let mut buffer = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        let Some(&first) = available.first() else {
            return Ok(());
        };
        buffer.clear();
        if first.is_ascii_digit() {
            // Up to 9 digits and a space make a count; anything else is
            // the start of a newline-framed message.
            let mut length = 0usize;
            let mut digits = 0;
            let counted = loop {
                let available = reader.fill_buf().await?;
                match available.first() {
                    Some(&b) if b.is_ascii_digit() && digits < 9 => {
                        length = length * 10 + usize::from(b - b'0');
                        digits += 1;
                        buffer.push(b);
                        reader.consume(1);
                    }
                    Some(b' ') => {
                        reader.consume(1);
                        break true;
                    }
                    _ => break false,
                }
            };
            if !counted {
                read_bounded(&mut reader, b'\n', MAX_FRAME_BYTES, &mut buffer).await?;
                frame(&buffer);
                continue;
            }
            buffer.clear();
            let kept = length.min(MAX_FRAME_BYTES);
            buffer.resize(kept, 0);
            reader.read_exact(&mut buffer).await?;
            let mut skip = (&mut reader).take((length - kept) as u64);
            tokio::io::copy(&mut skip, &mut tokio::io::sink()).await?;
            frame(&buffer);
        } else {
            read_bounded(&mut reader, b'\n', MAX_FRAME_BYTES, &mut buffer).await?;
            if !buffer.iter().all(|b| b.is_ascii_whitespace()) {
                frame(&buffer);
            }
        }
    }
}

/// Reads up to and including `end` into `into`, keeping at most `max`
/// bytes; the rest of a longer run is read and discarded.
pub async fn read_bounded<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    end: u8,
    max: usize,
    into: &mut Vec<u8>,
) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match available.iter().position(|&b| b == end) {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let room = max.saturating_sub(into.len());
        into.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        total += used;
        reader.consume(used);
        if done {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;
    use tether_proto::telemetry::MAX_LOG_MESSAGE_BYTES;

    fn received() -> DateTime<Utc> {
        "2026-12-02T06:20:21.5Z".parse().expect("valid")
    }

    fn utc(text: &[u8]) -> LogRecord {
        parse(text, received(), &Utc)
    }

    #[test]
    fn rfc5424_gives_every_part() {
        let record = utc(
            br#"<165>1 2026-12-01T22:14:15.003Z mymachine.example.com evntslog 1234 ID47 [exampleSDID@32473 iut="3" eventSource="Appli\"cation" eventID="1011"][other x="]\]"] An application event"#,
        );
        assert_eq!(record.priority, 5);
        assert_eq!(record.fields["facility"], "local4");
        assert_eq!(record.unit, "evntslog");
        assert_eq!(record.message, "An application event");
        assert_eq!(
            record.at,
            "2026-12-01T22:14:15.003Z"
                .parse::<DateTime<Utc>>()
                .expect("valid")
        );
        assert_eq!(record.fields["hostname"], "mymachine.example.com");
        assert_eq!(record.fields["pid"], "1234");
        assert_eq!(record.fields["msgid"], "ID47");
        assert_eq!(
            record.fields["sd.exampleSDID@32473.eventSource"],
            "Appli\"cation"
        );
        assert_eq!(record.fields["sd.exampleSDID@32473.iut"], "3");
        assert_eq!(record.fields["sd.other.x"], "]]");
        assert!(!record.fields.contains_key("malformed"));
    }

    #[test]
    fn rfc5424_nil_values_bom_and_offsets() {
        let record = utc("<13>1 2026-12-02T07:00:00+01:00 - - - - - \u{feff}héllo".as_bytes());
        assert_eq!(record.message, "héllo");
        assert_eq!(record.unit, "");
        assert_eq!(
            record.at,
            "2026-12-02T06:00:00Z"
                .parse::<DateTime<Utc>>()
                .expect("valid")
        );
        assert!(!record.fields.contains_key("hostname"));
        // No message at all, and a nil timestamp: the receive time.
        let record = utc(b"<13>1 - host app - - -");
        assert_eq!((record.message.as_str(), record.at), ("", received()));
        // As util-linux logger --rfc5424 writes it.
        let record = utc(
            br#"<13>1 2026-12-02T06:20:21.838423+00:00 vm root - - [timeQuality tzKnown="1" isSynced="0"] hello world"#,
        );
        assert_eq!(
            (record.unit.as_str(), record.message.as_str()),
            ("root", "hello world")
        );
        assert_eq!(record.fields["sd.timeQuality.tzKnown"], "1");
    }

    #[test]
    fn rfc5424_bad_timestamp_gets_the_receive_time_and_says_so() {
        let record = utc(b"<13>1 yesterday host app - - - text");
        assert_eq!(record.at, received());
        assert_eq!(record.message, "text");
        assert!(record.fields["badTimestamp"].contains("yesterday"));
    }

    #[test]
    fn rfc3164_forms() {
        // logger --rfc3164: host name present.
        let record = utc(b"<13>Dec  2 06:20:21 vm root: hello world");
        assert_eq!(record.priority, 5);
        assert_eq!(record.fields["facility"], "user");
        assert_eq!(record.fields["hostname"], "vm");
        assert_eq!(
            (record.unit.as_str(), record.message.as_str()),
            ("root", "hello world")
        );
        assert_eq!(
            record.at,
            "2026-12-02T06:20:21Z"
                .parse::<DateTime<Utc>>()
                .expect("valid")
        );
        // glibc syslog() on /dev/log: no host name, a pid.
        let record = utc(b"<155>Dec  2 06:20:21 myapp[8640]: hello: there\n");
        assert_eq!(record.priority, 3);
        assert_eq!(record.fields["facility"], "local3");
        assert_eq!(record.unit, "myapp");
        assert_eq!(record.fields["pid"], "8640");
        assert_eq!(record.message, "hello: there");
        assert!(!record.fields.contains_key("hostname"));
        // No timestamp: tag only, dated on arrival.
        let record = utc(b"<14>cron[1]: job done");
        assert_eq!((record.unit.as_str(), record.at), ("cron", received()));
        // A host and no tag.
        let record = utc(b"<14>Dec 12 10:00:00 router link down on eth0");
        assert_eq!(record.fields["hostname"], "router");
        assert_eq!(
            (record.unit.as_str(), record.message.as_str()),
            ("", "link down on eth0")
        );
        // An RFC 3339 timestamp in a BSD message (rsyslog's format).
        let record = utc(b"<14>2026-12-02T05:00:00.5+00:00 host app: m");
        assert_eq!(
            record.at,
            "2026-12-02T05:00:00.5Z"
                .parse::<DateTime<Utc>>()
                .expect("valid")
        );
        assert_eq!(record.unit, "app");
        // No PRI at all: user.notice, the text as it came.
        let record = utc(b"just words");
        assert_eq!(
            (record.priority, record.message.as_str()),
            (5, "just words")
        );
        assert!(!record.fields.contains_key("malformed"));
    }

    #[test]
    fn bsd_timestamps_take_the_local_zone_and_a_sensible_year() {
        let east = FixedOffset::east_opt(2 * 3600).expect("valid");
        let record = parse(b"<13>Dec  2 08:20:21 app: m", received(), &east);
        assert_eq!(
            record.at,
            "2026-12-02T06:20:21Z"
                .parse::<DateTime<Utc>>()
                .expect("valid")
        );
        // Sent on Dec 31, received on Jan 1: last year.
        let new_year: DateTime<Utc> = "2027-01-01T00:00:05Z".parse().expect("valid");
        let record = parse(b"<13>Dec 31 23:59:59 app: m", new_year, &Utc);
        assert_eq!(
            record.at,
            "2026-12-31T23:59:59Z"
                .parse::<DateTime<Utc>>()
                .expect("valid")
        );
        // Feb 30 does not exist: the receive time, the text consumed.
        let record = utc(b"<13>Feb 30 10:00:00 app: m");
        assert_eq!((record.at, record.unit.as_str()), (received(), "app"));
    }

    #[test]
    fn malformed_input_is_kept_whole_and_named() {
        for (input, reason) in [
            (&b"<999>1 x"[..], "PRI"),
            (b"<>hello", "<PRI>"),
            (b"<13hello", "<PRI>"),
            (b"<13>1 2026-12-02T06:00:00Z host", "APP-NAME"),
            (b"<13>1 - h a p m [id x=1] text", "not quoted"),
            (b"<13>1 - h a p m [id x=\"1\" text", "without '='"),
            (b"<13>1 - h a p m [id x=\"1", "not closed"),
            (b"<13>1 - h a p m [id x=\"1\"]text", "no space"),
            (
                b"<13>1 - h aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa p m - text",
                "APP-NAME is longer",
            ),
        ] {
            let record = utc(input);
            assert_eq!(record.message, String::from_utf8_lossy(input), "{input:?}");
            assert_eq!(record.at, received());
            let why = &record.fields["malformed"];
            assert!(why.contains(reason), "{input:?}: {why}");
        }
        // Bytes that are not UTF-8 are kept, replaced.
        let record = utc(b"<13>app: \xff\xfe ok");
        assert_eq!(record.message, "\u{fffd}\u{fffd} ok");
    }

    #[test]
    fn long_messages_are_cut_and_marked() {
        let mut input = b"<13>app: ".to_vec();
        input.extend(std::iter::repeat_n(b'x', 40_000));
        let record = utc(&input);
        assert!(record.message.len() <= MAX_LOG_MESSAGE_BYTES);
        assert_eq!(record.fields["truncated"], "40000");
        assert_eq!(record.unit, "app");
    }

    #[tokio::test]
    async fn the_socket_replaces_a_stale_socket_but_nothing_else() {
        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join("log.sock");
        let stale = std::os::unix::net::UnixDatagram::bind(&path).expect("binds");
        drop(stale);
        let config = SyslogConfig {
            socket: Some(path.clone()),
            ..SyslogConfig::default()
        };
        assert!(
            Listeners::bind(&config).await.is_ok(),
            "a stale socket is replaced"
        );
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);

        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep me").expect("writes");
        let config = SyslogConfig {
            socket: Some(file.clone()),
            ..SyslogConfig::default()
        };
        let Err(error) = Listeners::bind(&config).await else {
            panic!("a file is not replaced");
        };
        let message = crate::actions::chain(&error);
        assert!(
            message.starts_with(&format!(
                "cannot listen for the syslog socket {}",
                file.display()
            )) && message.contains("something other than a socket is there"),
            "{message}"
        );
        assert_eq!(std::fs::read_to_string(&file).expect("kept"), "keep me");

        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let config = SyslogConfig {
            tcp: Some(taken.local_addr().expect("addr")),
            ..SyslogConfig::default()
        };
        let Err(error) = Listeners::bind(&config).await else {
            panic!("the port is taken");
        };
        assert!(
            error.to_string().contains("syslog TCP on 127.0.0.1:"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn tcp_framing_octet_counting_and_newlines() {
        let long = "y".repeat(MAX_FRAME_BYTES + 10);
        let input = format!(
            "12 <13>app: one<13>app: two\n\n<13>app: three\n5 <13>x{} {long}123abc trailing\n",
            long.len()
        );
        let mut frames = Vec::new();
        read_frames(input.as_bytes(), |frame| {
            frames.push(String::from_utf8_lossy(frame).into_owned());
        })
        .await
        .expect("reads");
        assert_eq!(frames[0], "<13>app: one");
        assert_eq!(frames[1], "<13>app: two\n");
        assert_eq!(frames[2], "<13>app: three\n");
        assert_eq!(frames[3], "<13>x");
        assert_eq!(frames[4].len(), MAX_FRAME_BYTES, "a long frame is cut");
        assert_eq!(frames[5], "123abc trailing\n", "digits that are no count");
        assert_eq!(frames.len(), 6);
    }

    #[tokio::test]
    async fn a_huge_line_costs_only_the_frame_bound() {
        let mut input = vec![b'z'; 1 << 20];
        input.extend_from_slice(b"\n<13>app: after\n");
        let mut frames = Vec::new();
        read_frames(&input[..], |frame| frames.push(frame.to_vec()))
            .await
            .expect("reads");
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].len(), MAX_FRAME_BYTES);
        assert_eq!(frames[1], b"<13>app: after\n");
    }
}
