//! Where a git token comes from (an environment variable, a file, standard
//! input), never the command line.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

use super::CliError;

/// Where a git token comes from: never the command line, which other users
/// of the machine can read in `ps`.
#[derive(Debug, Args)]
pub struct GitTokenSource {
    /// Read the git token (for a private repository) from this environment
    /// variable.
    #[arg(long, value_name = "VAR", conflicts_with = "git_token_file")]
    pub git_token_env: Option<String>,
    /// Read the git token from this file; `-` reads standard input.
    #[arg(long, value_name = "PATH")]
    pub git_token_file: Option<PathBuf>,
}

impl GitTokenSource {
    pub fn given(&self) -> bool {
        self.git_token_env.is_some() || self.git_token_file.is_some()
    }

    /// The token, when a source was given.
    pub fn read(&self) -> Result<Option<SecretString>, CliError> {
        if let Some(var) = &self.git_token_env {
            let value = std::env::var(var).map_err(|_| {
                CliError::Input(format!(
                    "the environment variable {var} (--git-token-env) is not set or not UTF-8"
                ))
            })?;
            return non_empty(value, &format!("the environment variable {var}")).map(Some);
        }
        match &self.git_token_file {
            Some(path) if path.as_os_str() == "-" => read_stdin().map(Some),
            Some(path) => {
                let value = std::fs::read_to_string(path).map_err(|err| {
                    CliError::Input(format!(
                        "cannot read the git token from {}: {err}",
                        path.display()
                    ))
                })?;
                non_empty(value, &path.display().to_string()).map(Some)
            }
            None => Ok(None),
        }
    }
}

/// Reads a token from standard input: hidden at a terminal, else the first
/// line of what is piped in.
pub fn read_stdin() -> Result<SecretString, CliError> {
    let stdin = std::io::stdin();
    let value = if stdin.is_terminal() {
        rpassword::prompt_password("Git token (input hidden): ")
            .map_err(|err| CliError::Input(format!("cannot read the git token: {err}")))?
    } else {
        let mut value = String::new();
        stdin.lock().read_to_string(&mut value).map_err(|err| {
            CliError::Input(format!(
                "cannot read the git token from standard input: {err}"
            ))
        })?;
        value
    };
    non_empty(value, "standard input")
}

fn non_empty(value: String, from: &str) -> Result<SecretString, CliError> {
    let token = value.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(CliError::Input(format!(
            "the git token from {from} is empty"
        )));
    }
    Ok(SecretString::from(token))
}
