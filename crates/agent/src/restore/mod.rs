//! restore-command's building blocks (ADR 0020): a consistent copy of a
//! SQLite database while its application writes ([`sqlite`]), and moving it
//! to and from an SFTP server whose host key is pinned ([`sftp`]), and
//! finding the Deployment's file on the node ([`volume`]). The agent
//! runs [`sftp`] and [`sqlite`] in the `tether-agent-restore` binary
//! ([`helper`]), never in its own process.

pub mod helper;
pub mod sftp;
pub mod sqlite;
pub mod volume;
