//! restore-command's building blocks against OpenSSH's own sshd: a backup
//! taken while a writer runs is consistent, travels over SFTP with a pinned
//! host key and a password, and comes back intact; a wrong password, a
//! wrong host key, an unreachable server and a corrupt file each fail with
//! their own status code and a message naming the problem.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::Connection;
use tether_agent::restore::sftp::{Server, SftpError};
use tether_agent::restore::sqlite;
use tether_testkit::sshd::{PASSWORD, PASSWORD_USER, Sshd};

fn server(sshd: &Sshd, password: &str, host_key: String) -> Server {
    Server {
        host: "127.0.0.1".to_owned(),
        port: sshd.port,
        user: PASSWORD_USER.to_owned(),
        password: password.to_owned(),
        host_key_fingerprint: host_key,
    }
}

/// The rows of `path`'s table `t`, in order.
pub(crate) fn rows(path: &Path) -> anyhow::Result<Vec<i64>> {
    let connection = Connection::open(path)?;
    let mut statement = connection.prepare("SELECT n FROM t ORDER BY n")?;
    let rows = statement
        .query_map([], |row| row.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    Ok(rows)
}

/// The application: a WAL-mode database with a table `t`, one row per
/// transaction (1, 2, 3...) as fast as it can, from [`Writer::start`]
/// (which returns once it is well under way) until [`Writer::stop`].
pub(crate) struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<rusqlite::Result<i64>>,
}

impl Writer {
    pub(crate) async fn start(live: &Path) -> anyhow::Result<Self> {
        {
            let connection = Connection::open(live)?;
            connection.pragma_update(None, "journal_mode", "WAL")?;
            connection.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)", [])?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let live = live.to_owned();
            let stop = stop.clone();
            std::thread::spawn(move || -> rusqlite::Result<i64> {
                let connection = Connection::open(&live)?;
                connection.busy_timeout(std::time::Duration::from_secs(10))?;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) || n < 200 {
                    n += 1;
                    connection.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
                }
                Ok(n)
            })
        };
        tether_testkit::wait_until(
            "the writer's first rows",
            std::time::Duration::from_secs(10),
            || async { Ok((rows(live)?.len() >= 50).then_some(())) },
        )
        .await?;
        Ok(Self { stop, thread })
    }

    /// Stops writing; the number of rows written.
    pub(crate) fn stop(self) -> anyhow::Result<i64> {
        self.stop.store(true, Ordering::Relaxed);
        let written = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
        Ok(written)
    }
}

#[tokio::test]
async fn a_backup_taken_while_writing_goes_over_sftp_and_comes_back_whole() -> anyhow::Result<()> {
    let sshd = Sshd::start().await?;
    let work = tempfile::tempdir()?;
    let live = work.path().join("app.db");
    let writer = Writer::start(&live).await?;
    let copy = work.path().join("copy.db");
    {
        let (live, copy) = (live.clone(), copy.clone());
        tokio::task::spawn_blocking(move || sqlite::backup(&live, &copy)).await??;
    }
    let written = writer.stop()?;

    // One consistent state: every row up to some n, none missing.
    let backed_up = rows(&copy)?;
    assert!(!backed_up.is_empty());
    assert_eq!(backed_up, (1..=backed_up.len() as i64).collect::<Vec<_>>());
    sqlite::integrity_check(&copy)?;

    let remote = sshd.files_dir().join("app.db").display().to_string();
    let connection = server(&sshd, PASSWORD, sshd.host_key_fingerprint()?)
        .connect()
        .await?;
    let sent = connection.upload(&copy, &remote).await?;
    assert_eq!(sent, std::fs::metadata(&copy)?.len());
    // A second backup replaces the first.
    let sent_again = connection.upload(&copy, &remote).await?;
    assert_eq!(sent_again, sent);
    let back = work.path().join("back.db");
    connection.download(&remote, &back).await?;
    sqlite::integrity_check(&back)?;
    assert_eq!(rows(&back)?, backed_up);
    assert_eq!(rows(&live)?.len() as i64, written);
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_is_401_and_names_the_user_not_the_password() -> anyhow::Result<()> {
    let sshd = Sshd::start().await?;
    let error = server(&sshd, "not-the-password", sshd.host_key_fingerprint()?)
        .connect()
        .await
        .err()
        .expect("a wrong password was accepted");
    assert!(
        matches!(error, SftpError::AuthenticationFailed { .. }),
        "{error:?}"
    );
    assert_eq!(error.status_code(), 401);
    let message = error.to_string();
    assert!(message.contains(PASSWORD_USER), "{message}");
    assert!(!message.contains("not-the-password"), "{message}");
    let debug = format!("{:?}", server(&sshd, PASSWORD, String::new()));
    assert!(!debug.contains(PASSWORD), "{debug}");
    Ok(())
}

#[tokio::test]
async fn another_host_key_is_refused_before_logging_in() -> anyhow::Result<()> {
    let sshd = Sshd::start().await?;
    let other = Sshd::start().await?;
    let expected = other.host_key_fingerprint()?;
    let error = server(&sshd, PASSWORD, expected.clone())
        .connect()
        .await
        .err()
        .expect("a wrong host key was accepted");
    assert!(
        matches!(error, SftpError::HostKeyMismatch { .. }),
        "{error:?}"
    );
    assert_eq!(error.status_code(), 502);
    let message = error.to_string();
    assert!(message.contains(&expected), "{message}");
    assert!(message.contains(&sshd.host_key_fingerprint()?), "{message}");
    // The password was never offered to the impostor.
    assert!(!sshd.log().contains(PASSWORD_USER), "{}", sshd.log());
    Ok(())
}

#[tokio::test]
async fn an_unreachable_server_is_502() -> anyhow::Result<()> {
    // A port just released: nobody listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let error = Server {
        host: "127.0.0.1".to_owned(),
        port,
        user: PASSWORD_USER.to_owned(),
        password: PASSWORD.to_owned(),
        host_key_fingerprint: "SHA256:unused".to_owned(),
    }
    .connect()
    .await
    .err()
    .expect("connected to nothing");
    assert!(matches!(error, SftpError::Unreachable { .. }), "{error:?}");
    assert_eq!(error.status_code(), 502);
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    Ok(())
}

#[test]
fn a_corrupt_file_fails_the_integrity_check_with_422() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let not_a_database = work.path().join("garbage.db");
    std::fs::write(&not_a_database, vec![0x5a; 8192])?;
    let error = sqlite::integrity_check(&not_a_database).expect_err("garbage passed");
    assert_eq!(error.status_code(), 422);
    assert!(error.to_string().contains("garbage.db"), "{error}");

    // A real database with a page overwritten in the middle.
    let damaged = work.path().join("damaged.db");
    {
        let connection = Connection::open(&damaged)?;
        connection.execute_batch(
            "CREATE TABLE t (n INTEGER PRIMARY KEY, s TEXT);
             CREATE INDEX t_s ON t (s);
             WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 2000)
             INSERT INTO t SELECT n, printf('row %d', n) FROM c;",
        )?;
    }
    let mut bytes = std::fs::read(&damaged)?;
    let page = 4096;
    assert!(bytes.len() > 4 * page);
    bytes[2 * page..3 * page].fill(0xa5);
    std::fs::write(&damaged, bytes)?;
    let error = sqlite::integrity_check(&damaged).expect_err("a damaged database passed");
    assert_eq!(error.status_code(), 422);
    Ok(())
}

#[test]
fn a_restore_replaces_the_live_database_and_a_corrupt_one_leaves_it_untouched() -> anyhow::Result<()>
{
    let work = tempfile::tempdir()?;
    let live = work.path().join("app.db");
    let connection = Connection::open(&live)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection
        .execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2);")?;
    let backup = work.path().join("backup.db");
    sqlite::backup(&live, &backup)?;
    // Changed after the backup, and still in the write-ahead log.
    connection.execute("INSERT INTO t VALUES (3)", [])?;
    // Left open, as by an application killed when scaled to 0: its
    // write-ahead log stays, and must not be applied to the restored file.
    std::mem::forget(connection);
    assert!(work.path().join("app.db-wal").exists());
    let before = std::fs::read(&live)?;

    let corrupt = work.path().join("corrupt.db");
    std::fs::write(
        &corrupt,
        b"not a database at all, but long enough to look like one",
    )?;
    let error = sqlite::replace(&corrupt, &live).expect_err("a corrupt backup was restored");
    assert_eq!(error.status_code(), 422);
    assert_eq!(
        std::fs::read(&live)?,
        before,
        "the live database was touched"
    );
    assert!(work.path().join("app.db-wal").exists());

    sqlite::replace(&backup, &live)?;
    assert_eq!(rows(&live)?, [1, 2]);
    assert!(!work.path().join("app.db.tether-restore").exists());
    sqlite::integrity_check(&live)?;
    Ok(())
}
