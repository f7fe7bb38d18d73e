//! `pitr run`: the sidecar in the foreground.

use anyhow::Context;
use pitr::config::Config;

use super::exit::Exit;

/// `pitr run`: the sidecar (see `pitr::sidecar`) until SIGTERM or SIGINT,
/// which stop it cleanly within a bounded time and exit 0.
pub(super) async fn run_sidecar(config: &Config) -> anyhow::Result<()> {
    let shutdown = stop_signal()?;
    pitr::sidecar::run(config.clone(), None, shutdown)
        .await
        .map_err(|e| {
            if e.is_usage() {
                Exit::Usage(e.to_string()).into()
            } else {
                anyhow::Error::new(e)
            }
        })
}

/// Resolves at the first SIGTERM or SIGINT: how `pitr run` and `pitr fleet
/// receive` are told to stop.
pub(super) fn stop_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
