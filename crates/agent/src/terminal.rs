//! A command in a pseudo-terminal of its own: the leader of a new session
//! with the terminal as its controlling terminal, so that job control,
//! Ctrl-C (the terminal turns byte 0x03 into SIGINT) and hang-up behave as
//! on a console. Used by `shell` tunnels (ADR 0021) and by anything else
//! that serves interactive shells.
//!
//! [`spawn`] gives a [`Terminal`]: the output to read ([`Reader`]), the
//! input to write and the size to change ([`Writer`]), and the process to
//! wait for or hang up ([`Child`]); each can move to a task of its own.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitStatus;
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a hung-up command and its jobs have to exit (a shell saves its
/// history, an editor its swap file) before they are killed.
pub const HANG_UP_GRACE: Duration = Duration::from_secs(1);

/// Where the login shell is looked up.
const PASSWD: &str = "/etc/passwd";
/// The shell for a user without one (or not in the password file).
const FALLBACK_SHELL: &str = "/bin/sh";

#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("cannot open a pseudo-terminal")]
    Open(#[source] io::Error),
    #[error("cannot set the terminal's size to {cols}x{rows}")]
    Resize {
        cols: u16,
        rows: u16,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {program} in a terminal")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
}

impl TerminalError {
    /// The program to run does not exist (the caller's mistake, not the
    /// device's).
    pub fn is_not_found(&self) -> bool {
        matches!(self, TerminalError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub cols: u16,
    pub rows: u16,
}

impl From<Size> for pty_process::Size {
    fn from(size: Size) -> Self {
        pty_process::Size::new(size.rows, size.cols)
    }
}

/// What to run in a terminal, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub program: PathBuf,
    /// `argv[0]` when it is not `program` (a login shell's `-sh`).
    pub arg0: Option<String>,
    pub args: Vec<String>,
    /// Set on top of the environment the caller runs with (`TERM` among
    /// them).
    pub env: Vec<(String, String)>,
    /// The working directory; the caller's when `None`.
    pub cwd: Option<PathBuf>,
    /// The terminal's size when the command starts.
    pub size: Size,
}

impl Command {
    /// `program` with `args`, in the caller's directory and environment.
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>, size: Size) -> Self {
        Command {
            program: program.into(),
            arg0: None,
            args,
            env: Vec::new(),
            cwd: None,
            size,
        }
    }

    /// The login shell of the user this process runs as, started as a
    /// login shell (`argv[0]` `-NAME`, so it reads the profile) in the
    /// home directory, with `HOME`, `SHELL`, `USER` and `LOGNAME` set;
    /// `/bin/sh` in `/` for a user the password file does not know.
    pub fn login_shell(size: Size) -> Self {
        let passwd = std::fs::read_to_string(PASSWD).unwrap_or_default();
        let uid = rustix::process::getuid().as_raw();
        let account = Account::find(&passwd, uid);
        let program = account
            .as_ref()
            .map_or(FALLBACK_SHELL, |account| account.shell);
        let name = Path::new(program)
            .file_name()
            .map_or("sh".into(), OsStr::to_string_lossy);
        let mut command = Command::new(program, Vec::new(), size);
        command.arg0 = Some(format!("-{name}"));
        if let Some(account) = account {
            command.cwd = Some(PathBuf::from(account.home)).filter(|home| home.is_dir());
            command.env = vec![
                ("HOME".to_owned(), account.home.to_owned()),
                ("SHELL".to_owned(), program.to_owned()),
                ("USER".to_owned(), account.name.to_owned()),
                ("LOGNAME".to_owned(), account.name.to_owned()),
            ];
        }
        command.cwd.get_or_insert_with(|| PathBuf::from("/"));
        command
    }

    /// Sets `key` to `value` in the command's environment.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// One user's line of the password file.
#[derive(Debug, PartialEq, Eq)]
struct Account<'a> {
    name: &'a str,
    home: &'a str,
    shell: &'a str,
}

impl<'a> Account<'a> {
    /// The first account of `uid` in `passwd` (name:x:uid:gid:gecos:home:shell);
    /// an empty shell field means `/bin/sh`, as login(1) reads it.
    fn find(passwd: &'a str, uid: u32) -> Option<Self> {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [name, _, id, _, _, home, shell] = fields[..] else {
                return None;
            };
            (id.parse() == Ok(uid)).then_some(Account {
                name,
                home,
                shell: if shell.is_empty() {
                    FALLBACK_SHELL
                } else {
                    shell
                },
            })
        })
    }
}

/// A command running in a terminal of its own.
pub struct Terminal {
    pub reader: Reader,
    pub writer: Writer,
    pub child: Child,
}

/// Starts `command` in a new terminal of `command.size`.
pub fn spawn(command: Command) -> Result<Terminal, TerminalError> {
    let (pty, pts) = pty_process::open().map_err(|e| TerminalError::Open(into_io(e)))?;
    resize(&pty, command.size)?;
    let mut process = pty_process::Command::new(&command.program);
    for name in crate::tunnel::agent_variables() {
        process = process.env_remove(name);
    }
    let mut process = process
        .args(&command.args)
        .envs(command.env)
        // A safety net: the owner hangs up explicitly (see Child::hang_up).
        .kill_on_drop(true);
    if let Some(arg0) = command.arg0 {
        process = process.arg0(arg0);
    }
    if let Some(cwd) = command.cwd {
        process = process.current_dir(cwd);
    }
    let inner = process.spawn(pts).map_err(|e| TerminalError::Spawn {
        program: command.program.display().to_string(),
        source: into_io(e),
    })?;
    let pid = inner
        .id()
        .and_then(|id| Pid::from_raw(id.cast_signed()))
        .ok_or_else(|| TerminalError::Spawn {
            program: command.program.display().to_string(),
            source: io::Error::other("the process has no id"),
        })?;
    let (reader, writer) = pty.into_split();
    Ok(Terminal {
        reader: Reader(reader),
        writer: Writer(writer),
        child: Child { inner, pid },
    })
}

fn resize(pty: &pty_process::Pty, size: Size) -> Result<(), TerminalError> {
    pty.resize(size.into()).map_err(|e| TerminalError::Resize {
        cols: size.cols,
        rows: size.rows,
        source: into_io(e),
    })
}

fn into_io(error: pty_process::Error) -> io::Error {
    match error {
        pty_process::Error::Io(error) => error,
        pty_process::Error::Rustix(errno) => errno.into(),
        other => io::Error::other(other.to_string()),
    }
}

/// What the terminal shows: the command's output, echoed input included.
/// Ends once no process has the terminal open any more.
pub struct Reader(pty_process::OwnedReadPty);

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            // Linux's way of saying that the last process closed the
            // terminal: the end of the output, not a failure.
            Poll::Ready(Err(error))
                if error.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error()) =>
            {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// The terminal's keyboard, and its size.
pub struct Writer(pty_process::OwnedWritePty);

impl Writer {
    /// Changes the terminal's size; the command gets SIGWINCH.
    pub fn resize(&self, size: Size) -> Result<(), TerminalError> {
        self.0
            .resize(size.into())
            .map_err(|e| TerminalError::Resize {
                cols: size.cols,
                rows: size.rows,
                source: into_io(e),
            })
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The command: the leader of its own session and process group.
pub struct Child {
    inner: tokio::process::Child,
    pid: Pid,
}

impl Child {
    /// The command's process id, which is also its session's and process
    /// group's.
    pub fn id(&self) -> u32 {
        self.pid.as_raw_nonzero().get().cast_unsigned()
    }

    /// Waits for the command to exit (its jobs may still run).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.inner.wait().await
    }

    /// What a terminal hanging up does, and then some: SIGHUP to the
    /// command's process group, [`HANG_UP_GRACE`] for it to exit, then
    /// SIGKILL to every process left in its session and below it (jobs
    /// that ignore SIGHUP, `nohup`, children that left the session), so
    /// nothing outlives the terminal. Also for after the command exited:
    /// its jobs go with it.
    pub async fn hang_up(&mut self) -> io::Result<ExitStatus> {
        let session = self.pid;
        // Found before anything exits: children are reparented then.
        let descendants = tokio::task::spawn_blocking(move || processes_of(session, &[]))
            .await
            .unwrap_or_default();
        // ESRCH: the group is gone already, which is the point.
        let _ = rustix::process::kill_process_group(self.pid, Signal::HUP);
        let exited = tokio::time::timeout(HANG_UP_GRACE, self.inner.wait()).await;
        let _ = tokio::task::spawn_blocking(move || {
            for pid in processes_of(session, &descendants) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        })
        .await;
        match exited {
            Ok(status) => status,
            Err(_) => {
                let _ = self.inner.start_kill();
                self.inner.wait().await
            }
        }
    }
}

/// The processes in `session`, those below its leader, and those of
/// `known` still alive (found earlier, before they were reparented). The
/// leader goes first, so it cannot start more. Blocking: reads /proc.
fn processes_of(session: Pid, known: &[Pid]) -> Vec<Pid> {
    let mut system = System::new();
    system.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::nothing());
    let processes = system.processes();
    let leader = sysinfo::Pid::from_u32(session.as_raw_nonzero().get().cast_unsigned());
    let mut found: Vec<sysinfo::Pid> = vec![leader];
    let mut next = 0;
    while let Some(&parent) = found.get(next) {
        let children: Vec<sysinfo::Pid> = processes
            .iter()
            .filter(|(pid, process)| process.parent() == Some(parent) && !found.contains(pid))
            .map(|(pid, _)| *pid)
            .collect();
        found.extend(children);
        next += 1;
    }
    let in_session = processes
        .iter()
        .filter(|(_, process)| process.session_id() == Some(leader))
        .map(|(pid, _)| *pid);
    let still_known = known
        .iter()
        .map(|pid| sysinfo::Pid::from_u32(pid.as_raw_nonzero().get().cast_unsigned()));
    let mut rest: Vec<sysinfo::Pid> = in_session
        .chain(still_known)
        .filter(|pid| !found.contains(pid))
        .collect();
    rest.sort_unstable();
    rest.dedup();
    found.extend(rest);
    found
        .into_iter()
        .filter(|pid| processes.contains_key(pid))
        .filter_map(|pid| Pid::from_raw(pid.as_u32().cast_signed()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const SIZE: Size = Size {
        cols: 120,
        rows: 40,
    };

    async fn output(reader: &mut Reader) -> String {
        let mut output = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut output))
            .await
            .expect("the output ends")
            .expect("read");
        String::from_utf8_lossy(&output).into_owned()
    }

    #[tokio::test]
    async fn the_command_sees_the_terminal_and_its_size() {
        let command = Command::new("sh", vec!["-c".into(), "stty size".into()], SIZE);
        let mut terminal = spawn(command).expect("spawn");
        let status = terminal.child.wait().await.expect("wait");
        assert!(status.success());
        assert_eq!(output(&mut terminal.reader).await.trim(), "40 120");
    }

    /// Reads until the output so far contains `wanted`.
    async fn read_until(reader: &mut Reader, wanted: &str) -> String {
        let mut seen = Vec::new();
        let mut buffer = [0; 256];
        while !String::from_utf8_lossy(&seen).contains(wanted) {
            let read = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buffer))
                .await
                .expect("output within 10 s")
                .expect("read");
            assert_ne!(read, 0, "ended early: {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[tokio::test]
    async fn input_reaches_the_command_and_a_resize_its_terminal() {
        let script = "read line; echo \"got $line\"; read again; stty size; echo \"$TERM\"";
        let command =
            Command::new("sh", vec!["-c".into(), script.into()], SIZE).env("TERM", "xterm-test");
        let mut terminal = spawn(command).expect("spawn");
        terminal.writer.write_all(b"hello\n").await.expect("write");
        // The terminal echoes the input, with CR LF for LF.
        let seen = read_until(&mut terminal.reader, "got hello\r\n").await;
        assert!(seen.starts_with("hello\r\n"), "{seen:?}");
        terminal
            .writer
            .resize(Size {
                cols: 100,
                rows: 30,
            })
            .expect("resize");
        terminal.writer.write_all(b"\n").await.expect("write");
        let output = output(&mut terminal.reader).await;
        assert_eq!(output, "\r\n30 100\r\nxterm-test\r\n");
        assert!(terminal.child.wait().await.expect("wait").success());
    }

    #[tokio::test]
    async fn hanging_up_ends_the_command_and_what_it_started() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pids = dir.path().join("pids");
        // One job ignores SIGHUP: it is killed after the grace time.
        let script = format!(
            "(trap '' HUP; sleep 100) & echo $! > {pids}; sleep 100 & echo $! >> {pids}; echo started; wait",
            pids = pids.display()
        );
        let command = Command::new("sh", vec!["-c".into(), script], SIZE);
        let mut terminal = spawn(command).expect("spawn");
        read_until(&mut terminal.reader, "started").await;
        let jobs: Vec<u32> = std::fs::read_to_string(&pids)
            .expect("pids")
            .lines()
            .map(|pid| pid.parse().expect("a pid"))
            .collect();
        assert_eq!(jobs.len(), 2);
        let status = terminal.child.hang_up().await.expect("hang up");
        assert!(!status.success());
        for pid in jobs {
            // Killed; reaped by whoever adopted it, maybe a moment later.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ")
            {
                assert!(std::time::Instant::now() < deadline, "{pid} still runs");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(output(&mut terminal.reader).await.trim(), "");
    }

    #[test]
    fn the_login_shell_comes_from_the_password_file() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      # not an account\n\
                      edge:x:1000:1000:Edge,,,:/home/edge:\n";
        assert_eq!(
            Account::find(passwd, 0),
            Some(Account {
                name: "root",
                home: "/root",
                shell: "/bin/bash"
            })
        );
        assert_eq!(
            Account::find(passwd, 1000).map(|a| a.shell),
            Some("/bin/sh")
        );
        assert_eq!(Account::find(passwd, 7), None);
        let shell = Command::login_shell(SIZE);
        assert!(shell.arg0.is_some_and(|arg0| arg0.starts_with('-')));
        assert!(shell.cwd.is_some());
    }
}
