//! The configured snapshot sources, whatever their kind: what `pitr run`,
//! `pitr list`, retention and test restores loop over, and the one call
//! that takes a snapshot of any of them.

use std::time::Duration;

use crate::config::{CommandConfig, Config, InfisicalConfig};
use crate::cron::CronSchedule;
use crate::repo::Repository;

use super::{SnapshotError, SnapshotInfo, SourceKind, command, infisical, store};

/// One `[[command]]` or `[[infisical]]` entry of the config (a copy: a
/// scheduled job owns its source).
#[derive(Debug, Clone)]
pub enum Source {
    /// A command whose standard output is stored.
    Command(CommandConfig),
    /// An Infisical project whose secrets are stored.
    Infisical(InfisicalConfig),
}

impl Source {
    /// The entry's name (unique across both sections).
    pub fn name(&self) -> &str {
        match self {
            Source::Command(c) => &c.name,
            Source::Infisical(i) => &i.name,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Command(_) => SourceKind::Command,
            Source::Infisical(_) => SourceKind::Infisical,
        }
    }

    /// When snapshots are taken; `None` when the schedule is off.
    pub fn schedule(&self) -> Option<&CronSchedule> {
        match self {
            Source::Command(c) => c.schedule.as_ref(),
            Source::Infisical(i) => i.schedule.as_ref(),
        }
    }

    /// The configured `max_age`, if any.
    pub fn max_age(&self) -> Option<Duration> {
        match self {
            Source::Command(c) => c.max_age,
            Source::Infisical(i) => i.max_age,
        }
    }

    /// `[[command]] "name"`, for messages.
    pub fn label(&self) -> String {
        format!("{} {:?}", self.kind().section(), self.name())
    }
}

/// Every snapshot source of `config`: the `[[command]]` entries, then the
/// `[[infisical]]` ones.
pub fn sources(config: &Config) -> impl Iterator<Item = Source> + '_ {
    let commands = config.commands.iter().cloned().map(Source::Command);
    commands.chain(config.infisical.iter().cloned().map(Source::Infisical))
}

/// The snapshot source named `name`.
pub fn find(config: &Config, name: &str) -> Option<Source> {
    sources(config).find(|s| s.name() == name)
}

/// Takes a snapshot of `source` now and commits it; records nothing when
/// the source fails. An Infisical export is complete (and checked) before
/// anything is stored, so a partial export never becomes a snapshot.
pub async fn take(repo: &Repository, source: &Source) -> Result<SnapshotInfo, SnapshotError> {
    match source {
        Source::Command(c) => command::take(repo, c).await,
        Source::Infisical(i) => {
            let opts = infisical::InfisicalOptions::of_config(i);
            let bytes = infisical::export(&opts).await?;
            store(repo, &i.name, SourceKind::Infisical, bytes.as_slice()).await
        }
    }
}
