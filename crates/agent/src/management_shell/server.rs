//! The embedded SSH server of `tether-agent-shell` (russh): public-key and
//! password login as [`Settings`] allow, then per session channel one
//! command (`exec`) or a shell, started in the work dir with `HOME` there.
//! Used only by the helper binary, so russh's server stays out of the
//! agent's own binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::Settings;
use crate::terminal::{self, Size};

/// What a client whose command is not UTF-8 reads on stderr before the
/// refusal.
const NOT_UTF8: &str = "tether-agent-shell: cannot run the command: it is not valid UTF-8; send the command as UTF-8 text\r\n";

/// OpenSSH's default `MaxAuthTries`.
const MAX_AUTH_ATTEMPTS: usize = 6;
/// A refused login is answered after this long, whatever was wrong.
const REJECTION_TIME: Duration = Duration::from_millis(500);
/// How often a silent client is asked whether it is still there; three
/// unanswered keepalives end the connection (a vanished network), while
/// an idle interactive session that answers lives on.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// How long a connection whose client has gone has to end by itself
/// before the helper ends it ([`client_gone`]).
const GONE_GRACE: Duration = Duration::from_secs(5);
/// The shells tried in order for a login shell.
const SHELLS: [&str; 2] = ["/bin/bash", "/bin/sh"];
/// How many messages russh queues on a channel for its reader
/// (`channel_buffer_size`); one more waits for room, and the whole
/// connection with it: every channel, the keepalives, noticing that the
/// client left.
const CHANNEL_BUFFER: usize = 128;
/// The messages a session channel may get before it runs something (its
/// queue is read only then): well under [`CHANNEL_BUFFER`]; one more
/// closes the channel. A client sends a few (`pty-req`, an `env` per
/// `SendEnv` variable).
const MAX_PENDING_MESSAGES: usize = CHANNEL_BUFFER / 2;
/// Session channels open at once and not yet running anything (OpenSSH's
/// `MaxSessions`): each may hold [`MAX_PENDING_MESSAGES`] packets of data.
const MAX_PENDING_CHANNELS: usize = 10;
/// Environment variables a client may set (`SendEnv`), as OpenSSH's
/// Debian default `AcceptEnv LANG LC_*`, plus the terminal's name.
fn accepted_env(name: &str) -> bool {
    name == "TERM" || name == "LANG" || name.starts_with("LC_")
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the SSH connection failed")]
    Ssh(#[from] russh::Error),
    #[error(
        "no login within {seconds} s: the connection is closed (the agent's --shell-login-timeout-seconds)"
    )]
    NoLogin { seconds: u64 },
    #[error("the work dir {path} cannot be created")]
    WorkDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Serves one SSH connection on `stream` until the client leaves.
pub async fn serve(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    settings: Settings,
    host_key: PrivateKey,
) -> Result<(), ServerError> {
    prepare_work_dir(&settings.work_dir)?;
    // A session without it is still of use, and lets the user remove
    // what stood in the way.
    if let Some(kubeconfig) = &settings.kubeconfig
        && let Err(error) = write_kubeconfig(&settings.work_dir, kubeconfig)
    {
        tracing::warn!(
            "{}; sessions start without the cluster's kubeconfig",
            tether_proto::error_chain(&error)
        );
    }
    let from_file = settings
        .authorized_keys_file
        .as_deref()
        .map(authorized_keys_in)
        .unwrap_or_default();
    let keys = settings
        .authorized_keys
        .iter()
        .chain(&from_file)
        .filter_map(|line| match PublicKey::from_openssh(line) {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::warn!(%error, "an authorized key is not an OpenSSH public key; skipped");
                None
            }
        })
        .collect();
    let password = match (&settings.password_hash, &settings.password_file) {
        (Some(hash), _) => Some(Arc::new(Password::Hash(hash.clone()))),
        (None, Some(file)) => password_in(file).map(|p| Arc::new(Password::Clear(p))),
        (None, None) => None,
    };
    let mut methods = vec![MethodKind::PublicKey];
    if password.is_some() {
        methods.push(MethodKind::Password);
    }
    let config = russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-tether-agent-shell_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&methods[..]),
        auth_rejection_time: REJECTION_TIME,
        // OpenSSH's clients ask with "none" first, to learn the methods.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: MAX_AUTH_ATTEMPTS,
        // Interactive shells sit idle for long; a vanished client is
        // found by the keepalives instead, one that never logs in by the
        // login timeout.
        inactivity_timeout: None,
        keepalive_interval: Some(KEEPALIVE),
        channel_buffer_size: CHANNEL_BUFFER,
        nodelay: true,
        ..Default::default()
    };
    let login_timeout = settings.login_timeout_seconds;
    let (logged_in, login) = tokio::sync::oneshot::channel();
    let handler = Connection {
        settings: Arc::new(settings),
        keys,
        password,
        user: String::new(),
        channels: HashMap::new(),
        logged_in: Some(logged_in),
    };
    // run_stream waits for the client's first bytes already.
    let connection = async {
        russh::server::run_stream(Arc::new(config), stream, handler)
            .await?
            .await
    };
    tokio::select! {
        ended = connection => Ok(ended?),
        () = no_login(login, Duration::from_secs(login_timeout)) => {
            Err(ServerError::NoLogin { seconds: login_timeout })
        }
    }
}

/// Completes when `timeout` passed before `login` came; never once it came,
/// so a logged-in connection lasts as long as its client.
async fn no_login(login: tokio::sync::oneshot::Receiver<()>, timeout: Duration) {
    if tokio::time::timeout(timeout, login).await.is_ok() {
        // Logged in, or the connection ended before (it ends serve).
        std::future::pending::<()>().await;
    }
}

/// Returns once the client has gone (its end of the connection's socket
/// `socket`, a duplicate of the one served, is shut or closed) and
/// [`GONE_GRACE`] has passed; never if the socket cannot be watched. A
/// connection normally ends by itself first; one stuck (a command that
/// reads none of the stdin sent to it fills russh's queue for its channel,
/// and russh then reads nothing more, not even the client leaving) would
/// otherwise keep the helper and its commands forever.
pub async fn client_gone(socket: std::os::fd::OwnedFd) {
    use tokio::io::Interest;
    let watched = tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(socket));
    let watched = match watched {
        Ok(watched) => watched,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the connection for the client leaving");
            return std::future::pending().await;
        }
    };
    loop {
        let Ok(ready) = watched.ready(Interest::READABLE).await else {
            return std::future::pending().await;
        };
        if ready.is_read_closed() {
            break;
        }
        // Readable alone is the client's bytes, russh's to read: only
        // forgotten, until the next change.
        let _ = watched.try_io(Interest::READABLE, || {
            Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
        });
    }
    tokio::time::sleep(GONE_GRACE).await;
}

/// Creates the work dir (0700) if it is missing; an existing one is left
/// as its owner made it.
fn prepare_work_dir(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| ServerError::WorkDir {
            path: path.display().to_string(),
            source,
        })
}

/// The lines of an OpenSSH `authorized_keys` file that hold a key
/// (comments and blank lines skipped); none if it cannot be read (an
/// optional Secret not created: no key logs in).
fn authorized_keys_in(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
            .collect(),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "no authorized keys file: no key logs in through it");
            Vec::new()
        }
    }
}

/// The password a file holds, without its line end; none if the file
/// cannot be read or is empty (password login stays off).
fn password_in(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_owned()).filter(|p| !p.is_empty()),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "no password file: password login is off");
            None
        }
    }
}

/// Why the cluster's kubeconfig was not written.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot write the cluster's kubeconfig {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "will not write the cluster's kubeconfig into {path}: it is {found}, not a directory of this user's; remove it and log in again, which makes it anew"
    )]
    Refused { path: String, found: String },
}

/// Writes the cluster's kubeconfig to `WORK_DIR/.kube/config`, 0600,
/// whole, replacing the previous connection's: its token may have expired
/// since.
///
/// The work dir is the shell users' home, so a link may stand at any name
/// in it: `.kube` is opened without following one and must be a directory
/// of this user's (made 0700); everything after is relative to that open
/// directory, so no path can be swapped in between. The file is created
/// new under a random name (a link or file planted at a guessable name
/// changes nothing) and renamed over `config`, which replaces a link
/// there instead of writing through it.
fn write_kubeconfig(work_dir: &Path, kubeconfig: &str) -> Result<(), KubeconfigError> {
    use rustix::fs::{
        AtFlags, CWD, FileType, Mode, OFlags, mkdirat, openat, renameat, statat, unlinkat,
    };
    use std::io::Write as _;
    let kube_path = work_dir.join(".kube");
    let path = kube_path.join("config");
    let failed = |error: rustix::io::Errno| KubeconfigError::Write {
        path: path.display().to_string(),
        source: error.into(),
    };
    let directory = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let work = openat(CWD, work_dir, directory, Mode::empty()).map_err(failed)?;
    match mkdirat(&work, ".kube", Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(error) => return Err(failed(error)),
    }
    let refused = |found: String| KubeconfigError::Refused {
        path: kube_path.display().to_string(),
        found,
    };
    let ours = rustix::process::geteuid().as_raw();
    let kube = match openat(&work, ".kube", directory | OFlags::NOFOLLOW, Mode::empty()) {
        Ok(kube) => kube,
        // A link or a file: say which.
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            let stat = statat(&work, ".kube", AtFlags::SYMLINK_NOFOLLOW).map_err(failed)?;
            let found = unfit_kube_dir(FileType::from_raw_mode(stat.st_mode), stat.st_uid, ours)
                .unwrap_or_else(|| "being replaced".to_owned());
            return Err(refused(found));
        }
        Err(error) => return Err(failed(error)),
    };
    let stat = rustix::fs::fstat(&kube).map_err(failed)?;
    if let Some(found) = unfit_kube_dir(FileType::from_raw_mode(stat.st_mode), stat.st_uid, ours) {
        return Err(refused(found));
    }
    if stat.st_mode & 0o7777 != 0o700 {
        rustix::fs::fchmod(&kube, Mode::from_raw_mode(0o700)).map_err(failed)?;
    }
    let partial = format!(".config.{:016x}", rand::random::<u64>());
    let written = openat(
        &kube,
        &partial,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(std::io::Error::from)
    .and_then(|file| std::fs::File::from(file).write_all(kubeconfig.as_bytes()))
    .and_then(|()| renameat(&kube, &partial, &kube, "config").map_err(std::io::Error::from));
    if let Err(source) = written {
        let _ = unlinkat(&kube, &partial, AtFlags::empty());
        return Err(KubeconfigError::Write {
            path: path.display().to_string(),
            source,
        });
    }
    Ok(())
}

/// What `.kube` is when it cannot hold the kubeconfig (its type, not
/// following a link, and owner), or none when it is a directory owned by
/// `ours`.
fn unfit_kube_dir(kind: rustix::fs::FileType, owner: u32, ours: u32) -> Option<String> {
    use rustix::fs::FileType;
    match kind {
        FileType::Directory if owner == ours => None,
        FileType::Directory => Some(format!("owned by uid {owner}")),
        FileType::Symlink => Some("a symbolic link".to_owned()),
        _ => Some("not a directory".to_owned()),
    }
}

/// The password that may log in, as the connection's settings gave it.
enum Password {
    /// tetherd's hash of the device's password ([`tether_proto::password`]).
    Hash(String),
    /// The listener's password file's content.
    Clear(String),
}

impl Password {
    /// Whether `attempt` is the password; slow for a hash (PBKDF2).
    fn matches(&self, attempt: &str) -> bool {
        use sha2::Digest as _;
        match self {
            Password::Hash(hash) => tether_proto::password::verify(attempt, hash),
            // Digests compared, so the time taken tells nothing about how
            // much of the password an attempt got right.
            Password::Clear(password) => {
                sha2::Sha256::digest(attempt.as_bytes())
                    == sha2::Sha256::digest(password.as_bytes())
            }
        }
    }
}

struct Connection {
    settings: Arc<Settings>,
    keys: Vec<PublicKey>,
    password: Option<Arc<Password>>,
    /// The name the client logged in with.
    user: String,
    /// Session channels opened and not yet running anything.
    channels: HashMap<ChannelId, Pending>,
    /// Told once the client logged in: the login timeout stops.
    logged_in: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A session channel until it runs something: what the client asked for.
struct Pending {
    channel: Channel<Msg>,
    /// Accepted `env` requests.
    env: Vec<(String, String)>,
    /// A `pty-req`: a terminal of this type and size.
    terminal: Option<(String, Size)>,
    /// How many messages russh queued on `channel` so far.
    queued: usize,
}

impl Connection {
    fn authorized(&self, key: &PublicKey) -> bool {
        self.keys
            .iter()
            .any(|known| known.key_data() == key.key_data())
    }

    /// Counts a message russh queued on `channel` (a request or data);
    /// the pending channel that got too many is dropped, so that its
    /// queue never fills, and closed. Whether it is still pending.
    fn queued(&mut self, channel: ChannelId, session: &mut Session) -> bool {
        let Some(pending) = self.channels.get_mut(&channel) else {
            return false;
        };
        pending.queued += 1;
        if pending.queued <= MAX_PENDING_MESSAGES {
            return true;
        }
        tracing::info!(
            user = self.user.as_str(),
            "a session channel sent {MAX_PENDING_MESSAGES} messages without running anything: closed"
        );
        self.channels.remove(&channel);
        let _ = session.close(channel);
        false
    }

    /// A reply to a channel request; a channel already gone gets none.
    fn reply(session: &mut Session, channel: ChannelId, ok: bool) -> Result<(), russh::Error> {
        if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.authorized(offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.authorized(key.public_key) {
            return Ok(Auth::reject());
        }
        tracing::info!(
            user,
            key = %key.public_key.fingerprint(Default::default()),
            "management shell login with a key"
        );
        self.user = user.to_owned();
        Ok(Auth::Accept)
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let Some(known) = self.password.clone() else {
            return Ok(Auth::reject());
        };
        let attempt = password.to_owned();
        // PBKDF2: off the connection's task.
        let matches = tokio::task::spawn_blocking(move || known.matches(&attempt))
            .await
            .unwrap_or(false);
        if !matches {
            tracing::info!(user, "management shell password refused");
            return Ok(Auth::reject());
        }
        tracing::info!(user, "management shell login with the password");
        self.user = user.to_owned();
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(logged_in) = self.logged_in.take() {
            let _ = logged_in.send(());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.channels.len() >= MAX_PENDING_CHANNELS {
            tracing::info!(
                user = self.user.as_str(),
                "a session channel refused: {MAX_PENDING_CHANNELS} are open and run nothing yet"
            );
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        self.channels.insert(
            channel.id(),
            Pending {
                channel,
                env: Vec::new(),
                terminal: None,
                queued: 0,
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let accepted = self.queued(channel, session);
        if let Some(pending) = self.channels.get_mut(&channel) {
            pending.terminal = Some((term.to_owned(), terminal_size(cols, rows)));
        }
        Self::reply(session, channel, accepted)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let accepted = self.queued(channel, session) && accepted_env(name);
        if accepted && let Some(pending) = self.channels.get_mut(&channel) {
            pending.env.push((name.to_owned(), value.to_owned()));
        }
        Self::reply(session, channel, accepted)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        command: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Run as given or not at all: replacing bytes that are not UTF-8
        // would run another command than the one sent.
        let Ok(command) = std::str::from_utf8(command) else {
            tracing::info!(
                user = self.user.as_str(),
                "a command refused: it is not UTF-8"
            );
            if self.queued(channel, session) {
                session.extended_data(channel, 1, NOT_UTF8.as_bytes().to_vec())?;
            }
            return Self::reply(session, channel, false);
        };
        let started = self.start(channel, Some(command.to_owned()));
        Self::reply(session, channel, started)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let started = self.start(channel, None);
        Self::reply(session, channel, started)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(subsystem = name, "subsystem refused: none is served");
        self.queued(channel, session);
        Self::reply(session, channel, false)
    }

    /// Refused, and said so: russh's default sends no reply, which a
    /// client takes as the answer to its next request (OpenSSH's then
    /// believes X11 is forwarded, even with `ExitOnForwardFailure`).
    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.queued(channel, session);
        Self::reply(session, channel, false)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.queued(channel, session);
        Ok(false)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.queued(channel, session);
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        _signal: russh::Sig,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.queued(channel, session);
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.queued(channel, session);
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        _code: u32,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.queued(channel, session);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.queued(channel, session);
        Ok(())
    }

    /// A channel closed before it ran anything is forgotten: kept, each
    /// such channel would hold its queue until the connection ends.
    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }
}

impl Connection {
    /// Runs `command` (none: a shell) for the channel, on a task of its
    /// own; `false` if the channel is unknown or already runs something.
    fn start(&mut self, channel: ChannelId, command: Option<String>) -> bool {
        let Some(pending) = self.channels.remove(&channel) else {
            return false;
        };
        let mut login = Login {
            user: self.user.clone(),
            work_dir: self.settings.work_dir.clone(),
            env: pending.env,
        };
        match pending.terminal {
            Some((term, size)) => {
                login.env.push(("TERM".to_owned(), term));
                tokio::spawn(run_in_terminal(pending.channel, login, command, size));
            }
            None => {
                tokio::spawn(run(pending.channel, login, command));
            }
        }
        true
    }
}

/// Who runs commands, where, and what the client set (`TERM`, `LANG`).
struct Login {
    /// The client's choice, any text: logged as a quoted string, never
    /// with `%` (a newline in it would forge a log line).
    user: String,
    work_dir: PathBuf,
    env: Vec<(String, String)>,
}

/// A terminal size from a client's request; 0 (unknown) as 80x24.
fn terminal_size(cols: u32, rows: u32) -> Size {
    let cell = |value: u32, default: u16| match value {
        0 => default,
        value => u16::try_from(value).unwrap_or(u16::MAX),
    };
    Size {
        cols: cell(cols, 80),
        rows: cell(rows, 24),
    }
}

/// The shell sessions use: bash where there is one.
fn shell() -> &'static str {
    SHELLS
        .iter()
        .find(|shell| Path::new(shell).is_file())
        .unwrap_or(&SHELLS[SHELLS.len() - 1])
}

/// The device's host name for the prompt.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "tether".to_owned())
}

/// What a login sets on top of `PATH` (the only variable the agent
/// passes to the helper: its own environment may hold its enrollment
/// token), then what the client sent.
fn environment(login: &Login) -> Vec<(String, String)> {
    let work_dir = login.work_dir.display().to_string();
    let mut env = vec![
        ("HOME".to_owned(), work_dir),
        ("USER".to_owned(), login.user.clone()),
        ("LOGNAME".to_owned(), login.user.clone()),
        ("SHELL".to_owned(), shell().to_owned()),
        // bash and sh both expand $PWD in PS1.
        ("PS1".to_owned(), format!("{}:$PWD$ ", hostname())),
    ];
    let kubeconfig = login.work_dir.join(".kube").join("config");
    if kubeconfig.is_file() {
        env.push(("KUBECONFIG".to_owned(), kubeconfig.display().to_string()));
    }
    env.extend(login.env.iter().cloned());
    env
}

/// `command` (none: an interactive shell) by the shell, with pipes.
fn command(login: &Login, command: Option<&str>) -> tokio::process::Command {
    let mut process = tokio::process::Command::new(shell());
    if let Some(command) = command {
        process.args(["-c", command]);
    }
    process
        .envs(environment(login))
        .current_dir(&login.work_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    process
}

/// One channel's command (none: a shell) in a terminal: its output goes
/// back as data, the client's data is typed into it, a window change
/// resizes it; the client closing the channel hangs it up.
async fn run_in_terminal(
    channel: Channel<Msg>,
    login: Login,
    command_line: Option<String>,
    size: Size,
) {
    let (mut reader, writer) = channel.split();
    let args = command_line
        .iter()
        .flat_map(|command| ["-c".to_owned(), command.clone()])
        .collect();
    let mut command = terminal::Command::new(shell(), args, size);
    command.env = environment(&login);
    command.cwd = Some(login.work_dir.clone());
    let terminal = match terminal::spawn(command) {
        Ok(terminal) => terminal,
        Err(error) => {
            let message = format!(
                "tether-agent-shell: {}\r\n",
                tether_proto::error_chain(&error)
            );
            let _ = writer.data(message.as_bytes()).await;
            let _ = writer.exit_status(127).await;
            let _ = writer.eof().await;
            let _ = writer.close().await;
            return;
        }
    };
    tracing::info!(
        user = login.user.as_str(),
        command = command_line.as_deref().unwrap_or("(shell)"),
        "management shell runs in a terminal"
    );
    let terminal::Terminal {
        reader: mut output,
        writer: mut input,
        mut child,
    } = terminal;
    let mut to_client = Box::pin(writer.make_writer());
    // The terminal's output ends (EIO) once everything holding it exited.
    let ran = async {
        let (_, status) = tokio::join!(tokio::io::copy(&mut output, &mut to_client), child.wait());
        status
    };
    let typed = async {
        while let Some(message) = reader.wait().await {
            match message {
                ChannelMsg::Data { data } if input.write_all(&data).await.is_err() => break,
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                } => {
                    let _ = input.resize(terminal_size(col_width, row_height));
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    let status = tokio::select! {
        status = ran => status,
        () = typed => {
            tracing::info!(user = login.user.as_str(), "the client closed the channel: the terminal hangs up");
            let _ = child.hang_up().await;
            return;
        }
    };
    finish(&writer, status).await;
}

/// One channel's command: the client's data is its stdin, its stdout and
/// stderr go back as data and extended data, its exit status last. The
/// client closing the channel first kills it.
async fn run(channel: Channel<Msg>, login: Login, command_line: Option<String>) {
    let (mut reader, writer) = channel.split();
    let mut process = command(&login, command_line.as_deref());
    let mut child = match process.spawn() {
        Ok(child) => child,
        Err(error) => {
            let mut stderr = Box::pin(writer.make_writer_ext(Some(1)));
            let _ = stderr
                .write_all(
                    format!("tether-agent-shell: cannot start {}: {error}\r\n", shell()).as_bytes(),
                )
                .await;
            let _ = writer.exit_status(127).await;
            let _ = writer.eof().await;
            let _ = writer.close().await;
            return;
        }
    };
    tracing::info!(
        user = login.user.as_str(),
        command = command_line.as_deref().unwrap_or("(shell)"),
        "management shell runs"
    );
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut to_stdout = Box::pin(writer.make_writer());
    let mut to_stderr = Box::pin(writer.make_writer_ext(Some(1)));
    let output = async {
        let out = async {
            if let Some(mut pipe) = stdout {
                let _ = tokio::io::copy(&mut pipe, &mut to_stdout).await;
            }
        };
        let err = async {
            if let Some(mut pipe) = stderr {
                let _ = tokio::io::copy(&mut pipe, &mut to_stderr).await;
            }
        };
        tokio::join!(out, err);
        child.wait().await
    };
    let input = async {
        while let Some(message) = reader.wait().await {
            match message {
                ChannelMsg::Data { data } => {
                    if let Some(pipe) = stdin.as_mut()
                        && pipe.write_all(&data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                ChannelMsg::Eof => stdin = None,
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    };
    let status = tokio::select! {
        status = output => status,
        () = input => {
            tracing::info!(user = login.user.as_str(), "the client closed the channel: the command is stopped");
            return;
        }
    };
    finish(&writer, status).await;
}

/// Sends the command's exit status and closes the channel.
async fn finish(
    writer: &russh::ChannelWriteHalf<Msg>,
    status: std::io::Result<std::process::ExitStatus>,
) {
    let code = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            // A signal as a shell reports it: 128 + its number.
            status
                .code()
                .or_else(|| status.signal().map(|signal| 128 + signal))
                .unwrap_or(1)
        }
        Err(_) => 1,
    };
    let _ = writer.exit_status(u32::try_from(code).unwrap_or(1)).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_is_the_clients_size_or_80x24_when_it_sends_none() {
        assert_eq!(
            terminal_size(120, 40),
            Size {
                cols: 120,
                rows: 40
            }
        );
        assert_eq!(terminal_size(0, 0), Size { cols: 80, rows: 24 });
        assert_eq!(terminal_size(1 << 20, 30).cols, u16::MAX);
    }

    #[test]
    fn the_listeners_files_give_keys_and_a_password_and_nothing_when_missing() {
        let dir = tempfile::tempdir().expect("a dir");
        let keys = dir.path().join("authorized_keys");
        std::fs::write(
            &keys,
            "# mine\n\nssh-ed25519 AAAA me@laptop\n  ssh-ed25519 BBBB\n",
        )
        .expect("written");
        assert_eq!(
            authorized_keys_in(&keys),
            ["ssh-ed25519 AAAA me@laptop", "ssh-ed25519 BBBB"]
        );
        assert!(authorized_keys_in(&dir.path().join("missing")).is_empty());

        let file = dir.path().join("password");
        std::fs::write(&file, "correct horse\n").expect("written");
        let password = Password::Clear(password_in(&file).expect("a password"));
        assert!(password.matches("correct horse"));
        assert!(!password.matches("correct horse\n"));
        assert!(!password.matches("correct"));
        std::fs::write(&file, "\n").expect("emptied");
        assert!(password_in(&file).is_none());
        assert!(password_in(&dir.path().join("missing")).is_none());
    }

    /// The mode bits of `path`, not following a link.
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::symlink_metadata(path)
            .expect("there")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn the_kubeconfig_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("a dir");
        let kube = dir.path().join(".kube");
        // A .kube of ours made too open is made private.
        std::fs::create_dir(&kube).expect("made");
        std::fs::set_permissions(&kube, std::fs::Permissions::from_mode(0o755)).expect("opened");
        // A file at the name the writer once used: taken for nothing.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").expect("written");
        let guessed = kube.join(format!("config.partial-{}", std::process::id()));
        std::os::unix::fs::symlink(&elsewhere, &guessed).expect("planted");

        write_kubeconfig(dir.path(), "first").expect("written");
        write_kubeconfig(dir.path(), "second").expect("replaced");
        let path = kube.join("config");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "second");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&kube), 0o700);
        assert_eq!(
            std::fs::read_to_string(&elsewhere).expect("read"),
            "untouched"
        );
        let mut entries: Vec<_> = std::fs::read_dir(&kube)
            .expect("listed")
            .map(|entry| entry.expect("an entry").file_name())
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            [
                std::ffi::OsString::from("config"),
                guessed.file_name().expect("named").into()
            ],
            "no partial file left"
        );
    }

    #[test]
    fn a_link_at_config_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().expect("a dir");
        let target = dir.path().join("target");
        std::fs::write(&target, "untouched").expect("written");
        let kube = dir.path().join("work").join(".kube");
        std::fs::create_dir_all(&kube).expect("made");
        std::os::unix::fs::symlink(&target, kube.join("config")).expect("planted");

        write_kubeconfig(&dir.path().join("work"), "token").expect("written");
        let config = kube.join("config");
        assert!(
            std::fs::symlink_metadata(&config)
                .expect("there")
                .file_type()
                .is_file(),
            "a file of its own now"
        );
        assert_eq!(std::fs::read_to_string(&config).expect("read"), "token");
        assert_eq!(mode(&config), 0o600);
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "untouched");
    }

    #[test]
    fn a_kube_dir_that_is_a_link_or_a_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("a dir");
        let target = dir.path().join("target");
        std::fs::create_dir(&target).expect("made");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).expect("made");
        std::os::unix::fs::symlink(&target, work.join(".kube")).expect("planted");

        let error = write_kubeconfig(&work, "token").expect_err("refused");
        assert_eq!(
            error.to_string(),
            format!(
                "will not write the cluster's kubeconfig into {}: it is a symbolic link, not a directory of this user's; remove it and log in again, which makes it anew",
                work.join(".kube").display()
            )
        );
        assert_eq!(
            std::fs::read_dir(&target).expect("listed").count(),
            0,
            "nothing written through the link"
        );

        std::fs::remove_file(work.join(".kube")).expect("removed");
        std::fs::write(work.join(".kube"), "a file").expect("written");
        let error = write_kubeconfig(&work, "token").expect_err("refused");
        assert!(
            error.to_string().contains("it is not a directory"),
            "{error}"
        );
        std::fs::remove_file(work.join(".kube")).expect("removed");
        write_kubeconfig(&work, "token").expect("made anew");
        assert_eq!(mode(&work.join(".kube")), 0o700);
    }

    #[test]
    fn only_a_directory_of_ours_holds_the_kubeconfig() {
        use rustix::fs::FileType;
        assert_eq!(unfit_kube_dir(FileType::Directory, 1000, 1000), None);
        assert_eq!(
            unfit_kube_dir(FileType::Directory, 0, 1000).as_deref(),
            Some("owned by uid 0")
        );
        assert_eq!(
            unfit_kube_dir(FileType::Symlink, 1000, 1000).as_deref(),
            Some("a symbolic link")
        );
        assert_eq!(
            unfit_kube_dir(FileType::RegularFile, 1000, 1000).as_deref(),
            Some("not a directory")
        );
    }

    #[test]
    fn clients_may_set_the_terminal_and_the_locale_only() {
        for name in ["TERM", "LANG", "LC_ALL", "LC_CTYPE"] {
            assert!(accepted_env(name), "{name}");
        }
        for name in ["PATH", "LD_PRELOAD", "HOME", "TETHER_ENROLL_TOKEN"] {
            assert!(!accepted_env(name), "{name}");
        }
    }
}
