//! The fleet catalog's schema (`pitr_fleet`, docs/FLEET.md): versioned
//! migrations in `src/fleet/migrations/`, applied by `refinery` under an
//! advisory lock so that sidecars starting together migrate once.

use tokio_postgres::Client;

use super::{FleetError, STATEMENT_TIMEOUT, bounded};

mod embedded {
    refinery::embed_migrations!("src/fleet/migrations");
}

/// The schema version this pitr writes and reads: the newest migration,
/// which also sets `pitr_fleet.schema_version`.
pub const SCHEMA_VERSION: i64 = 1;
/// refinery's record of applied migrations, inside the schema.
const HISTORY: &str = "pitr_fleet.refinery_schema_history";
/// Taken while migrating: one migrator at a time per database.
const LOCK_KEY: i64 = 0x7069_7472_666c_7400; // "pitrflt\0"

/// The version `pitr_fleet.schema_version` reports; 0 when there is no
/// schema yet.
pub async fn version(client: &Client) -> Result<i64, FleetError> {
    let q = client.query_opt("SELECT version::bigint FROM pitr_fleet.schema_version", &[]);
    match tokio::time::timeout(STATEMENT_TIMEOUT, q).await {
        Err(_) => Err(FleetError::Timeout {
            what: "reading the schema version".to_owned(),
            limit: STATEMENT_TIMEOUT,
        }),
        Ok(Ok(row)) => Ok(row.map_or(0, |r| r.get(0))),
        // No schema (3F000) or no view (42P01) yet: nothing applied.
        Ok(Err(e))
            if e.code()
                .is_some_and(|c| matches!(c.code(), "3F000" | "42P01")) =>
        {
            Ok(0)
        }
        Ok(Err(source)) => Err(FleetError::Sql {
            what: "reading the schema version".to_owned(),
            source,
        }),
    }
}

/// Applies the migrations this pitr has and the database lacks; returns
/// the version after. Needs DDL rights (and CREATEROLE for the first,
/// which creates the writer and reader group roles).
pub async fn migrate(client: &mut Client) -> Result<i64, FleetError> {
    bounded(
        "locking for migration",
        STATEMENT_TIMEOUT,
        client.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY]),
    )
    .await?;
    let result = apply(client).await;
    // The lock ends with the session anyway; unlocking is a courtesy.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result?;
    version(client).await
}

async fn apply(client: &mut Client) -> Result<(), FleetError> {
    // refinery creates its history table before the first migration runs:
    // the schema it lives in must exist first.
    // A role without DDL rights fails here: said as a migration failure,
    // which names the fix.
    match bounded(
        "creating the schema",
        STATEMENT_TIMEOUT,
        client.batch_execute("CREATE SCHEMA IF NOT EXISTS pitr_fleet"),
    )
    .await
    {
        Err(e) if e.sqlstate() == Some("42501") => return Err(FleetError::Migrate(e.to_string())),
        other => other?,
    };
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY);
    let report = runner
        .run_async(client)
        .await
        .map_err(|e| FleetError::Migrate(e.to_string()))?;
    for m in report.applied_migrations() {
        tracing::info!(
            version = m.version(),
            name = m.name(),
            "fleet schema migrated"
        );
    }
    Ok(())
}

/// Makes sure the schema is the one this pitr writes: migrates when it is
/// older and `may_migrate`, and carries on without migrating when it is
/// already current (a role without DDL rights). A newer schema is refused:
/// this pitr does not know its rows.
pub async fn ensure(client: &mut Client, may_migrate: bool) -> Result<(), FleetError> {
    let found = version(client).await?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    if found > SCHEMA_VERSION {
        return Err(FleetError::SchemaVersion {
            found,
            want: SCHEMA_VERSION,
            fix: "upgrade this pitr to the version that migrated the fleet database",
        });
    }
    if !may_migrate {
        return Err(FleetError::SchemaVersion {
            found,
            want: SCHEMA_VERSION,
            fix: "run `pitr fleet migrate -c CONFIG` as a role with DDL rights (docs/FLEET.md)",
        });
    }
    let now = migrate(client).await?;
    if now != SCHEMA_VERSION {
        return Err(FleetError::SchemaVersion {
            found: now,
            want: SCHEMA_VERSION,
            fix: "the migrations did not reach this pitr's version; run `pitr fleet migrate -c CONFIG` and read its errors",
        });
    }
    Ok(())
}

/// What `pitr check` says of the fleet database: reachable as the
/// configured role, and its schema version against this pitr's. Fails when
/// it cannot be reached or its schema is newer than this pitr.
pub async fn check(cfg: &crate::config::FleetConfig) -> Result<String, FleetError> {
    if cfg.kind == crate::config::FleetKind::Http {
        // The receiver answers for the database, as this sidecar's token.
        let sender = super::http::Sender::new(cfg)?;
        let seq = sender.published_seq(&cfg.instance).await?;
        return Ok(format!(
            "receiver reachable, schema version {SCHEMA_VERSION}, published_seq {}",
            seq.map_or_else(|| "none yet".to_owned(), |s| s.to_string())
        ));
    }
    let client = super::connect(cfg).await?;
    let found = version(&client).await?;
    match found.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => Ok(format!("reachable, schema version {found}")),
        std::cmp::Ordering::Less => Ok(format!(
            "reachable, schema version {found} (this pitr writes {SCHEMA_VERSION}: `pitr run` migrates when its role may, else run `pitr fleet migrate`)"
        )),
        std::cmp::Ordering::Greater => Err(FleetError::SchemaVersion {
            found,
            want: SCHEMA_VERSION,
            fix: "upgrade this pitr to the version that migrated the fleet database",
        }),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_schema_version_is_the_newest_migration() {
        let newest = super::embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| i64::from(m.version()))
            .max();
        assert_eq!(newest, Some(super::SCHEMA_VERSION));
    }
}
