//! One streaming session: the replication stream in, chunks to the
//! preparing task (`wal::prepare`), prepared items committed one commit at a
//! time, and the flush position reported only after a commit returned
//! (invariant 1).

use std::collections::VecDeque;
use std::future::Future;

use tokio::sync::watch;

use super::{Ended, Progress, StreamError, StreamOptions};
use crate::pg::{
    Lsn, Segment, WalFormat,
    conn::{ReplMessage, ReplicationStream},
};
use crate::repo::Repository;
use crate::wal::assemble::{Assembler, GapError};
use crate::wal::prepare::{Job, Preparer, Ready};
use crate::wal::store::{WAL_CHUNK, WalStore};

/// WAL messages smaller than this mean the server is caught up.
const COALESCE_BELOW: usize = 64 << 10;

/// Chunks cut but not yet taken by the preparing task, above which the
/// session stops reading the server (bounded memory; the slot holds the WAL).
const OUTBOX_MAX: usize = 4;

/// Prepared items stored in one commit at most.
const COMMIT_ITEMS_MAX: usize = 4;

pub(super) struct Session<'a> {
    store: WalStore,
    repo: Repository,
    stream: ReplicationStream,
    assembler: Assembler,
    /// Hashes, compresses and decodes chunks off the runtime (`prepare`).
    preparer: Preparer,
    seg_size: u64,
    flushed: Lsn,
    progress: &'a watch::Sender<Progress>,
    /// Jobs for the preparer that its queue had no room for yet, in order.
    outbox: VecDeque<Job>,
    /// Items asked of the preparer (segment ends and cuts) not yet
    /// committed.
    asked: usize,
    /// The end of the last item asked for.
    asked_end: Lsn,
    /// A partial was asked for and is not yet committed.
    cutting: bool,
    /// A partial is due, but waits until the one asked for is committed:
    /// the next one then covers all that arrived meanwhile.
    cut_wanted: bool,
    /// The one commit in flight; the session reads on meanwhile.
    commit: Option<tokio::task::JoinHandle<Result<Committed, StreamError>>>,
}

impl Session<'_> {
    /// A session streaming `timeline` from `start` (a segment's start),
    /// with everything before `flushed` stored, from a server of the major of
    /// `format`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new<'a>(
        store: WalStore,
        repo: Repository,
        stream: ReplicationStream,
        timeline: u32,
        seg_size: u64,
        start: Lsn,
        flushed: Lsn,
        progress: &'a watch::Sender<Progress>,
        format: &'static WalFormat,
    ) -> Result<Session<'a>, StreamError> {
        let first = Segment::containing(timeline, start, seg_size);
        Ok(Session {
            store,
            preparer: Preparer::start(&repo, seg_size, first, format)?,
            repo,
            stream,
            assembler: Assembler::new(timeline, seg_size, WAL_CHUNK, start),
            seg_size,
            flushed,
            progress,
            outbox: VecDeque::new(),
            asked: 0,
            // The session re-reads the segment holding the first byte not
            // yet stored from its start: no partial until it has passed what
            // is stored, or a newer, shorter partial would hide the stored
            // one from `wal-fetch`.
            asked_end: start.max(flushed),
            cutting: false,
            cut_wanted: false,
            commit: None,
        })
    }

    /// Everything before this is stored and was acknowledged.
    pub(super) fn flushed(&self) -> Lsn {
        self.flushed
    }

    pub(super) async fn run(
        &mut self,
        opts: &StreamOptions,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Ended, StreamError> {
        let mut partial_tick = tokio::time::interval(opts.partial_interval);
        let mut status_tick = tokio::time::interval(opts.status_interval);
        partial_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set when the session is to end: then nothing more is read, and it
        // ends once everything received is stored and acknowledged.
        let mut closing: Option<Ended> = None;
        loop {
            if let Some(ended) = closing
                && self.outbox.is_empty()
                && self.asked == 0
                && !self.cut_wanted
            {
                return Ok(ended);
            }
            let jobs = self.preparer.jobs.clone();
            tokio::select! {
                msg = self.stream.next(), if closing.is_none() && self.outbox.len() < OUTBOX_MAX => match msg? {
                    Some(ReplMessage::XLogData { start, end_of_wal, data, .. }) => {
                        self.progress.send_modify(|p| p.server_end = end_of_wal);
                        for piece in self.assembler.push(start, &data)? {
                            if piece.ends_segment(self.seg_size) {
                                self.asked += 1;
                                self.asked_end = piece.end(self.seg_size);
                            }
                            self.outbox.push_back(Job::Chunk(piece));
                        }
                        self.progress.send_modify(|p| p.received = self.assembler.position());
                        // The server sends up to 128 KiB per message when it
                        // has a backlog: then read on at once. A small
                        // message means it is caught up and sends each
                        // commit's flush on its own: once everything received
                        // is handled, nap, so that the next read takes all
                        // that came meanwhile with one wake-up. Never while
                        // messages are buffered or the last read filled the
                        // buffer: napping per message would cap throughput
                        // at one message per nap.
                        if data.len() < COALESCE_BELOW
                            && !opts.coalesce.is_zero()
                            && self.stream.drained()
                        {
                            tokio::time::sleep(opts.coalesce).await;
                        }
                    }
                    Some(ReplMessage::Keepalive { end_of_wal, reply_requested, .. }) => {
                        self.progress.send_modify(|p| p.server_end = end_of_wal);
                        if reply_requested {
                            self.send_status().await?;
                        }
                    }
                    None => {
                        // The timeline ended at its switch point, and the
                        // server sent all WAL before it. It may have sent a
                        // little past it (a record torn by the promotion):
                        // kept, as pg_receivewal does, since recovery reads
                        // a parent only up to the switch point.
                        let position = self.assembler.position();
                        if let Some(end) = self.stream.ended()
                            && end.start > position
                        {
                            return Err(GapError {
                                timeline: self.assembler.timeline(),
                                expected: position,
                                got: end.start,
                            }
                            .into());
                        }
                        closing = Some(Ended::TimelineEnd);
                        self.want_cut();
                    }
                },
                permit = jobs.reserve(), if !self.outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(job) = self.outbox.pop_front() {
                            permit.send(job);
                        }
                    }
                    // The preparer stopped after an error, which `next`
                    // returns; nothing more goes to it.
                    Err(_) => self.outbox.clear(),
                },
                item = self.preparer.next(), if self.commit.is_none() => match item {
                    Some(Ok(ready)) => {
                        // Whatever else is ready goes into the same commit
                        // (a segment's end and the next partial, under a
                        // backlog): one round of uploads and fsyncs.
                        let mut items = vec![ready];
                        while items.len() < COMMIT_ITEMS_MAX
                            && let Ok(next) = self.preparer.ready.try_recv()
                        {
                            items.push(next?);
                        }
                        self.commit = Some(self.start_commit(items));
                    }
                    Some(Err(e)) => return Err(e),
                    None => unreachable!("the preparer ends only after an error or when its jobs close"),
                },
                done = wait(&mut self.commit), if self.commit.is_some() => {
                    self.commit = None;
                    let done = done?;
                    self.asked -= done.items;
                    if done.partial {
                        self.cutting = false;
                    }
                    self.acknowledge(done.end).await?;
                    if self.cut_wanted {
                        self.want_cut();
                    }
                }
                _ = partial_tick.tick() => self.want_cut(),
                _ = status_tick.tick() => self.send_status().await?,
                () = shutdown.as_mut(), if closing.is_none() => {
                    closing = Some(Ended::Shutdown);
                    self.want_cut();
                }
            }
        }
    }

    /// Asks for a partial of what arrived since the last item asked for, at
    /// once unless the partial asked for before is not yet stored, else
    /// after that (`cut_wanted`): one partial in the pipeline at a time, so
    /// partials never queue up behind a slow destination. Segments do not
    /// hold a partial back: it is prepared while they are stored.
    fn want_cut(&mut self) {
        let position = self.assembler.position();
        if position <= self.asked_end {
            self.cut_wanted = false;
            return;
        }
        if self.cutting {
            self.cut_wanted = true;
            return;
        }
        self.cut_wanted = false;
        self.cutting = true;
        self.asked += 1;
        self.asked_end = position;
        self.outbox.push_back(Job::Cut {
            end: position,
            tail: self.assembler.tail(),
        });
    }

    /// Commits prepared items (in WAL order) in one commit, in its own
    /// task, so the session reads on.
    fn start_commit(
        &self,
        items: Vec<Ready>,
    ) -> tokio::task::JoinHandle<Result<Committed, StreamError>> {
        let store = self.store.clone();
        let repo = self.repo.clone();
        let seg_size = self.seg_size;
        tokio::spawn(async move {
            let mut w = repo.writer();
            let mut done = Committed {
                end: Lsn(0),
                items: items.len(),
                partial: false,
            };
            for ready in items {
                store
                    .put_prepared(
                        &mut w,
                        ready.segment,
                        seg_size,
                        ready.end,
                        ready.partial,
                        ready.chunks,
                        ready.index,
                    )
                    .await?;
                done.end = done.end.max(ready.end);
                done.partial |= ready.partial;
            }
            w.commit().await?;
            Ok(done)
        })
    }

    /// Invariant 1: called only after a commit returned, with the end of
    /// what it stored; commits run one at a time, in WAL order.
    async fn acknowledge(&mut self, stored_end: Lsn) -> Result<(), StreamError> {
        if stored_end > self.flushed {
            self.flushed = stored_end;
            self.progress.send_modify(|p| p.flushed = stored_end);
        }
        self.send_status().await
    }

    async fn send_status(&mut self) -> Result<(), StreamError> {
        // Once the server ended the timeline there is no COPY to report in
        // (even before `next` said so, when a timer won the race); the next
        // pass reports the stored position in its first status.
        if !self.stream.is_streaming() {
            return Ok(());
        }
        // After a restart the assembler re-reads the segment from its start,
        // behind what is already stored: never report write below flush.
        let received = self.assembler.position().max(self.flushed);
        self.stream
            .send_status(received, self.flushed, self.flushed, false)
            .await?;
        Ok(())
    }
}

/// What a commit stored.
struct Committed {
    /// The end of its last item: everything before is stored.
    end: Lsn,
    /// How many items.
    items: usize,
    /// Whether one was a partial.
    partial: bool,
}

/// The commit in flight's result; pending when there is none (the branch is
/// disabled then anyway).
async fn wait(
    commit: &mut Option<tokio::task::JoinHandle<Result<Committed, StreamError>>>,
) -> Result<Committed, StreamError> {
    match commit {
        Some(handle) => match handle.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: only when the runtime shuts down, dropping this
            // session too.
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
