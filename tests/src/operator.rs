//! Running the `medallion` operator command as an operator would: its own process, the broker
//! from `MEDALLION__KAFKA__BOOTSTRAP_SERVERS`, and its exit code and output kept.

use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::process::stage_binary;

/// What one run of the command did.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The actor the tests' operator commands write to the audit trail.
pub const ACTOR: &str = "operator-test@ci";

fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| stage_binary("medallion"))
}

/// Runs `medallion ARGS` against `bootstrap`.
pub fn medallion(bootstrap: &str, args: &[&str]) -> CliOutput {
    medallion_with(bootstrap, args, &[])
}

/// [`medallion`] with extra environment variables.
pub fn medallion_with(bootstrap: &str, args: &[&str], envs: &[(&str, &str)]) -> CliOutput {
    let output = Command::new(binary())
        .args(args)
        .env("MEDALLION__KAFKA__BOOTSTRAP_SERVERS", bootstrap)
        .env("MEDALLION_ACTOR", ACTOR)
        .envs(envs.iter().copied())
        .output()
        .expect("the medallion command runs");
    CliOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
