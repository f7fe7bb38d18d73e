//! The packaging-facing commands: `pitr export` (the newest restorable set
//! into a directory, for off-site copies such as GitHub Artifacts), the
//! container's health probe, and the version string.

use std::path::Path;
use std::time::Duration;

use pitr::config::Config;
use pitr::restore::{ExportError, Selection};

use super::args::DatabaseArg;
use super::exit::Exit;
use super::{CatalogSync, mib, open_repo, postgres_entry};

/// `pitr export`: every database of the config (or the one named) from
/// destination `from` (default: the first) into `to`.
pub(super) async fn export(
    config: &Config,
    to: &Path,
    database: &DatabaseArg,
    snapshot: Option<&str>,
    from: Option<&str>,
) -> anyhow::Result<()> {
    let selection = match (&database.postgres, &database.sqlite, snapshot) {
        (Some(name), _, _) => Selection {
            postgres: vec![postgres_entry(config, Some(name))?.name.clone()],
            ..Selection::default()
        },
        (_, Some(name), _) => Selection {
            sqlite: vec![super::sqlite::sqlite_entry(config, name)?.name.clone()],
            ..Selection::default()
        },
        (_, _, Some(name)) => Selection {
            snapshots: vec![
                super::snapshot::source_entry(config, name)?
                    .name()
                    .to_owned(),
            ],
            ..Selection::default()
        },
        (None, None, None) => Selection {
            postgres: config.postgres.iter().map(|p| p.name.clone()).collect(),
            sqlite: config.sqlite.iter().map(|s| s.name.clone()).collect(),
            snapshots: pitr::snapshot::sources(config)
                .map(|s| s.name().to_owned())
                .collect(),
        },
    };
    let repo = open_repo(config, CatalogSync::Latest).await?;
    let dests = repo.fanout().destinations();
    let source = match from {
        None => dests.first(),
        Some(name) => dests.iter().find(|d| d.name() == name),
    }
    .ok_or_else(|| {
        Exit::Usage(format!(
            "{}: no [[destination]] is named {:?} (configured: {})",
            config.path.display(),
            from.unwrap_or_default(),
            dests
                .iter()
                .map(|d| d.name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let report = pitr::restore::export(&repo, source.as_ref(), to, &selection)
        .await
        .map_err(|e| match e {
            ExportError::NotEmpty { .. } | ExportError::NothingSelected => {
                anyhow::Error::new(Exit::Usage(e.to_string()))
            }
            e if e.is_not_possible() => anyhow::Error::new(Exit::NotPossible(e.to_string())),
            e => anyhow::Error::new(e),
        })?;
    let what: Vec<String> = selection
        .postgres
        .iter()
        .map(|n| format!("[[postgres]] {n:?}"))
        .chain(selection.sqlite.iter().map(|n| format!("[[sqlite]] {n:?}")))
        .chain(
            selection
                .snapshots
                .iter()
                .map(|n| format!("snapshot source {n:?}")),
        )
        .collect();
    println!(
        "Exported the newest restorable set of {} from destination {:?} into {}: {} items, \
         {} packs ({}), {} key objects, catalog commit {}. Still encrypted: restore from it \
         with a config whose only [[destination]] is kind = \"fs\", path = {:?}, and \
         repository.identity_file set.",
        what.join(", "),
        source.name(),
        to.display(),
        report.items,
        report.packs,
        mib(report.pack_bytes),
        report.keys,
        report.commit,
        to.display().to_string(),
    );
    Ok(())
}

/// `pitr probe URL`: 0 when a GET answers 2xx within `timeout`, else 1,
/// with the reason on standard error (Docker keeps it in the health log).
///
/// An https URL to a loopback address is probed without checking the
/// certificate: it was issued for the name others reach the sidecar by,
/// not for 127.0.0.1, and the probe sends nothing and only reads a
/// status from its own host. Any other https URL is checked as usual.
pub(super) async fn probe(url: &str, timeout: Duration) -> u8 {
    let loopback = reqwest::Url::parse(url).ok().is_some_and(|u| {
        let host = u.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        u.scheme() == "https"
            && (host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()))
    });
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .danger_accept_invalid_certs(loopback)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("probe: cannot build an HTTP client: {e}");
            return 1;
        }
    };
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => 0,
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            eprintln!("probe: {url} answered {status}: {}", body.trim());
            1
        }
        Err(e) => {
            // reqwest's top error says "error sending request"; the cause
            // (refused, timed out, DNS) is in its sources.
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("probe: GET {url}: {msg}");
            1
        }
    }
}
