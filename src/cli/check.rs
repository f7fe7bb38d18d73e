//! `pitr check`: the config, then every destination, database, alert
//! channel and fleet catalog it names; with `--offline`, only what needs no
//! network.

use pitr::config::Config;
use pitr::repo::Repository;

use super::humantime_secs;

/// `pitr check`: prints one line per thing checked; fails when any check
/// failed.
pub(super) async fn check(config: &Config, offline: bool) -> anyhow::Result<()> {
    println!("config {}: valid", config.path.display());
    let opts = pitr::wiring::repo_options(config)?;
    if offline {
        opts.check_key_file()?;
        return check_offline(config);
    }
    // One retry: a check should answer quickly; a store that fails twice in
    // a row is worth reporting.
    let fanout = pitr::wiring::fanout_with_retry(config, pitr::ship::REQUEST_RETRY.times(1));
    let mut failed = 0;
    failed += check_storacha_credentials(config);
    let quorum = fanout.status().quorum;
    for d in fanout.destinations() {
        match Repository::check_destination(d.as_ref(), &opts).await {
            Ok(descriptor) => println!(
                "destination {}: repository {}, format version {}, recipients match; takes every write \
                 (a write counts once {quorum} of the {} such destinations hold it)",
                d.name(),
                descriptor.repository_id,
                descriptor.version,
                fanout.destinations().len()
            ),
            Err(e) => {
                failed += 1;
                println!("destination {}: FAILED: {e}", d.name());
            }
        }
    }
    for b in pitr::wiring::batched(config) {
        let every = humantime_secs(b.every);
        let Some(d) = b.fanout.destinations().first() else {
            continue;
        };
        let what = format!(
            "batched every {every}: not counted toward the acknowledgement quorum; \
             restores from it alone are exact up to its last batch"
        );
        match Repository::check_destination(d.as_ref(), &opts).await {
            Ok(descriptor) => println!(
                "destination {}: {what}; repository {}, format version {}, recipients match",
                b.name, descriptor.repository_id, descriptor.version
            ),
            Err(pitr::repo::RepoError::NotInitialized { .. }) => println!(
                "destination {}: {what}; it holds no repository yet (`pitr init` or the first batch of `pitr run` writes it)",
                b.name
            ),
            Err(e) => {
                failed += 1;
                println!("destination {}: {what}; FAILED: {e}", b.name);
            }
        }
    }
    for pg in &config.postgres {
        match check_postgres(pg).await {
            Ok((report, major)) => {
                println!("postgres {}: {report}", pg.name);
                failed += check_restore_binaries(config, &pg.name, major);
            }
            Err(e) => {
                failed += 1;
                println!("postgres {}: FAILED: {e:#}", pg.name);
            }
        }
    }
    for alert in &config.alerts {
        match pitr::sidecar::alert::check_channel(alert).await {
            Ok(report) => println!("alert {} ({}): {report}", alert.name, alert.kind.name()),
            Err(e) => {
                failed += 1;
                println!("alert {}: FAILED: {e}", alert.name);
            }
        }
    }
    if let Some(fleet) = &config.fleet {
        match pitr::fleet::schema::check(fleet).await {
            Ok(report) => println!("fleet {}: {report}", fleet.instance),
            Err(e) => {
                failed += 1;
                println!("fleet {}: FAILED: {e}", fleet.instance);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} checks failed (see above)");
    }
    Ok(())
}

/// Each Storacha destination's space, the abilities its proof grants and
/// those it lacks (read from the proof itself, no network); the number of
/// destinations whose credentials fail.
fn check_storacha_credentials(config: &Config) -> usize {
    let mut failed = 0;
    for d in &config.destinations {
        if let pitr::config::DestinationKind::Storacha(c) = &d.kind {
            match pitr::ship::StorachaDestination::new(&d.name, &pitr::wiring::storacha(c))
                .credentials_report()
            {
                Ok(r) => println!("destination {}: {r}", d.name),
                Err(e) => {
                    failed += 1;
                    println!("destination {}: FAILED: {e}", d.name);
                }
            }
        }
    }
    failed
}

/// `pitr check --offline`: what can be checked without a network. The
/// config has loaded (keys and identity read); the settings the clients
/// would refuse only when used are tried here.
fn check_offline(config: &Config) -> anyhow::Result<()> {
    let mut failed = check_storacha_credentials(config);
    for d in &config.destinations {
        let verdict = match &d.kind {
            pitr::config::DestinationKind::S3(s3) => {
                pitr::ship::S3Destination::validate(&pitr::wiring::s3(s3))
            }
            _ => Ok(()),
        };
        match verdict {
            Ok(()) => match d.batch_interval {
                Some(every) => println!(
                    "destination {}: settings valid (not contacted); batched every {}: not counted toward the acknowledgement quorum",
                    d.name,
                    humantime_secs(every)
                ),
                None => println!("destination {}: settings valid (not contacted)", d.name),
            },
            Err(e) => {
                failed += 1;
                println!("destination {}: FAILED: {e}", d.name);
            }
        }
    }
    for pg in &config.postgres {
        match pitr::wiring::conninfo(pg) {
            Ok(_) => println!("postgres {}: conninfo valid (not contacted)", pg.name),
            Err(e) => {
                failed += 1;
                println!("postgres {}: FAILED: {e}", pg.name);
            }
        }
    }
    for s in &config.sqlite {
        println!("sqlite {}: {} (not opened)", s.name, s.path.display());
    }
    for alert in &config.alerts {
        println!(
            "alert {} ({}): settings valid (not contacted)",
            alert.name,
            alert.kind.name()
        );
    }
    if failed > 0 {
        anyhow::bail!("{failed} checks failed (see above)");
    }
    Ok(())
}

/// Whether this host can restore (and test-restore) a backup of `major`:
/// the binaries `pitr restore` and the test restores would use, or where
/// they were looked for. Missing ones fail the check only when test
/// restores are scheduled here (they would fail); otherwise a restore may
/// well run on another host, and this is a warning. Returns the failures.
fn check_restore_binaries(config: &Config, name: &str, major: u32) -> usize {
    let tools = pitr::verify::TEST_RESTORE_TOOLS;
    match pitr::pg::find(major, &config.restore.bin_dirs, tools) {
        Ok(bin) => {
            println!(
                "postgres {name}: restores and test restores use PostgreSQL {} in {}",
                bin.version(),
                bin.dir().display()
            );
            0
        }
        Err(e) if config.verify.schedule.is_some() => {
            println!(
                "postgres {name}: FAILED: test restores are scheduled ([verify] schedule) but cannot run on this host: {e}"
            );
            1
        }
        Err(e) => {
            println!(
                "postgres {name}: WARNING: a restore of it cannot run on this host: {e} \
                 (restore on a host that has them, or name their directory in [restore] bin_dirs)"
            );
            0
        }
    }
}

/// Connects the way the streamer does and reads what streaming needs: the
/// system, `wal_level`, `max_wal_senders`, the slot.
async fn check_postgres(pg: &pitr::config::PostgresConfig) -> anyhow::Result<(String, u32)> {
    let info = pitr::wiring::conninfo(pg)?;
    let mut client = pitr::pg::ReplicationClient::connect(&info).await?;
    let system = client.identify_system().await?;
    let wal_level = client.check_wal_level().await?;
    let senders = client.show("max_wal_senders").await?;
    let incremental =
        pitr::basebackup::incremental::describe(&mut client, pg.incremental_max_chain).await?;
    let major = client.server_major();
    let slot = if major < 15 {
        format!(
            "slot {:?} not shown (PostgreSQL {major} has no READ_REPLICATION_SLOT; see \
             pg_replication_slots)",
            pg.slot
        )
    } else {
        match client.read_replication_slot(&pg.slot).await? {
            Some(s) => match s.restart_lsn {
                Some(lsn) => format!("slot {:?} holds WAL from {lsn}", pg.slot),
                None => format!("slot {:?} exists but holds no WAL yet", pg.slot),
            },
            None => format!(
                "slot {:?} does not exist yet (pitr run creates it)",
                pg.slot
            ),
        }
    };
    let _ = client.close().await;
    Ok((
        format!(
            "system {} on timeline {} at {}, PostgreSQL {major}, wal_level={wal_level}, \
         max_wal_senders={senders}, {slot}; {incremental}",
            system.system_id, system.timeline, system.xlogpos
        ),
        major,
    ))
}
