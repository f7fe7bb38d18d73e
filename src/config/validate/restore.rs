//! `[restore]`.

use super::super::RestoreConfig;
use super::super::error::{ConfigError, Ctx, KeyName};
use super::super::raw::{RawRestore, Section};
use super::values::path;

pub(super) fn restore(ctx: &Ctx<'_>, r: RawRestore) -> Result<RestoreConfig, ConfigError> {
    let key = KeyName::plain(Section::Restore, "bin_dirs");
    let bin_dirs = match r.bin_dirs {
        None => Vec::new(),
        Some(dirs) => dirs
            .value
            .iter()
            .map(|d| path(ctx, &key, d))
            .collect::<Result<_, _>>()?,
    };
    Ok(RestoreConfig { bin_dirs })
}
