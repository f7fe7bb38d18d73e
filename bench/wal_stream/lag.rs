//! Sampling the server, and the lag between its flush position and what a
//! contender made safe.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pitr::pg::{Lsn, Segment};

use crate::contender::Contender;
use crate::{INTERRUPTED, SAMPLE_EVERY, SEG};

/// One look at the server.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since pgbench started.
    pub t: f64,
    /// `pg_current_wal_flush_lsn()`.
    pub server: u64,
    /// What the contender made safe: its slot's `flush_lsn`, or the end of
    /// the last archived segment.
    pub ack: Option<u64>,
}

pub const SAMPLE_SQL: &str = "SELECT pg_current_wal_flush_lsn()::text, \
     (SELECT r.flush_lsn::text FROM pg_stat_replication r \
        JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1), \
     (SELECT last_archived_wal FROM pg_stat_archiver)";

pub struct Sampler<'a> {
    pub db: &'a tokio_postgres::Client,
    pub stmt: tokio_postgres::Statement,
    pub slot: &'static str,
    pub archiver: bool,
    pub origin: Instant,
}

impl<'a> Sampler<'a> {
    pub async fn new(db: &'a tokio_postgres::Client, contender: Contender) -> anyhow::Result<Self> {
        Ok(Sampler {
            stmt: db.prepare(SAMPLE_SQL).await.context("prepare")?,
            db,
            slot: contender.slot().unwrap_or(""),
            archiver: contender.is_archiver(),
            origin: Instant::now(),
        })
    }

    pub async fn sample(&self) -> anyhow::Result<Sample> {
        anyhow::ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted");
        let row = self
            .db
            .query_one(&self.stmt, &[&self.slot])
            .await
            .context("sample the server")?;
        let t = self.origin.elapsed().as_secs_f64();
        let server = parse_lsn(row.get::<_, Option<String>>(0).as_deref())
            .context("pg_current_wal_flush_lsn()")?;
        let ack = if self.archiver {
            row.get::<_, Option<String>>(2)
                .and_then(|name| Segment::parse(&name, SEG))
                .map(|s| s.start(SEG).0 + SEG)
        } else {
            parse_lsn(row.get::<_, Option<String>>(1).as_deref()).filter(|l| *l > 0)
        };
        Ok(Sample { t, server, ack })
    }

    /// Samples until the contender made `target` safe; `None` when it did
    /// not within `timeout`.
    pub async fn wait_ack(
        &self,
        target: u64,
        timeout: Duration,
        samples: &mut Vec<Sample>,
    ) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let s = self.sample().await?;
            samples.push(s);
            if s.ack.is_some_and(|a| a >= target) {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
        }
    }
}

pub fn parse_lsn(text: Option<&str>) -> Option<u64> {
    text?.parse::<Lsn>().ok().map(|l| l.0)
}

/// For every sample taken while pgbench ran: the time until the contender's
/// safe position passed the server's flush position of that moment
/// (`INFINITY` when it never did while sampled), and the bytes between them.
/// Resolution is the sampling interval; a lag is counted up to the first
/// sample that shows it gone, so it is an upper bound.
pub fn lags(samples: &[Sample], window_end: f64) -> (Vec<f64>, Vec<u64>) {
    let mut secs = Vec::new();
    let mut bytes = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        if s.t > window_end {
            break;
        }
        let caught = samples[i..]
            .iter()
            .find(|later| later.ack.is_some_and(|a| a >= s.server));
        secs.push(caught.map_or(f64::INFINITY, |later| later.t - s.t));
        bytes.push(s.server.saturating_sub(s.ack.unwrap_or(0)));
    }
    (secs, bytes)
}

/// For an archiver: per segment completed in the window, the time from the
/// first sample showing it complete on the server to the first showing it
/// archived.
pub fn segment_latencies(samples: &[Sample], start: u64, end: u64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut boundary = start + SEG;
    while boundary <= end {
        let complete = samples.iter().find(|s| s.server >= boundary);
        let archived = samples
            .iter()
            .find(|s| s.ack.is_some_and(|a| a >= boundary));
        if let (Some(c), Some(a)) = (complete, archived) {
            out.push((a.t - c.t).max(0.0));
        }
        boundary += SEG;
    }
    out
}

/// The `p`-quantile (0..=1) by nearest rank.
pub fn quantile<T: Copy + PartialOrd>(values: &[T], p: f64) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}
