//! `tether sessions list|revoke`: who is logged in, and ending their sessions.

use chrono::{DateTime, Utc};
use tether_proto::api::Session;

use super::{CommandError, Context, Outcome};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  tether sessions list
  tether sessions revoke 0193a1f2-…

Admins only. Tokens are never shown; a session is named by its id.";
const LIST_EXAMPLES: &str = "\
Examples:
  tether sessions list
  tether sessions list -o json";
const REVOKE_EXAMPLES: &str = "\
Examples:
  tether sessions revoke 0193a1f2-7c1e-7d3a-9f00-5b6c1d2e3f40";

/// List and revoke login sessions (admins only).
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum Sessions {
    /// List every session, newest first; `*` marks your own.
    #[command(after_long_help = LIST_EXAMPLES)]
    List,
    /// Revoke a session: its token stops working at once.
    #[command(after_long_help = REVOKE_EXAMPLES)]
    Revoke {
        /// The session's id, from `tether sessions list`.
        id: String,
    },
}

impl Sessions {
    pub fn description(&self) -> String {
        match self {
            Sessions::List => "list sessions".to_owned(),
            Sessions::Revoke { id } => format!("revoke session {id}"),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            Sessions::List => {
                let sessions = client.list_sessions().await?;
                if sessions.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!("No sessions.");
                    return Ok(Outcome::Success);
                }
                let now = Utc::now();
                output::print(ctx.output, &sessions, |sessions: &Vec<Session>| {
                    table(now, sessions)
                })?;
            }
            Sessions::Revoke { id } => {
                client.revoke_session(&id).await?;
                output::emit(&format!("Revoked session {id}."))?;
            }
        }
        Ok(Outcome::Success)
    }
}

fn table(now: DateTime<Utc>, sessions: &[Session]) -> String {
    output::columns(
        ["ID", "USER", "CREATED", "LAST USED", "EXPIRES"],
        sessions
            .iter()
            .map(|s| {
                [
                    if s.current {
                        format!("{} *", s.id)
                    } else {
                        s.id.clone()
                    },
                    s.username.clone(),
                    output::age(now, s.created_at),
                    output::age(now, s.last_used_at),
                    output::timestamp(s.expires_at),
                ]
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn the_session_table_marks_the_callers_own_and_shows_no_token() {
        let at = DateTime::from_timestamp(1_000_000, 0).expect("valid");
        let session = |id: &str, current| Session {
            id: id.into(),
            username: "admin".into(),
            created_at: at,
            expires_at: at + TimeDelta::hours(12),
            last_used_at: at,
            current,
        };
        let rendered = table(
            at + TimeDelta::seconds(90),
            &[session("s-1", true), session("s-2", false)],
        );
        assert!(rendered.contains("s-1 *"), "{rendered}");
        assert!(!rendered.contains("s-2 *"), "{rendered}");
        assert!(rendered.contains("LAST USED"), "{rendered}");
    }
}
