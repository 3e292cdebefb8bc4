//! The agent's log sources end to end: a real tether-agent and a real
//! tetherd, fed by util-linux `logger` (syslog over a unix socket, UDP and
//! TCP), by files that rotate, and by a journal that Debian's
//! `systemd-journal-remote` writes from export-format input (no journald
//! runs here). What arrives is read from tetherd's store ([`stored`]: one
//! helper, to switch to `GET /api/v1/devices/{name}/logs` once it exists).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Utc};
use serde_json::json;
use tether_proto::DeviceId;
use tether_proto::telemetry::LogRecord;
use tether_server::store::Store;
use tether_testkit::{Agent, ApiClient, Database, Tetherd, wait_until};

use crate::support::{outcome, request};

/// Every log line tetherd stored for `device`, oldest first.
async fn stored(tetherd: &Tetherd, device: &str) -> anyhow::Result<Vec<LogRecord>> {
    let url = format!(
        "sqlite://{}",
        tetherd.data_dir().join("tether.db").display()
    );
    let store = Store::connect(&url).await?;
    let device = DeviceId::new(device)?;
    let logs = store
        .list_logs(&device, DateTime::<Utc>::UNIX_EPOCH, 100_000)
        .await?;
    Ok(logs.into_iter().map(|log| log.record).collect())
}

/// Waits until the stored lines satisfy `done`; returns them.
async fn wait_for_logs(
    tetherd: &Tetherd,
    agent: &Agent,
    device: &str,
    what: &str,
    done: impl Fn(&[LogRecord]) -> bool,
) -> anyhow::Result<Vec<LogRecord>> {
    let done = &done;
    let waited = wait_until(what, Duration::from_secs(30), || async move {
        let logs = stored(tetherd, device).await?;
        Ok(done(&logs).then_some(logs))
    })
    .await;
    if waited.is_err() {
        let logs = stored(tetherd, device).await.unwrap_or_default();
        let seen: Vec<String> = logs
            .iter()
            .take(60)
            .map(|l| {
                format!(
                    "{} {} {:.60} {:?}",
                    l.priority,
                    l.unit,
                    l.message,
                    l.fields.keys().collect::<Vec<_>>()
                )
            })
            .collect();
        return waited.with_context(|| {
            format!(
                "stored ({}):\n{}\nagent log:\n{}",
                logs.len(),
                seen.join("\n"),
                tail(&agent.log(), 3000)
            )
        });
    }
    waited
}

fn tail(text: &str, bytes: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn with_message<'a>(logs: &'a [LogRecord], message: &str) -> Vec<&'a LogRecord> {
    logs.iter().filter(|l| l.message == message).collect()
}

fn logger(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("logger")
        .args(args)
        .status()
        .context("running logger (util-linux)")?;
    ensure!(status.success(), "logger {args:?}: {status}");
    Ok(())
}

/// The address the agent logged for a listener (`syslog listening on UDP ADDR`).
async fn listening(agent: &Agent, proto: &str) -> anyhow::Result<String> {
    let needle = format!("syslog listening on {proto} ");
    wait_until("the syslog listener", Duration::from_secs(15), || {
        let log = agent.log();
        let needle = needle.clone();
        async move {
            Ok(log.find(&needle).and_then(|at| {
                log[at + needle.len()..]
                    .split_whitespace()
                    .next()
                    .map(|addr| addr.trim_end_matches(['"', ',']).to_owned())
            }))
        }
    })
    .await
}

async fn agent_with(
    tetherd: &Tetherd,
    admin: &ApiClient,
    name: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Agent> {
    let agent = Agent::enroll_with_env(tetherd, admin, name, env).await?;
    agent
        .wait_presence(admin, "online")
        .await
        .with_context(|| agent.log())?;
    Ok(agent)
}

async fn set_logging(
    admin: &ApiClient,
    device: &str,
    logging: serde_json::Value,
) -> anyhow::Result<u64> {
    let updated = admin
        .patch(
            &format!("/api/v1/devices/{device}?updateMask=spec.loggingConfig"),
            json!({"spec": {"loggingConfig": logging}}),
        )
        .await?
        .expect_status(200)?;
    let version = updated["specVersion"].as_u64().context("specVersion")?;
    wait_until(
        "the agent to apply the spec",
        Duration::from_secs(30),
        || async move {
            let device = admin
                .get(&format!("/api/v1/devices/{device}"))
                .await?
                .expect_status(200)?;
            Ok((device["status"]["specVersion"] == version).then_some(()))
        },
    )
    .await?;
    Ok(version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_lines_reach_tetherd_over_the_socket_udp_and_tcp_and_hostile_input_is_contained()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("log.sock");
    let socket_text = socket.display().to_string();
    let agent = agent_with(
        &tetherd,
        &admin,
        "syslog",
        &[
            ("TETHER_AGENT_SYSLOG_SOCKET", &socket_text),
            ("TETHER_AGENT_SYSLOG_UDP", "127.0.0.1:0"),
            ("TETHER_AGENT_SYSLOG_TCP", "127.0.0.1:0"),
        ],
    )
    .await?;
    let mode = std::fs::metadata(&socket)?.permissions();
    ensure!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777 == 0o666,
        "socket mode {mode:?}"
    );
    let udp = listening(&agent, "UDP").await?;
    let tcp = listening(&agent, "TCP").await?;
    let (udp_host, udp_port) = udp.rsplit_once(':').context("udp addr")?;
    let (tcp_host, tcp_port) = tcp.rsplit_once(':').context("tcp addr")?;

    logger(&[
        "--socket",
        &socket_text,
        "-t",
        "sockapp",
        "-p",
        "daemon.err",
        "via the socket",
    ])?;
    logger(&[
        "--socket",
        &socket_text,
        "--rfc5424",
        "-t",
        "sockapp",
        "-i",
        "--msgid",
        "M1",
        "via the socket in 5424",
    ])?;
    logger(&[
        "-n",
        udp_host,
        "-P",
        udp_port,
        "-d",
        "--rfc3164",
        "-t",
        "udpapp",
        "-p",
        "local0.warning",
        "via udp",
    ])?;
    logger(&[
        "-n",
        tcp_host,
        "-P",
        tcp_port,
        "-T",
        "--octet-count",
        "-t",
        "tcpapp",
        "-p",
        "user.debug",
        "via tcp, counted",
    ])?;
    logger(&[
        "-n",
        tcp_host,
        "-P",
        tcp_port,
        "-T",
        "-t",
        "tcpapp",
        "via tcp, by newline",
    ])?;
    // Hostile: bytes that are no syslog, and a 1 MiB line over TCP.
    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    sender.send_to(b"<999>\xff\x00garbage", &socket)?;
    let mut stream = std::net::TcpStream::connect(&tcp)?;
    let mut huge = b"<11>huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'h', 1 << 20));
    huge.extend_from_slice(b"\n<11>huge: after the huge line\n");
    stream.write_all(&huge)?;
    drop(stream);

    let logs = wait_for_logs(&tetherd, &agent, "syslog", "every logger line", |logs| {
        [
            "via the socket",
            "via the socket in 5424",
            "via udp",
            "via tcp, counted",
            "via tcp, by newline",
            "after the huge line",
        ]
        .iter()
        .all(|m| !with_message(logs, m).is_empty())
            && logs.iter().any(|l| l.fields.contains_key("malformed"))
            && logs
                .iter()
                .any(|l| l.unit == "huge" && l.fields.contains_key("truncated"))
    })
    .await?;
    let one = |message: &str| -> anyhow::Result<LogRecord> {
        let found = with_message(&logs, message);
        ensure!(found.len() == 1, "{message:?} stored {} times", found.len());
        Ok(found[0].clone())
    };
    let socket_line = one("via the socket")?;
    assert_eq!(
        (socket_line.priority, socket_line.unit.as_str()),
        (3, "sockapp")
    );
    assert_eq!(socket_line.fields["facility"], "daemon");
    let rfc5424 = one("via the socket in 5424")?;
    assert_eq!(rfc5424.fields["msgid"], "M1");
    assert_eq!(rfc5424.fields["format"], "rfc5424");
    assert!(rfc5424.fields.contains_key("pid"));
    let udp_line = one("via udp")?;
    assert_eq!((udp_line.priority, udp_line.unit.as_str()), (4, "udpapp"));
    assert_eq!(udp_line.fields["facility"], "local0");
    assert_eq!(one("via tcp, counted")?.priority, 7);
    assert_eq!(one("via tcp, by newline")?.unit, "tcpapp");
    let garbage = logs
        .iter()
        .find(|l| l.fields.contains_key("malformed"))
        .context("garbage kept")?;
    assert!(garbage.message.contains("garbage"), "{garbage:?}");
    let huge = logs
        .iter()
        .find(|l| l.unit == "huge" && l.fields.contains_key("truncated"))
        .context("the huge line")?;
    assert!(huge.message.len() <= 16 * 1024);
    let accepted = logs.len();

    // A flood on the unix socket (which blocks the sender rather than drop
    // in the kernel): what the agent kept plus what it says it dropped is
    // exactly what was sent, and nothing accepted before is lost.
    const FLOOD: usize = 30_000;
    for i in 0..FLOOD {
        sender.send_to(format!("<14>flood: {i:05}").as_bytes(), &socket)?;
    }
    logger(&["--socket", &socket_text, "-t", "sockapp", "after the flood"])?;
    let logs = wait_for_logs(
        &tetherd,
        &agent,
        "syslog",
        "the flood and the line after it",
        |logs| {
            let flood = logs.iter().filter(|l| l.unit == "flood").count();
            let dropped: usize = logs
                .iter()
                .filter_map(|l| l.fields.get("droppedMessages"))
                .filter_map(|n| n.parse::<usize>().ok())
                .sum();
            flood + dropped == FLOOD && !with_message(logs, "after the flood").is_empty()
        },
    )
    .await?;
    let flood = logs.iter().filter(|l| l.unit == "flood").count();
    eprintln!(
        "flood of {FLOOD}: {flood} kept, {} dropped and reported",
        FLOOD - flood
    );
    let before: Vec<_> = logs
        .iter()
        .filter(|l| l.unit != "flood" && l.unit != "tether-agent")
        .collect();
    assert_eq!(
        before.len(),
        accepted + 1,
        "everything accepted before the flood is kept"
    );

    // The spec's filter applies to syslog too, changed live: errors and
    // worse of sockapp.service (its tag is sockapp) only.
    set_logging(
        &admin,
        "syslog",
        json!({"priority": 3, "units": ["sockapp.service"]}),
    )
    .await?;
    for (tag, priority, message) in [
        ("sockapp", "user.info", "filtered: too low"),
        ("otherapp", "user.err", "filtered: another unit"),
        ("sockapp", "user.err", "kept: an error of sockapp"),
    ] {
        logger(&["--socket", &socket_text, "-t", tag, "-p", priority, message])?;
    }
    let logs = wait_for_logs(&tetherd, &agent, "syslog", "the filtered lines", |logs| {
        !with_message(logs, "kept: an error of sockapp").is_empty()
    })
    .await?;
    assert!(with_message(&logs, "filtered: too low").is_empty());
    assert!(with_message(&logs, "filtered: another unit").is_empty());
    Ok(())
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn lines(range: std::ops::Range<u32>) -> String {
    range.map(|i| format!("line {i:04}\n")).collect()
}

/// Each `line NNNN` for `0..n` stored exactly once.
fn exactly_once(logs: &[LogRecord], n: u32) -> Result<(), String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for log in logs.iter().filter(|l| l.message.starts_with("line ")) {
        *counts.entry(log.message.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    if !repeated.is_empty() {
        return Err(format!("repeated: {repeated:?}"));
    }
    let missing: Vec<u32> = (0..n)
        .filter(|i| !counts.contains_key(format!("line {i:04}").as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(format!("missing: {missing:?}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_file_arrives_line_by_line_once_across_rotations_and_a_restart()
-> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("app.log");
    let log_text = log.display().to_string();
    // The file does not exist yet: the agent waits for it.
    let mut agent = agent_with(
        &tetherd,
        &admin,
        "files",
        &[("TETHER_AGENT_LOG_FILES", &log_text)],
    )
    .await?;
    append(&log, &lines(0..100))?;
    // rename + create (logrotate's default), with a line cut in two around it.
    append(&log, "line 01")?;
    wait_for_logs(&tetherd, &agent, "files", "the first lines", |logs| {
        exactly_once(logs, 100).is_ok()
    })
    .await?;
    append(&log, "00\n")?;
    std::fs::rename(&log, dir.path().join("app.log.1"))?;
    append(&log, &lines(101..200))?;
    wait_for_logs(&tetherd, &agent, "files", "lines across a rename", |logs| {
        exactly_once(logs, 200).is_ok()
    })
    .await?;

    // Stopped; written and rotated meanwhile; a partial line at the end.
    agent.stop().await?;
    append(&log, &lines(200..250))?;
    std::fs::rename(dir.path().join("app.log.1"), dir.path().join("app.log.2"))?;
    std::fs::rename(&log, dir.path().join("app.log.1"))?;
    append(&log, &lines(250..300))?;
    append(&log, "line 03")?;
    agent.start()?;
    wait_for_logs(
        &tetherd,
        &agent,
        "files",
        "lines written while stopped",
        |logs| exactly_once(logs, 300).is_ok(),
    )
    .await?;
    append(&log, "00\n")?;
    // Lines written between the copy and the truncation are lost to any
    // reader (logrotate's documented caveat): the truncation waits for them.
    wait_for_logs(
        &tetherd,
        &agent,
        "files",
        "the partial line completed",
        |logs| exactly_once(logs, 301).is_ok(),
    )
    .await?;
    // copytruncate: copied elsewhere, emptied in place, written on.
    std::fs::copy(&log, dir.path().join("app.log.copy"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)?;
    append(&log, &lines(301..350))?;
    let logs = wait_for_logs(
        &tetherd,
        &agent,
        "files",
        "lines after copytruncate",
        |logs| exactly_once(logs, 350).is_ok(),
    )
    .await?;
    if let Err(problem) = exactly_once(&logs, 350) {
        bail!("{problem}");
    }
    let line = with_message(&logs, "line 0042")[0];
    assert_eq!((line.unit.as_str(), line.priority), (log_text.as_str(), 6));
    Ok(())
}

/// Writes export-format entries into a journal file with systemd-journal-remote
/// (appending if it exists: `journalctl --follow --directory` sees entries
/// appended to the files it has open, not files created after it started).
fn write_journal(file: &Path, entries: &[(&str, &str, &str, u64)]) -> anyhow::Result<()> {
    let mut export = Vec::new();
    let now = Utc::now().timestamp_micros() as u64;
    for (i, (unit, priority, message, pid)) in entries.iter().enumerate() {
        let mut entry = format!(
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=edge-journal\nPRIORITY={priority}\n_PID={pid}\nSYSLOG_IDENTIFIER={}\n",
            now + i as u64,
            // Monotonic time goes on within the boot, across calls too.
            now + i as u64,
            unit.trim_end_matches(".service")
        );
        if unit.contains('.') {
            entry.push_str(&format!("_SYSTEMD_UNIT={unit}\n"));
        }
        export.extend_from_slice(entry.as_bytes());
        // MESSAGE in the binary form (length-prefixed), as journald writes
        // messages with control characters.
        export.extend_from_slice(b"MESSAGE\n");
        export.extend_from_slice(&(message.len() as u64).to_le_bytes());
        export.extend_from_slice(message.as_bytes());
        export.extend_from_slice(b"\n\n");
    }
    let mut child = Command::new("/lib/systemd/systemd-journal-remote")
        .arg("-o")
        .arg(file)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running systemd-journal-remote (Debian package systemd-journal-remote)")?;
    child.stdin.take().context("stdin")?.write_all(&export)?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "systemd-journal-remote: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_exported_as_the_spec_says_and_filters_change_live() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let dir = tempfile::tempdir()?;
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal)?;
    write_journal(
        &journal.join("a.journal"),
        &[
            ("ssh.service", "3", "ssh: first", 10),
            ("cron", "6", "cron: first", 11),
            ("nginx.service", "4", "nginx: first", 12),
            ("ssh.service", "7", "ssh: debug", 10),
        ],
    )?;
    let journal_text = journal.display().to_string();
    let mut agent = agent_with(
        &tetherd,
        &admin,
        "journal",
        &[("TETHER_AGENT_JOURNAL_DIRECTORY", &journal_text)],
    )
    .await?;
    // Export is off by default: the journal is not read.
    ensure!(
        !agent.log().contains("exporting the journal"),
        "export started unasked"
    );

    set_logging(
        &admin,
        "journal",
        json!({"enableJournalExport": true, "priority": 4, "units": ["ssh.service", "nginx.service"]}),
    )
    .await?;
    let logs = wait_for_logs(
        &tetherd,
        &agent,
        "journal",
        "the journal's entries",
        |logs| {
            !with_message(logs, "ssh: first").is_empty()
                && !with_message(logs, "nginx: first").is_empty()
        },
    )
    .await?;
    let ssh = with_message(&logs, "ssh: first")[0];
    assert_eq!((ssh.priority, ssh.unit.as_str()), (3, "ssh.service"));
    assert_eq!(ssh.fields["pid"], "10");
    assert_eq!(ssh.fields["hostname"], "edge-journal");
    assert_eq!(ssh.fields["bootId"], "0123456789abcdef0123456789abcdef");
    assert_eq!(ssh.fields["syslogIdentifier"], "ssh");
    assert_eq!(with_message(&logs, "nginx: first")[0].priority, 4);

    // Stricter, live: errors only. A later entry that passes shows the one
    // before it was filtered, not late.
    set_logging(
        &admin,
        "journal",
        json!({"enableJournalExport": true, "priority": 3, "units": ["ssh.service", "nginx.service"]}),
    )
    .await?;
    write_journal(
        &journal.join("a.journal"),
        &[
            ("nginx.service", "4", "nginx: second", 12),
            ("cron", "2", "cron: critical", 11),
            ("ssh.service", "3", "ssh: second", 10),
        ],
    )?;
    let logs = wait_for_logs(
        &tetherd,
        &agent,
        "journal",
        "the second file's entries",
        |logs| !with_message(logs, "ssh: second").is_empty(),
    )
    .await?;
    assert!(
        with_message(&logs, "nginx: second").is_empty(),
        "priority 4 > 3"
    );
    assert!(
        with_message(&logs, "cron: critical").is_empty(),
        "cron is not a listed unit"
    );
    for never in ["cron: first", "ssh: debug"] {
        assert!(with_message(&logs, never).is_empty(), "{never}");
    }

    // A restart resumes after the last entry: none twice, a new one once.
    agent.stop().await?;
    write_journal(
        &journal.join("a.journal"),
        &[("ssh.service", "2", "ssh: while stopped", 10)],
    )?;
    agent.start()?;
    let logs = wait_for_logs(
        &tetherd,
        &agent,
        "journal",
        "the entry written while stopped",
        |logs| !with_message(logs, "ssh: while stopped").is_empty(),
    )
    .await?;
    for message in [
        "ssh: first",
        "nginx: first",
        "ssh: second",
        "ssh: while stopped",
    ] {
        assert_eq!(with_message(&logs, message).len(), 1, "{message}");
    }

    // Export off: the journal source stops.
    set_logging(&admin, "journal", json!({"enableJournalExport": false})).await?;
    wait_until(
        "the journal export to stop",
        Duration::from_secs(15),
        || {
            let log = agent.log();
            async move { Ok(log.contains("journal export turned off").then_some(())) }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_logs_reads_the_system_log_from_now_and_sends_at_once() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let dir = tempfile::tempdir()?;
    let syslog = dir.path().join("syslog");
    append(
        &syslog,
        "Dec  2 06:00:00 vm old[1]: before anyone followed\n",
    )?;
    let syslog_text = syslog.display().to_string();
    let agent = agent_with(
        &tetherd,
        &admin,
        "follow",
        &[("TETHER_AGENT_SYSTEM_LOG", &syslog_text)],
    )
    .await?;

    let id = request(
        &admin,
        "follow",
        json!({"action": "follow-logs", "input": {"seconds": 30}}),
    )
    .await?;
    let answer = outcome(&admin, &id).await?;
    assert_eq!(answer["state"], "succeeded", "{answer}");
    assert_eq!(answer["response"]["systemLog"], syslog_text, "{answer}");
    wait_until("the system log source", Duration::from_secs(15), || {
        let log = agent.log();
        async move {
            Ok(log
                .contains("reading the system log from now")
                .then_some(()))
        }
    })
    .await?;

    // Each line reaches tetherd's store well within the spool's normal
    // one-second cadence.
    let mut latencies = Vec::new();
    for i in 0..5 {
        let message = format!("followed line {i}");
        let written = Instant::now();
        append(
            &syslog,
            &format!("Dec  2 06:00:0{i} vm sshd[7]: {message}\n"),
        )?;
        wait_for_logs(&tetherd, &agent, "follow", &message, |logs| {
            !with_message(logs, &message).is_empty()
        })
        .await?;
        latencies.push(written.elapsed());
    }
    latencies.sort();
    eprintln!("file line to tetherd's store while following: {latencies:?}");
    // The normal cadence (a flush a second) takes half a second on average.
    assert!(
        latencies[2] < Duration::from_millis(300),
        "median {:?}",
        latencies[2]
    );
    let logs = stored(&tetherd, "follow").await?;
    assert!(
        with_message(&logs, "before anyone followed").is_empty(),
        "from now on only"
    );
    let line = with_message(&logs, "followed line 0")[0];
    assert_eq!((line.unit.as_str(), line.priority), ("sshd", 5));

    // Out-of-range input is refused, naming the field.
    let refused = admin
        .post(
            "/api/v1/devices/follow/actions",
            json!({"action": "follow-logs", "input": {"seconds": 3600}}),
        )
        .await?;
    let (status, body) = (refused.status, refused.body.to_string());
    assert!(
        status == 400 && body.contains("seconds"),
        "{status}: {body}"
    );
    Ok(())
}

/// A log file replaced by a FIFO (or anything but a regular file): opening
/// or reading it would block the agent's one thread until a writer came,
/// and with it the session, the spool and the local API. The agent passes
/// it over, says why, and goes on; a regular file there later is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_replaced_by_a_fifo_does_not_stop_the_agent() -> anyhow::Result<()> {
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("app.log");
    let agent = agent_with(
        &tetherd,
        &admin,
        "fifo",
        &[("TETHER_AGENT_LOG_FILES", &log.display().to_string())],
    )
    .await?;
    append(&log, &lines(0..10))?;
    wait_for_logs(&tetherd, &agent, "fifo", "the file's lines", |logs| {
        exactly_once(logs, 10).is_ok()
    })
    .await?;
    std::fs::remove_file(&log)?;
    let made = std::process::Command::new("mkfifo").arg(&log).status()?;
    anyhow::ensure!(made.success(), "mkfifo failed");
    wait_until(
        "the agent to pass the FIFO over",
        Duration::from_secs(15),
        || async { Ok(agent.log().contains("not a regular file").then_some(())) },
    )
    .await
    .with_context(|| agent.log())?;
    // Still serving: a line through its local API arrives.
    tokio::time::timeout(
        Duration::from_secs(10),
        tether_testkit::post_local(
            &agent.local_api_socket(),
            "/v1/logs",
            r#"{"message": "still here"}"#,
        ),
    )
    .await
    .context("the local API does not answer")??;
    wait_for_logs(&tetherd, &agent, "fifo", "the local line", |logs| {
        logs.iter().any(|l| l.message == "still here")
    })
    .await?;
    // A regular file again: read from its start.
    std::fs::remove_file(&log)?;
    append(&log, &lines(10..20))?;
    wait_for_logs(&tetherd, &agent, "fifo", "the new file's lines", |logs| {
        logs.iter().any(|l| l.message.ends_with("19"))
    })
    .await?;
    Ok(())
}

/// Peak resident memory of process `pid`, in kB.
fn peak_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc/PID/status")
}

/// Issue 13's bad day: syslog floods on UDP, TCP and the unix socket, of
/// the smallest frames a sender can make (an empty datagram, `0 ` over
/// TCP: two bytes a frame), for a few seconds. The agent's memory stays
/// bounded and it answers an action during and after the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_flood_of_tiny_frames_keeps_the_agent_bounded_and_answering() -> anyhow::Result<()>
{
    let tetherd = Tetherd::start(Database::Sqlite).await?;
    let admin = tetherd.admin().await?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("log.sock");
    let socket_text = socket.display().to_string();
    let agent = agent_with(
        &tetherd,
        &admin,
        "flooded",
        &[
            ("TETHER_AGENT_SYSLOG_SOCKET", &socket_text),
            ("TETHER_AGENT_SYSLOG_UDP", "127.0.0.1:0"),
            ("TETHER_AGENT_SYSLOG_TCP", "127.0.0.1:0"),
        ],
    )
    .await?;
    let udp = listening(&agent, "UDP").await?;
    let tcp = listening(&agent, "TCP").await?;
    let pid = agent.pid().context("agent pid")?;
    let before = peak_rss_kb(pid)?;

    const FLOOD: Duration = Duration::from_secs(2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut floods = Vec::new();
    for _ in 0..4 {
        let (tcp, stop) = (tcp.clone(), stop.clone());
        floods.push(std::thread::spawn(move || -> std::io::Result<u64> {
            let mut stream = std::net::TcpStream::connect(&tcp)?;
            stream.set_write_timeout(Some(Duration::from_millis(100)))?;
            let chunk = b"0 ".repeat(32 * 1024);
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match stream.write(&chunk) {
                    Ok(n) => sent += n as u64,
                    // The agent reads no faster than it parses.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(sent)
        }));
    }
    {
        let (udp, stop) = (udp.clone(), stop.clone());
        floods.push(std::thread::spawn(move || -> std::io::Result<u64> {
            let sender = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // The kernel drops what the agent's socket buffer cannot
                // hold; only what it accepted counts.
                if sender.send_to(b"", &udp).is_ok() {
                    sent += 1;
                }
            }
            Ok(sent)
        }));
    }
    {
        let (socket, stop) = (socket.clone(), stop.clone());
        floods.push(std::thread::spawn(move || -> std::io::Result<u64> {
            let sender = std::os::unix::net::UnixDatagram::unbound()?;
            sender.set_nonblocking(true)?;
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if sender.send_to(b"x", &socket).is_ok() {
                    sent += 1;
                }
            }
            Ok(sent)
        }));
    }
    // An action answered while the flood runs.
    let started = Instant::now();
    let id = request(&admin, "flooded", json!({"action": "get-node-ip"})).await?;
    let done = outcome(&admin, &id).await?;
    ensure!(done["statusCode"] == 200, "answered: {done}");
    let answered = started.elapsed();
    tokio::time::sleep(FLOOD.saturating_sub(started.elapsed())).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = Vec::new();
    for flood in floods {
        sent.push(
            flood
                .join()
                .map_err(|_| anyhow::anyhow!("flood thread"))??,
        );
    }
    let id = request(&admin, "flooded", json!({"action": "get-node-ip"})).await?;
    ensure!(outcome(&admin, &id).await?["statusCode"] == 200);
    let peak = peak_rss_kb(pid)?;
    eprintln!(
        "flood: {sent:?} (TCP bytes ×4, UDP and socket datagrams); peak RSS {before} kB before, {peak} kB after; action answered in {answered:?} during it"
    );
    // What did not fit: frames the inlets dropped (each reported in a
    // record of the agent's own), and records the full spool dropped
    // oldest first (in its totals); their exact counts are
    // `logger_lines_reach_tetherd_…` and the spool's tests.
    let log = agent.log();
    eprintln!(
        "inlet drop reports: {}, full-spool drops: {}",
        log.matches("syslog messages dropped").count(),
        log.matches("the spool is full").count()
    );
    ensure!(
        peak < before + 32 * 1024,
        "the flood grew the agent from {before} kB to {peak} kB"
    );
    Ok(())
}
