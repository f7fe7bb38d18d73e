//! How a command ends when it does not succeed: [`Exit`] for the outcomes
//! that are not plain failures, the exit codes, and [`exit_code`], which
//! picks the code for an error chain (docs/ARCHITECTURE.md, "Exit codes").

/// How a command ended, beyond success: the exit code and the message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Exit {
    /// Bad usage or configuration (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The thing asked for is not possible (exit 1).
    #[error("{0}")]
    NotPossible(String),
    /// Stopped by a signal before finishing (exit 128 + the signal).
    #[error(
        "interrupted by {0}: stopped before finishing. Any PostgreSQL server pitr had started \
         was shut down and any partial restore removed; nothing is left running. Run the \
         command again to start over"
    )]
    Interrupted(&'static str),
}

// The exit codes docs/ARCHITECTURE.md ("Exit codes") sets.
/// What was asked is not possible ([`Exit::NotPossible`]).
pub(crate) const EXIT_NOT_POSSIBLE: u8 = 1;
/// Bad usage or configuration ([`Exit::Usage`], a config error).
const EXIT_USAGE: u8 = 2;
/// Any other failure.
pub(crate) const EXIT_FAILURE: u8 = 3;
/// `wal-fetch` failures other than "not stored": above 125, so that
/// PostgreSQL aborts recovery rather than taking the failure for the end of
/// the WAL and promoting with less data than the repository holds.
pub(crate) const EXIT_WAL_FETCH_FAILED: u8 = 255;

/// Config errors and usage errors are exit 2 wherever in the chain they sit.
pub(crate) fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<pitr::config::ConfigError>() {
            return EXIT_USAGE;
        }
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return match exit {
                Exit::Usage(_) => EXIT_USAGE,
                Exit::NotPossible(_) => EXIT_NOT_POSSIBLE,
                Exit::Interrupted("SIGINT") => 128 + 2,
                Exit::Interrupted(_) => 128 + 15,
            };
        }
    }
    EXIT_FAILURE
}
