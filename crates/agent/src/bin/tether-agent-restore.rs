//! tether-agent-restore: restore-command's SFTP and SQLite work, run by
//! tether-agent for one step at a time (ADR 0020, `restore::helper`). It
//! reads one JSON step on stdin, the SFTP password with it, and prints one
//! JSON line: `{"bytes":N}`, or `{"status":…,"message":"…"}` and exit 1.

use std::io::Read as _;
use std::process::ExitCode;

use tether_agent::restore::helper::{Done, Step, StepFailure};
use tether_agent::restore::sftp::SftpError;
use tether_agent::restore::sqlite::{self, SqliteError};

fn main() -> ExitCode {
    let (answer, code) = match run() {
        Ok(bytes) => (serde_json::to_string(&Done { bytes }), ExitCode::SUCCESS),
        Err(failure) => (serde_json::to_string(&failure), ExitCode::FAILURE),
    };
    match answer {
        Ok(line) => {
            println!("{line}");
            code
        }
        Err(error) => {
            eprintln!("tether-agent-restore: cannot write the answer: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<u64, StepFailure> {
    if std::env::args_os().len() > 1 {
        return Err(failure(
            400,
            "tether-agent-restore takes no arguments: tether-agent writes the step as JSON on its stdin",
        ));
    }
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| failure(500, format!("cannot read the step on stdin: {e}")))?;
    // Only where it went wrong: serde's message may quote a value, and the
    // input holds the password.
    let step: Step = serde_json::from_slice(&input).map_err(|e| {
        failure(
            400,
            format!(
                "the input on stdin is not a restore step ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    })?;
    // One thread: the helper does one transfer; SQLite's work goes to the
    // blocking pool so the SSH session keeps answering meanwhile.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failure(500, format!("cannot start the async runtime: {e}")))?
        .block_on(work(step))
}

async fn work(step: Step) -> Result<u64, StepFailure> {
    match step {
        Step::Backup {
            server,
            database,
            copy,
            remote_path,
        } => {
            // Connected first: a wrong server or password fails before the copy.
            let connection = server.connect().await.map_err(sftp)?;
            let target = copy.clone();
            blocking(move || sqlite::backup(&database, &target)).await?;
            connection.upload(&copy, &remote_path).await.map_err(sftp)
        }
        Step::Fetch {
            server,
            remote_path,
            target,
        } => {
            let connection = server.connect().await.map_err(sftp)?;
            let bytes = connection
                .download(&remote_path, &target)
                .await
                .map_err(sftp)?;
            drop(connection);
            blocking(move || sqlite::integrity_check(&target)).await?;
            Ok(bytes)
        }
        Step::Replace { restored, live } => {
            let bytes = std::fs::metadata(&restored).map_or(0, |m| m.len());
            blocking(move || sqlite::replace(&restored, &live)).await?;
            Ok(bytes)
        }
    }
}

async fn blocking(
    work: impl FnOnce() -> Result<(), SqliteError> + Send + 'static,
) -> Result<(), StepFailure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| {
            failure(
                500,
                format!("the SQLite work stopped before finishing: {e}"),
            )
        })?
        .map_err(|e| failure(e.status_code(), e.to_string()))
}

fn sftp(error: SftpError) -> StepFailure {
    failure(error.status_code(), error.to_string())
}

fn failure(status: u16, message: impl Into<String>) -> StepFailure {
    StepFailure {
        status,
        message: message.into(),
    }
}
