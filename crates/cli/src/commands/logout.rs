//! `tether logout`: end the saved session on tetherd and forget its token.

use super::{CommandError, Context, Outcome};
use crate::client::{ApiClient, ClientError};
use crate::config::CliConfig;
use crate::output;

const EXAMPLES: &str = "\
Examples:
  tether logout

The server and its CA stay saved, so `tether login SERVER_URL` needs no
--ca-file or --ca-sha256 next time.";

/// Log out: tetherd revokes the session's token, and the CLI forgets it.
#[derive(Debug, clap::Args)]
#[command(after_long_help = EXAMPLES)]
pub struct Logout {}

impl Logout {
    pub fn description(&self) -> String {
        "log out".to_owned()
    }

    pub async fn run(self, ctx: &Context) -> Result<Outcome, CommandError> {
        let config = CliConfig::load(&ctx.config_path)?;
        let ca_pem = config.read_ca()?;
        let server = ctx
            .server_override
            .clone()
            .unwrap_or_else(|| config.server.clone());
        let client = ApiClient::new(&server, &ca_pem, Some(config.token.clone()))?;
        match client.logout().await {
            // A session that already ended is as logged out as can be.
            Ok(()) | Err(ClientError::Unauthorized { .. }) => {}
            Err(err) => return Err(err.into()),
        }
        CliConfig::save_session(&ctx.config_path, &config.server, &ca_pem, "")?;
        output::emit(&format!("Logged out of {server}."))?;
        Ok(Outcome::Success)
    }
}
