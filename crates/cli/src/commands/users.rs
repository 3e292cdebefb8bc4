//! `tether users create|list|delete|set-role` (admins only): people and their
//! roles; `tether users passwd`: your own password.

use std::io::IsTerminal as _;

use tether_proto::accounts::{ChangePassword, CreateUser, Role, User};

use super::{CommandError, Context, Outcome, login};
use crate::output::{self, OutputFormat};

const EXAMPLES: &str = "\
Examples:
  tether users create alice --role operator
  printf '%s\\n' \"$PASS\" | tether users create ci-reader --role viewer --password-stdin
  tether users list
  tether users set-role alice admin
  tether users delete alice
  tether users passwd

Roles: admin (everything), operator (runs the fleet: devices, actions, jobs,
tunnels, shells, logs), viewer (reads the fleet). docs/roles.md lists every
route. The last admin can be neither deleted nor given another role.";

/// Manage users and their roles (admins only), or change your own password.
#[derive(Debug, clap::Subcommand)]
#[command(after_long_help = EXAMPLES)]
pub enum Users {
    /// Create a user; without --password-stdin a password is generated and printed once.
    #[command(
        after_long_help = "Examples:\n  tether users create alice --role operator\n  tether users create bob --role viewer --password-stdin < pass.txt"
    )]
    Create {
        /// The user's name: a-z, 0-9, `.`, `_`, `-`.
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: Role,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users with their roles.
    #[command(after_long_help = "Examples:\n  tether users list\n  tether users list -o json")]
    List,
    /// Delete a user: their sessions end at once.
    #[command(after_long_help = "Examples:\n  tether users delete alice")]
    Delete {
        /// The user's name.
        name: String,
    },
    /// Change your own password; asks for the current one.
    #[command(
        after_long_help = "Examples:\n  tether users passwd\n  printf '%s\\n%s\\n' \"$OLD\" \"$NEW\" | tether users passwd --password-stdin"
    )]
    Passwd {
        /// Read the current password, then the new one, from the first two
        /// lines of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give a user another role; it holds for their open sessions at once.
    #[command(after_long_help = "Examples:\n  tether users set-role alice viewer")]
    SetRole {
        /// The user's name.
        name: String,
        /// admin, operator or viewer.
        role: Role,
    },
}

impl Users {
    pub fn description(&self) -> String {
        match self {
            Users::Create { name, .. } => format!("create user {name}"),
            Users::List => "list users".to_owned(),
            Users::Delete { name } => format!("delete user {name}"),
            Users::SetRole { name, role } => format!("give user {name} the role {role}"),
            Users::Passwd { .. } => "change your password".to_owned(),
        }
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let client = ctx.client()?;
        match self {
            Users::Create {
                name,
                role,
                password_stdin,
            } => {
                let password = if password_stdin {
                    let password = login::read_line(std::io::stdin().lock())?;
                    if password.is_empty() {
                        return Err(CommandError::Usage(
                            "--password-stdin read an empty password; write it on the first line of standard input".to_owned(),
                        ));
                    }
                    Some(password)
                } else {
                    None
                };
                let created = client
                    .create_user(&CreateUser {
                        username: name,
                        role,
                        password,
                    })
                    .await?;
                match &created.password {
                    Some(password) => output::emit(&format!(
                        "Created user {} with role {}. Password (shown once): {password}",
                        created.username, created.role
                    ))?,
                    None => output::emit(&format!(
                        "Created user {} with role {}.",
                        created.username, created.role
                    ))?,
                }
            }
            Users::List => {
                let users = client.list_users().await?;
                if users.is_empty() && ctx.output == OutputFormat::Table {
                    eprintln!("No users.");
                    return Ok(Outcome::Success);
                }
                output::print(ctx.output, &users, |users: &Vec<User>| table(users))?;
            }
            Users::Delete { name } => {
                client.delete_user(&name).await?;
                output::emit(&format!("Deleted user {name}; their sessions ended."))?;
            }
            Users::Passwd { password_stdin } => {
                let (current_password, new_password) = passwords(password_stdin)?;
                client
                    .change_password(&ChangePassword {
                        current_password,
                        new_password,
                    })
                    .await?;
                output::emit("Changed your password; your sessions stay logged in.")?;
            }
            Users::SetRole { name, role } => {
                client.set_user_role(&name, role).await?;
                output::emit(&format!("User {name} now has the role {role}."))?;
            }
        }
        Ok(Outcome::Success)
    }
}

/// The current and the new password: two lines of stdin, or prompts on
/// the terminal with the new one asked twice.
fn passwords(from_stdin: bool) -> Result<(String, String), CommandError> {
    let (current, new) = if from_stdin {
        let mut stdin = std::io::stdin().lock();
        (login::read_line(&mut stdin)?, login::read_line(&mut stdin)?)
    } else if std::io::stdin().is_terminal() {
        let current = login::prompt_hidden("Current password: ")?;
        let new = login::prompt_hidden("New password: ")?;
        if login::prompt_hidden("New password again: ")? != new {
            return Err(CommandError::Usage(
                "the new passwords differ; nothing was changed".to_owned(),
            ));
        }
        (current, new)
    } else {
        return Err(CommandError::Usage(
            "standard input is not a terminal: pass --password-stdin with the current and the new password on two lines".to_owned(),
        ));
    };
    if current.is_empty() || new.is_empty() {
        return Err(CommandError::Usage(
            "a password is empty: give the current password, then the new one".to_owned(),
        ));
    }
    Ok((current, new))
}

fn table(users: &[User]) -> String {
    output::columns(
        ["USERNAME", "ROLE"],
        users
            .iter()
            .map(|user| [user.username.clone(), user.role.to_string()])
            .collect(),
    )
}
