//! The WAL streamer: a physical replication slot in, segments and partial
//! segments into the repository, and a flush position reported back to the
//! server that never passes what the destinations hold (invariant 1).
//!
//! One pass of [`stream_once`] connects, finds where to start, and streams
//! until the server goes away, the timeline ends, or `shutdown` fires;
//! [`stream`] repeats it with exponential backoff while the failures are
//! transient (a restart, a dropped connection, a slot held by another
//! process).
//!
//! Timelines: a pass streams the newest timeline of the server's lineage
//! that the repository holds WAL of, even when the server has moved on (a
//! promoted standby, a restore that forked); the server then streams that
//! timeline up to its switch point and ends it, and the next pass goes on
//! with the next timeline from the switch point (see
//! [`Lineage::resume_point`]). Acknowledgement is simple on purpose: `flush` moves only after
//! a [`Writer::commit`](crate::repo::Writer::commit) returned, and a commit
//! returns only after every destination stored the objects.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use super::assemble::GapError;
use super::decode::DecodeError;
use super::history::{HistoryError, Lineage};
use super::store::{WalStore, WalStoreError};
use crate::backoff::Backoff;
use crate::pg::{ConnError, ConnInfo, Lsn, ReplicationClient, history_file_name};
use crate::repo::{RepoError, Repository};

mod session;

use session::Session;

/// How a `[[postgres]]` entry is streamed.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The `[[postgres]]` name; items are stored under `pg/<name>/wal/`.
    pub database: String,
    /// Where the server is.
    pub conninfo: ConnInfo,
    /// The physical replication slot (created with RESERVE_WAL if missing).
    pub slot: String,
    /// How often the open segment is stored as a partial object when WAL
    /// arrived since the last store; bounds the data lost with the server,
    /// and the flush lag: WAL is acknowledged only once stored.
    pub partial_interval: Duration,
    /// How often a status update is sent without being asked (well inside
    /// the server's `wal_sender_timeout`, 60 s by default).
    pub status_interval: Duration,
    /// After a small WAL message (the server is caught up and sends each
    /// commit's flush at once) that left nothing received unhandled, wait
    /// this long before reading again so the next read takes many messages
    /// at once. Waking per message cost half of the CPU under
    /// `synchronous_commit = on` (BENCHMARKS.md); 10 ms is 1 % of the lag
    /// budget. Zero reads at once.
    pub coalesce: Duration,
    /// Where the connection state is published (for the health endpoint);
    /// `None`: not published.
    pub link: Option<watch::Sender<Link>>,
}

/// Whether a stream is connected, published for the health endpoint: a
/// server that is down produces no WAL, so only the connection shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    /// Whether WAL is being streamed (`START_REPLICATION` succeeded and the
    /// connection has not ended since).
    pub connected: bool,
    /// When `connected` last changed.
    pub since: Option<jiff::Timestamp>,
    /// The newest reason the stream was interrupted.
    pub last_error: Option<String>,
    /// The server's `max_slot_wal_keep_size` in bytes; `None` when
    /// unlimited (-1) or not known yet.
    pub max_slot_wal_keep_size: Option<u64>,
}

impl StreamOptions {
    /// Defaults: partials every 500 ms, status every 10 s.
    pub fn new(database: &str, conninfo: ConnInfo, slot: &str) -> StreamOptions {
        StreamOptions {
            database: database.to_owned(),
            conninfo,
            slot: slot.to_owned(),
            // A partial costs its new bytes and a manifest (`prepare`), so
            // twice a second keeps the p99 flush lag under 1 s.
            partial_interval: Duration::from_millis(500),
            status_interval: Duration::from_secs(10),
            coalesce: Duration::from_millis(10),
            link: None,
        }
    }
}

/// Where streaming stands, published for the health endpoint and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The timeline being streamed (0 before the first connection).
    pub timeline: u32,
    /// Everything before this position was received.
    pub received: Lsn,
    /// Everything before this position is stored in every destination: the
    /// flush position reported to the server.
    pub flushed: Lsn,
    /// The server's end of WAL, as last reported.
    pub server_end: Lsn,
}

/// Why streaming stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The server or the connection.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The repository or a destination.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The catalog of stored WAL.
    #[error(transparent)]
    Store(#[from] WalStoreError),
    /// Streamed bytes did not continue the stored WAL.
    #[error(transparent)]
    Gap(#[from] GapError),
    /// A streamed segment does not decode: a CRC failure or a broken record
    /// (invariant 2: never stored as if it were fine).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The server's timeline history file does not parse.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The slot no longer holds WAL that was never stored: it was advanced by
    /// someone else, or invalidated by `max_slot_wal_keep_size`.
    #[error(
        "replication slot {slot:?} starts at {slot_start}, but pitr stored WAL only up to \
         {stored_end} on timeline {timeline}: the WAL in between is gone from the server. \
         Nothing can recover it; take a new base backup (`pitr backup`) so restores can \
         start after the gap, and make sure nothing else uses the slot"
    )]
    SlotAhead {
        /// The slot.
        slot: String,
        /// Where the slot's WAL starts.
        slot_start: Lsn,
        /// Where stored WAL ends.
        stored_end: Lsn,
        /// The timeline.
        timeline: u32,
    },
    /// The server removed WAL that pitr had not stored: the slot was
    /// invalidated (`max_slot_wal_keep_size`; `wal_status` is `lost` in
    /// `pg_replication_slots`), so nothing held the WAL back.
    #[error(
        "replication slot {slot:?} lost WAL that pitr had not stored yet: the server no longer \
         has the WAL after {stored_end} on timeline {timeline} ({server}). The slot was most \
         likely invalidated by max_slot_wal_keep_size (pg_replication_slots shows wal_status \
         'lost'). That WAL is gone and restores cannot pass {stored_end}: take a new base \
         backup (`pitr backup`) so restores can start after the gap; recreate the slot \
         (SELECT pg_drop_replication_slot('{slot}'); pitr creates it again with RESERVE_WAL \
         when it starts); and raise max_slot_wal_keep_size (-1 means no limit) so the slot \
         keeps WAL until pitr has stored it"
    )]
    SlotLost {
        /// The slot.
        slot: String,
        /// Where stored WAL ends.
        stored_end: Lsn,
        /// The timeline.
        timeline: u32,
        /// What the server said.
        server: String,
    },
}

impl StreamError {
    /// Whether no later try can succeed until someone changes something
    /// (the server's major): the sidecar then stops retrying and says so.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            StreamError::Conn(crate::pg::conn::ConnError::UnsupportedMajor { .. })
        )
    }

    /// Whether another try may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Conn(e) => e.is_transient(),
            StreamError::Repo(RepoError::Ship(e)) => e.is_transient(),
            _ => false,
        }
    }
}

/// How one pass ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `shutdown` fired; everything received was stored and acknowledged.
    Shutdown,
    /// The server ended the timeline; streaming goes on with the next.
    TimelineEnd,
}

/// How the stream reconnects after transient failures: 1 s doubling to
/// 30 s, jitter making the longest wait a minute, for as long as it takes.
const RECONNECT: Backoff = Backoff::forever(Duration::from_secs(1), Duration::from_secs(30));

/// Streams until `shutdown` fires, reconnecting with exponential backoff
/// (`RECONNECT`) after transient failures. Returns the first
/// failure that is not transient.
pub async fn stream(
    repo: Repository,
    opts: StreamOptions,
    progress: watch::Sender<Progress>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StreamError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut delays = RECONNECT.delays();
    loop {
        let mut started = false;
        let pass = pass(
            repo.clone(),
            &opts,
            &progress,
            shutdown.as_mut(),
            &mut started,
        )
        .await;
        if let Some(link) = &opts.link {
            link.send_modify(|l| {
                if l.connected {
                    l.since = Some(jiff::Timestamp::now());
                }
                l.connected = false;
                if let Err(e) = &pass {
                    l.last_error = Some(e.to_string());
                }
            });
        }
        match pass {
            Ok(Ended::Shutdown) => return Ok(()),
            Ok(Ended::TimelineEnd) => delays.reset(),
            Err(e) if e.is_transient() => {
                // A pass that got to stream was a success interrupted (a
                // restart, a dropped connection): retry soon. Only failures
                // in a row back off further.
                if started {
                    delays.reset();
                }
                let delay = delays.next_delay().unwrap_or(RECONNECT.max_delay);
                tracing::warn!(database = %opts.database, error = %e, retry_in = ?delay, "WAL streaming interrupted");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.as_mut() => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// One connection's worth of streaming; see the module docs.
pub async fn stream_once(
    repo: Repository,
    opts: &StreamOptions,
    progress: &watch::Sender<Progress>,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Ended, StreamError> {
    pass(repo, opts, progress, shutdown, &mut false).await
}

/// [`stream_once`], setting `started` once `START_REPLICATION` succeeded.
async fn pass(
    repo: Repository,
    opts: &StreamOptions,
    progress: &watch::Sender<Progress>,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    started: &mut bool,
) -> Result<Ended, StreamError> {
    let mut client = ReplicationClient::connect(&opts.conninfo).await?;
    let format = client.wal_format();
    client.check_wal_level().await?;
    let system = client.identify_system().await?;
    let seg_size = client.wal_segment_size().await?;
    if let Some(link) = &opts.link {
        // Only for the health threshold: a server that will not say is no
        // reason not to stream.
        let keep = client
            .show("max_slot_wal_keep_size")
            .await
            .ok()
            .and_then(|v| crate::pg::setting_bytes(&v));
        link.send_modify(|l| l.max_slot_wal_keep_size = keep);
    }
    let slot = client.physical_slot(&opts.slot).await?;
    let store = WalStore::new(repo.clone(), &opts.database);
    let lineage = lineage(&mut client, &repo, &store, system.timeline).await?;
    let mut ends = Vec::new();
    for e in lineage.entries() {
        if let Some((end, _)) = store.stored_end(e.timeline)? {
            ends.push((e.timeline, end));
        }
    }
    let resume =
        lineage.resume_point(|tli| ends.iter().find(|(t, _)| *t == tli).map(|(_, end)| *end));
    // Start at the beginning of the segment holding the first byte not yet
    // stored: the server keeps that whole segment for the slot, and the
    // chunks already stored deduplicate. After a timeline switch that is the
    // new timeline's first segment, whose head repeats the parent's WAL up
    // to the switch point (already stored, under the parent's name).
    let (timeline, start, flushed) = match (resume, slot.restart_lsn) {
        (Some(r), Some(slot_start))
            if r.stored_end.segment_start(seg_size) < slot_start.segment_start(seg_size) =>
        {
            return Err(StreamError::SlotAhead {
                slot: opts.slot.clone(),
                slot_start,
                stored_end: r.stored_end,
                timeline: r.timeline,
            });
        }
        (Some(r), restart_lsn) => {
            // (PostgreSQL 14 cannot show a slot: nothing to warn about.)
            if restart_lsn.is_none() && format.major >= 15 {
                // PostgreSQL 15 shows an invalidated slot this way. Whether
                // WAL was lost, the server tells when asked for it (see
                // `lost_wal`); if it still has it, streaming revives the slot.
                tracing::warn!(database = %opts.database, slot = %opts.slot,
                    "the replication slot holds no WAL (invalidated by max_slot_wal_keep_size?)");
            }
            (
                r.timeline,
                r.stored_end.segment_start(seg_size),
                r.stored_end,
            )
        }
        // Nothing stored yet: start where the slot holds WAL from, and report
        // no flush position at all (0 is "invalid" to the server, which then
        // leaves the slot where it is).
        (None, restart_lsn) => {
            let from = restart_lsn.unwrap_or(system.xlogpos);
            (
                lineage.timeline_of(from),
                from.segment_start(seg_size),
                Lsn(0),
            )
        }
    };
    progress.send_modify(|p| {
        p.timeline = timeline;
        p.received = start;
        p.flushed = flushed;
        p.server_end = system.xlogpos;
    });
    tracing::info!(database = %opts.database, timeline, server_timeline = system.timeline,
        %start, slot = %opts.slot, "streaming WAL");
    let replication = client
        .start_replication(Some(&opts.slot), start, timeline)
        .await
        .map_err(|e| lost_wal(e.into(), opts, timeline, flushed))?;
    *started = true;
    if let Some(link) = &opts.link {
        link.send_modify(|l| {
            l.connected = true;
            l.since = Some(jiff::Timestamp::now());
        });
    }
    let mut s = Session::new(
        store,
        repo,
        replication,
        timeline,
        seg_size,
        start,
        flushed,
        progress,
        format,
    )?;
    let ended = s.run(opts, shutdown).await;
    ended.map_err(|e| lost_wal(e, opts, timeline, s.flushed()))
}

/// The server's lineage (timelines up to its current one, with switch
/// points), storing every history file of it the repository lacks: a
/// restore follows the server's forks through them (invariant 2: no
/// timeline without its history file). Stored before any of the timeline's
/// WAL.
async fn lineage(
    client: &mut ReplicationClient,
    repo: &Repository,
    store: &WalStore,
    timeline: u32,
) -> Result<Lineage, StreamError> {
    if timeline == 1 {
        return Ok(Lineage::first());
    }
    let history = client.timeline_history(timeline).await?;
    let lineage = Lineage::parse(timeline, &history.content)?;
    let mut w = repo.writer();
    let mut any = false;
    for tli in lineage
        .entries()
        .iter()
        .map(|e| e.timeline)
        .filter(|t| *t > 1)
    {
        if store.find(&history_file_name(tli))?.is_some() {
            continue;
        }
        let content = if tli == timeline {
            history.content.clone()
        } else {
            client.timeline_history(tli).await?.content
        };
        store.put_history(&mut w, tli, &content).await?;
        any = true;
    }
    if any {
        w.commit().await?;
    }
    Ok(lineage)
}

/// Turns the server's "requested WAL segment ... has already been removed"
/// into [`StreamError::SlotLost`]: with a slot, the server removes WAL only
/// after the slot let go of it, which pitr never asks for before storing it.
fn lost_wal(e: StreamError, opts: &StreamOptions, timeline: u32, stored_end: Lsn) -> StreamError {
    match &e {
        // 58P01 undefined_file, from the walsender's read of pg_wal.
        StreamError::Conn(ConnError::Server { error, .. })
            if error.code == "58P01" && error.message.contains("has already been removed") =>
        {
            StreamError::SlotLost {
                slot: opts.slot.clone(),
                stored_end,
                timeline,
                server: error.message.clone(),
            }
        }
        _ => e,
    }
}
