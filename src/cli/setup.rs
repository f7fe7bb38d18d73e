//! Setting a repository up: `pitr keygen` (the identity), `pitr init` (the
//! destinations) and `pitr catalog rebuild` (the local catalog, from the
//! destinations alone).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use pitr::config::Config;
use pitr::repo::Repository;

use super::exit::Exit;
use super::humantime_secs;

/// `pitr keygen`: a new age identity, to `output` or standard output.
pub(super) fn keygen(output: Option<&Path>) -> anyhow::Result<()> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let created = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ");
    // The same layout as age-keygen, so either tool reads the other's file.
    let text = format!(
        "# created: {created}\n# public key: {recipient}\n{}\n",
        age::secrecy::ExposeSecret::expose_secret(&identity.to_string())
    );
    match output {
        Some(path) => {
            pitr::crashsafe::write_new(path, text.as_bytes(), 0o600).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow::Error::new(Exit::Usage(format!(
                        "{} already exists; pitr keygen never overwrites an identity \
                         (backups encrypted to it would become unreadable). Choose another \
                         --output or move the old file away first",
                        path.display()
                    )))
                } else {
                    anyhow::Error::new(e)
                        .context(format!("cannot write the identity to {}", path.display()))
                }
            })?;
            println!("{recipient}");
            eprintln!(
                "Wrote the identity to {} (mode 0600). Put the recipient above into \
                 [repository] recipients; keep the identity away from the sidecar: \
                 only restore and verify need it.",
                path.display()
            );
        }
        None => {
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("cannot write the identity to standard output")?;
            eprintln!("Public key: {recipient}");
        }
    }
    Ok(())
}

/// `pitr init`: every destination prepared, batched ones included.
pub(super) async fn init(config: &Config) -> anyhow::Result<()> {
    let fanout = pitr::wiring::fanout(config);
    let opts = pitr::wiring::repo_options(config)?;
    let report = Repository::init(&fanout, &opts).await?;
    let id = &report.descriptor.repository_id;
    if report.created {
        println!("Created repository {id} on {}.", report.seeded.join(", "));
    } else if report.seeded.is_empty() {
        println!("Repository {id} is already initialised on every destination.");
    } else {
        println!(
            "Repository {id} existed; prepared the new destinations: {}.",
            report.seeded.join(", ")
        );
    }
    let batched = pitr::wiring::batched(config);
    if !batched.is_empty() {
        let repo = Repository::open(fanout, opts).await?;
        for b in batched {
            repo.open_batched(b.fanout).await?;
            println!(
                "Batched destination {} holds repository {id}; `pitr run` sends it a batch every {}.",
                b.name,
                humantime_secs(b.every)
            );
        }
    }
    println!(
        "The repository key is in {}. Keep a copy as a secret beside the config \
         ([repository] key_file) so a sidecar that loses its disk keeps deduplicating.",
        report.key_path.display()
    );
    Ok(())
}

/// `pitr catalog rebuild`: the local catalog recreated from the
/// destinations (or the one named `from`), then checked against the content
/// ids content-addressed destinations report.
pub(super) async fn catalog_rebuild(config: &Config, from: Option<&str>) -> anyhow::Result<()> {
    let mut fanout = pitr::wiring::fanout(config);
    if let Some(name) = from {
        let Some(d) = fanout
            .destinations()
            .iter()
            .find(|d| d.name() == name)
            .cloned()
        else {
            if config
                .destinations
                .iter()
                .any(|d| d.name == name && d.is_batched())
            {
                return Err(Exit::Usage(format!(
                    "--from {name:?}: that destination is batched: it holds a repository of its own commits. \
                     To read it alone, write a config that names only it (without batch_interval) and use that"
                ))
                .into());
            }
            return Err(Exit::Usage(format!(
                "--from {name:?}: {} has no such [[destination]] (configured: {})",
                config.path.display(),
                super::configured(config.destinations.iter().map(|d| d.name.as_str()))
            ))
            .into());
        };
        fanout = pitr::ship::Fanout::new(vec![d]);
    }
    let opts = pitr::wiring::repo_options(config)?;
    let repo = Repository::rebuild_catalog(fanout, opts).await?;
    {
        let catalog = repo.catalog();
        println!(
            "Rebuilt the catalog in {}: {} commits, {} packs, {} items.",
            config.repository.state_dir.display(),
            catalog.applied_commits()?.len(),
            catalog.packs()?.len(),
            catalog.items("")?.len()
        );
    }
    // What the catalog now holds against what content-addressed
    // destinations report (only those read from are asked).
    let problems = repo.check_content_ids().await?;
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        println!("PROBLEM {} {}: {}", p.destination, p.object, p.error);
    }
    anyhow::bail!(
        "the catalog was rebuilt, but {} objects have another content id in their destination than the catalog recorded",
        problems.len()
    )
}
