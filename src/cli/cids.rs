//! `pitr catalog cids`: the content identifiers (Storacha root CIDs) the
//! catalog holds, so an operator can fetch an object from any IPFS gateway
//! by CID, without the Storacha account.

use pitr::config::{Config, DestinationKind};
use pitr::repo::catalog::CidRow;

use super::{CatalogSync, open_repo};

/// Prints every object's CID per content-addressed destination: one line
/// `object  destination  cid  gateway URL`, or a JSON array.
pub(super) async fn catalog_cids(config: &Config, json: bool) -> anyhow::Result<()> {
    let repo = open_repo(config, CatalogSync::Latest).await?;
    let rows = repo.catalog().content_ids()?;
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "object": r.object,
                    "destination": r.destination,
                    "cid": r.cid,
                    "commit": r.commit,
                    "gateway_url": gateway_url(config, r),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "No content identifiers: no content-addressed ([[destination]] kind = \"storacha\") \
             destination has received an object through this repository yet."
        );
        return Ok(());
    }
    for r in &rows {
        println!(
            "{}\t{}\t{}\t{}",
            r.object,
            r.destination,
            r.cid,
            gateway_url(config, r)
        );
    }
    Ok(())
}

/// Where the object's bytes are, through the destination's configured
/// gateway (any IPFS gateway serves the same path): the upload is a
/// directory whose one entry names the object.
fn gateway_url(config: &Config, row: &CidRow) -> String {
    let gateway = config
        .destinations
        .iter()
        .find_map(|d| match &d.kind {
            DestinationKind::Storacha(c) if d.name == row.destination => Some(c.gateway.as_str()),
            _ => None,
        })
        .unwrap_or("https://w3s.link");
    format!(
        "{}/ipfs/{}/{}",
        gateway.trim_end_matches('/'),
        row.cid,
        // The entry's name holds `%2F` literally; in a URL path that is
        // `%252F` (a gateway decodes the path once).
        pitr::ship::storacha::entry_name(&row.object).replace('%', "%25")
    )
}
