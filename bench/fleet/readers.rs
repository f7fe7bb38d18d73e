//! The readers: the real binary, `pitr fleet list --json` and `pitr fleet
//! list --stale 24h --json`, run as the read role with a config holding only
//! `[fleet]`, as an operator or a dashboard runs it. Each run is timed from
//! spawn to exit (process start, connect, query, JSON out): what a person
//! waits for.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Which listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `pitr fleet list --json`.
    All,
    /// `pitr fleet list --stale 24h --json`.
    Stale,
    /// `pitr fleet list --failing --json` (checked, not timed).
    Failing,
}

impl Query {
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Query::All => &["fleet", "list", "--json"],
            Query::Stale => &["fleet", "list", "--stale", "24h", "--json"],
            Query::Failing => &["fleet", "list", "--failing", "--json"],
        }
    }

    pub fn shown(self) -> &'static str {
        match self {
            Query::All => "`pitr fleet list --json`",
            Query::Stale => "`pitr fleet list --stale 24h --json`",
            Query::Failing => "`pitr fleet list --failing --json`",
        }
    }
}

/// What runs of one query gave.
#[derive(Default)]
pub struct Runs {
    pub times: Vec<Duration>,
    /// Runs whose output was not what the fleet holds, and why (the first).
    pub wrong: u64,
    pub first_wrong: Option<String>,
}

/// Runs the binary as the read role.
pub struct Reader {
    pitr: PathBuf,
    config: PathBuf,
    /// The benchmark's own `PITR_BENCH_*` variables: pitr refuses unknown
    /// `PITR_*` variables, so they are not passed on.
    own_env: Vec<String>,
}

impl Reader {
    pub fn new(pitr: &Path, dir: &Path, port: u16) -> anyhow::Result<Reader> {
        let config = dir.join("reader.toml");
        std::fs::write(
            &config,
            format!(
                "[fleet]\nurl = \"host=127.0.0.1 port={port} user=fleet_reader dbname=fleet\"\n"
            ),
        )
        .context("write reader.toml")?;
        Ok(Reader {
            pitr: pitr.to_owned(),
            config,
            own_env: std::env::vars()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with("PITR_"))
                .collect(),
        })
    }

    /// One run: its wall time and its output (stdout).
    pub fn run(&self, q: Query) -> anyhow::Result<(Duration, Vec<u8>)> {
        let mut cmd = Command::new(&self.pitr);
        for k in &self.own_env {
            cmd.env_remove(k);
        }
        cmd.args(q.args()).arg("-c").arg(&self.config);
        let began = Instant::now();
        let out = cmd.output().context("run pitr fleet list")?;
        let took = began.elapsed();
        anyhow::ensure!(
            out.status.success(),
            "pitr {:?} failed ({}): {}",
            q.args(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((took, out.stdout))
    }
}

/// Checks one output: every database of the fleet (`All`), or exactly
/// `expected` (`instance/name`: the ones the fill made stale or never
/// restorable for `Stale`, failing for `Failing`).
pub fn check(
    q: Query,
    stdout: &[u8],
    databases: usize,
    expected: &BTreeSet<String>,
) -> Result<(), String> {
    let list: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("not JSON: {e}"))?;
    let entries = list.as_array().ok_or("not a JSON array")?;
    let names: BTreeSet<String> = entries
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["instance"].as_str().unwrap_or("?"),
                d["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    match q {
        Query::All if entries.len() != databases || names.len() != databases => Err(format!(
            "{} databases listed ({} distinct), the fleet has {databases}",
            entries.len(),
            names.len()
        )),
        Query::Stale | Query::Failing if &names != expected || entries.len() != expected.len() => {
            let missing: Vec<&String> = expected.difference(&names).take(5).collect();
            let extra: Vec<&String> = names.difference(expected).take(5).collect();
            Err(format!(
                "{} listed, {} expected; missing {missing:?}, not expected {extra:?}",
                entries.len(),
                expected.len()
            ))
        }
        _ => Ok(()),
    }
}

/// The `p`-quantile (0..=1) of `values` by the nearest-rank method.
pub fn quantile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut v = values.to_vec();
    v.sort();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
