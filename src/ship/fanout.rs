//! Fan-out over every configured destination. A write counts as stored once
//! `quorum` destinations hold it (default: all of them). With a smaller
//! quorum the object also goes to the spool on local disk first, and each
//! destination that did not take it at once gets it from its own queue,
//! retried with backoff and jitter for as long as it takes: a slow or hung
//! destination never blocks the others, and never loses an object. Reads
//! go to the fastest healthy destination first ([`Fanout::read_order`]) and
//! fall back to the next when a copy is missing or bad.

use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::spool::{Spool, SpoolConfig};
use super::{Destination, DestinationHealth, DestinationState, ObjectMeta, PutOutcome, ShipError};
use crate::backoff::Backoff;

/// Every configured destination, in configuration order.
#[derive(Debug, Clone)]
pub struct Fanout {
    dests: Vec<Arc<dyn Destination>>,
    quorum: usize,
    spool: Option<Arc<Spool>>,
    /// One queue per destination, started with the first write.
    queues: Arc<OnceLock<Vec<mpsc::UnboundedSender<String>>>>,
    /// Per-destination health records, when the destinations are tracked.
    health: Arc<Vec<Arc<DestinationHealth>>>,
}

/// Where the fan-out stands, for health and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutStatus {
    /// How many destinations must hold an object before it counts.
    pub quorum: usize,
    /// Objects spooled (held by a quorum, not yet by every destination).
    pub spooled: usize,
    /// Their bytes.
    pub spooled_bytes: u64,
    /// Whether writes are waiting for room in the spool, and for how long.
    pub spool_full_for: Option<Duration>,
    /// Objects that vanished from the spool before reaching a destination
    /// that still lacks them: `(destination, key)`.
    pub lost: Vec<(String, String)>,
}

impl Fanout {
    /// A fan-out over `dests` (at least one) where a write needs all of
    /// them.
    pub fn new(dests: Vec<Arc<dyn Destination>>) -> Self {
        let quorum = dests.len();
        Fanout {
            dests,
            quorum,
            spool: None,
            queues: Arc::new(OnceLock::new()),
            health: Arc::default(),
        }
    }

    /// A fan-out where a write counts once `quorum` (1..=n) destinations hold
    /// it; the others get it from `spool`. A quorum of all needs no spool.
    pub fn with_quorum(
        dests: Vec<Arc<dyn Destination>>,
        quorum: usize,
        spool: SpoolConfig,
    ) -> Self {
        let n = dests.len();
        let quorum = quorum.clamp(1, n.max(1));
        Fanout {
            dests,
            quorum,
            spool: (quorum < n).then(|| Arc::new(Spool::new(spool))),
            queues: Arc::new(OnceLock::new()),
            health: Arc::default(),
        }
    }

    /// Attaches the destinations' health records (see
    /// [`super::Tracked`]), in configuration order.
    pub fn with_health(mut self, health: Vec<Arc<DestinationHealth>>) -> Self {
        self.health = Arc::new(health);
        self
    }

    /// Each tracked destination's health, in configuration order; empty when
    /// the destinations are not tracked.
    pub fn destination_health(&self) -> Vec<DestinationState> {
        self.health.iter().map(|h| h.state()).collect()
    }

    /// The destinations, in configuration order.
    pub fn destinations(&self) -> &[Arc<dyn Destination>] {
        &self.dests
    }

    /// The content identifiers the content-addressed destinations (Storacha)
    /// store `data` under as `key`: `(destination name, CID)` in
    /// configuration order; empty when no destination is content-addressed
    /// (nothing is hashed then).
    pub fn content_ids(&self, key: &str, data: &[u8]) -> Vec<(String, String)> {
        self.dests
            .iter()
            .filter_map(|d| d.content_id(key, data).map(|c| (d.name().to_owned(), c)))
            .collect()
    }

    /// Whether any destination is content-addressed (see
    /// [`Self::content_ids`]); costs one hash of nothing per destination.
    pub fn has_content_ids(&self) -> bool {
        self.dests
            .iter()
            .any(|d| d.content_id("config", &[]).is_some())
    }

    /// The destinations in the order reads should try them: answering ones
    /// before failing ones, then by their recent small-read latency (one
    /// never timed counts as fast, so it gets measured), configuration
    /// order breaking ties. Untracked destinations keep configuration
    /// order.
    pub fn read_order(&self) -> Vec<Arc<dyn Destination>> {
        if self.health.len() != self.dests.len() {
            return self.dests.clone();
        }
        let states = self.destination_health();
        read_order(&states)
            .into_iter()
            .map(|i| self.dests[i].clone())
            .collect()
    }

    /// Where the fan-out stands.
    pub fn status(&self) -> FanoutStatus {
        FanoutStatus {
            quorum: self.quorum,
            spooled: self.spool.as_ref().map_or(0, |s| s.len()),
            spooled_bytes: self.spool.as_ref().map_or(0, |s| s.used()),
            spool_full_for: self
                .spool
                .as_ref()
                .and_then(|s| s.full_since())
                .map(|t| t.elapsed()),
            lost: self
                .spool
                .as_ref()
                .map(|s| s.lost_objects())
                .unwrap_or_default(),
        }
    }

    /// Whether `key` is in the spool, still on its way to some destination:
    /// a scrub must not count such an object as missing there.
    pub fn is_spooled(&self, key: &str) -> bool {
        self.spool.as_ref().is_some_and(|s| s.holds(key))
    }

    /// Stores the object in every destination. Returns once a quorum holds
    /// it (every destination, without a spool); fails if that cannot be.
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<(), ShipError> {
        let Some(spool) = &self.spool else {
            let results = join_all(
                self.dests
                    .iter()
                    .map(|d| d.put_if_absent(key, data.clone())),
            )
            .await;
            for r in results {
                match r? {
                    PutOutcome::Created | PutOutcome::AlreadyExists => {}
                }
            }
            return Ok(());
        };
        let queues = self.queues();
        let fresh = spool
            .add(key, &data, self.dests.len())
            .await
            .map_err(|source| ShipError::Io {
                dest: format!("(spool {})", spool.dir().display()),
                op: "spool",
                key: key.to_owned(),
                source,
                transient: true,
            })?;
        let mut attempts: FuturesUnordered<_> = self
            .dests
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let data = data.clone();
                async move { (i, d.put_if_absent(key, data).await) }
            })
            .collect();
        let mut stored = vec![false; self.dests.len()];
        let mut ok = 0;
        let mut first_err = None;
        while let Some((i, r)) = attempts.next().await {
            match r {
                Ok(_) => {
                    stored[i] = true;
                    ok += 1;
                    if fresh {
                        spool.done(key);
                    }
                    if ok >= self.quorum {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(destination = self.dests[i].name(), key, error = %e,
                        "write failed; the destination gets it from the spool later");
                    first_err.get_or_insert(e);
                }
            }
        }
        // The rest (failed, slow or hung) get it from their queues, read back
        // from the spool: nothing waits on them here, and no object is held
        // in memory for them.
        drop(attempts);
        if fresh {
            for (i, done) in stored.iter().enumerate() {
                if !done {
                    let _ = queues[i].send(key.to_owned());
                }
            }
        }
        if ok >= self.quorum {
            return Ok(());
        }
        Err(first_err.unwrap_or_else(|| ShipError::Io {
            dest: "(quorum)".into(),
            op: "put",
            key: key.to_owned(),
            source: std::io::Error::other(format!(
                "only {ok} of the {} destinations needed stored it",
                self.quorum
            )),
            transient: true,
        }))
    }

    /// The destinations' queues, started on first use with what ended
    /// processes left in their spools; a task keeps adopting such spools
    /// (a `pitr backup` that exited with objects still on their way) every
    /// [`ADOPT_EVERY`].
    fn queues(&self) -> &Vec<mpsc::UnboundedSender<String>> {
        self.queues.get_or_init(|| {
            let Some(spool) = &self.spool else {
                return Vec::new();
            };
            let n = self.dests.len();
            let left = adopt(spool, n);
            if !left.is_empty() {
                tracing::info!(
                    objects = left.len(),
                    "replaying spooled objects of an earlier process to every destination"
                );
            }
            let senders: Vec<_> = self
                .dests
                .iter()
                .map(|d| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    for k in &left {
                        let _ = tx.send(k.clone());
                    }
                    tokio::spawn(catch_up(d.clone(), spool.clone(), rx));
                    tx
                })
                .collect();
            let (spool, txs) = (spool.clone(), senders.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ADOPT_EVERY).await;
                    if txs.iter().all(|t| t.is_closed()) {
                        return;
                    }
                    for k in adopt(&spool, n) {
                        for t in &txs {
                            let _ = t.send(k.clone());
                        }
                    }
                }
            });
            senders
        })
    }

    /// Calls `f` on each destination in order until one succeeds; returns the
    /// first error when all fail (a `NotFound` is reported only if every
    /// destination said so).
    async fn first_ok<T, F, Fut>(&self, mut f: F) -> Result<T, ShipError>
    where
        F: FnMut(Arc<dyn Destination>) -> Fut,
        Fut: Future<Output = Result<T, ShipError>>,
    {
        let mut first_err: Option<ShipError> = None;
        let order = self.read_order();
        for d in &order {
            match f(d.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    tracing::warn!(destination = d.name(), error = %e, "read failed, trying the next destination");
                    let replace = match (&first_err, &e) {
                        (None, _) => true,
                        (Some(ShipError::NotFound { .. }), ShipError::NotFound { .. }) => false,
                        (Some(ShipError::NotFound { .. }), _) => true,
                        _ => false,
                    };
                    if replace {
                        first_err = Some(e);
                    }
                }
            }
        }
        Err(first_err.unwrap_or_else(|| ShipError::NotFound {
            dest: "(none configured)".into(),
            key: String::new(),
        }))
    }

    /// Reads a whole object from the first destination that has it.
    pub async fn get(&self, key: &str) -> Result<Bytes, ShipError> {
        self.first_ok(|d| async move { d.get(key).await }).await
    }

    /// Reads part of an object from the first destination that has it.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, ShipError> {
        self.first_ok(|d| {
            let range = range.clone();
            async move { d.get_range(key, range).await }
        })
        .await
    }

    /// Lists every destination that answers and merges their listings
    /// (sorted by key): with a quorum below all, any one of them may lag,
    /// and a reader that trusted the first to answer would miss what only
    /// the others hold. Disagreements are logged, naming the destination
    /// and an object it lacks (objects still in this process's spool are
    /// expected to be missing and not counted). Fails only when no
    /// destination answers.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError> {
        let order = self.read_order();
        let listed = join_all(
            order
                .iter()
                .map(|d| async move { (d.name().to_owned(), d.list(prefix).await) }),
        )
        .await;
        let mut merged: std::collections::BTreeMap<String, ObjectMeta> = Default::default();
        let mut answered: Vec<(String, std::collections::HashSet<String>)> = Vec::new();
        let mut first_err = None;
        for (name, result) in listed {
            match result {
                Ok(objects) => {
                    let keys = objects.iter().map(|m| m.key.clone()).collect();
                    for m in objects {
                        merged.entry(m.key.clone()).or_insert(m);
                    }
                    answered.push((name, keys));
                }
                Err(e) => {
                    tracing::warn!(destination = %name, prefix, error = %e,
                        "listing failed; merging the other destinations' listings");
                    first_err.get_or_insert(e);
                }
            }
        }
        if answered.is_empty() {
            return Err(first_err.unwrap_or_else(|| ShipError::NotFound {
                dest: "(none configured)".into(),
                key: prefix.to_owned(),
            }));
        }
        for (name, keys) in &answered {
            let lacking: Vec<&String> = merged
                .keys()
                .filter(|k| !keys.contains(*k) && !self.is_spooled(k))
                .collect();
            if let Some(example) = lacking.first() {
                tracing::warn!(
                    destination = %name,
                    prefix,
                    lacking = lacking.len(),
                    example = %example,
                    "destinations disagree: this one lacks objects another lists; it may lag \
                     behind (the spool catches it up) or have lost them (`pitr repair` copies \
                     them back)"
                );
            }
        }
        Ok(merged.into_values().collect())
    }
}

/// How often a writer looks for spools that ended processes left.
const ADOPT_EVERY: Duration = Duration::from_secs(60);

/// [`Spool::adopt`], logged when it fails (writes then fail at `add`).
fn adopt(spool: &Spool, dests: usize) -> Vec<String> {
    spool.adopt(dests).unwrap_or_else(|e| {
        tracing::error!(spool = %spool.dir().display(), error = %e, "cannot claim a spool directory");
        Vec::new()
    })
}

/// Indices of `states` in read order (see [`Fanout::read_order`]).
fn read_order(states: &[DestinationState]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..states.len()).collect();
    order.sort_by_key(|&i| {
        let s = &states[i];
        (s.failing_since.is_some(), s.read_latency_us.unwrap_or(0))
    });
    order
}

/// How a destination's spool queue retries one object: 0.5 s doubling to
/// 45 s (jitter making the longest wait 90 s), for as long as it takes.
const CATCH_UP_RETRY: Backoff =
    Backoff::forever(Duration::from_millis(500), Duration::from_secs(45));

/// One destination's queue: each spooled object, retried with exponential
/// backoff and jitter until the destination holds it. The object is only
/// ever dropped from the spool once every destination has it. One that
/// vanished from the spool (deleted behind pitr's back) is looked up on
/// the destination instead: present, it is done; absent, it is recorded
/// as lost (an error on `/health`) and the queue moves on, never stalled.
async fn catch_up(
    dest: Arc<dyn Destination>,
    spool: Arc<Spool>,
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    while let Some(key) = rx.recv().await {
        let mut delays = CATCH_UP_RETRY.delays();
        loop {
            let attempt = async {
                let data = match spool.read(&key).await {
                    Ok(d) => d,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return match dest.head(&key).await? {
                            Some(_) => Ok(Gone::Present),
                            None => Ok(Gone::Absent),
                        };
                    }
                    Err(source) => {
                        return Err(ShipError::Io {
                            dest: dest.name().to_owned(),
                            op: "read spool",
                            key: key.clone(),
                            source,
                            transient: false,
                        });
                    }
                };
                dest.put_if_absent(&key, data).await.map(|_| Gone::No)
            };
            match attempt.await {
                Ok(Gone::Absent) => {
                    tracing::error!(
                        destination = dest.name(),
                        key,
                        "a spooled object vanished from the spool before this destination got it; \
                         `pitr repair` (or the scrub) copies it from a destination that holds it"
                    );
                    spool.lost(dest.name(), &key);
                    break;
                }
                Ok(_) => {
                    spool.done(&key);
                    break;
                }
                Err(e) => {
                    // Forever: the object stays spooled until this
                    // destination holds it.
                    let delay = delays.next_delay().unwrap_or(CATCH_UP_RETRY.max_delay);
                    tracing::warn!(destination = dest.name(), key, error = %e,
                        retry_in = ?delay, "catching up from the spool failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// What catching up found.
enum Gone {
    /// The object was in the spool, and is stored now.
    No,
    /// It vanished from the spool; the destination has it.
    Present,
    /// It vanished from the spool; the destination lacks it.
    Absent,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, failing: bool, latency: Option<u64>) -> DestinationState {
        DestinationState {
            name: name.to_owned(),
            failing_since: failing.then(jiff::Timestamp::now),
            read_latency_us: latency,
            ..Default::default()
        }
    }

    #[test]
    fn reads_go_to_the_fastest_answering_destination_first() {
        // Unmeasured and tied: configuration order.
        let s = [state("a", false, None), state("b", false, None)];
        assert_eq!(read_order(&s), [0, 1]);
        // The slow one goes after the fast one.
        let s = [
            state("a", false, Some(200_000)),
            state("b", false, Some(900)),
        ];
        assert_eq!(read_order(&s), [1, 0]);
        // One never timed is tried before a slow one, so it gets measured.
        let s = [state("a", false, Some(200_000)), state("b", false, None)];
        assert_eq!(read_order(&s), [1, 0]);
        // A failing destination goes last, however fast it was.
        let s = [
            state("a", true, Some(10)),
            state("b", false, Some(50_000)),
            state("c", false, Some(5_000)),
        ];
        assert_eq!(read_order(&s), [2, 1, 0]);
        let s = [state("a", true, Some(10)), state("b", true, Some(5))];
        assert_eq!(read_order(&s), [1, 0]);
    }

    /// Every file named `name` beneath `dir`.
    fn find(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if e.file_name() == name {
                    out.push(p);
                }
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spool_file_deleted_behind_pitrs_back_does_not_stall_the_destination() {
        use crate::ship::FsDestination;
        use crate::ship::fault::{FaultPlan, FaultyDestination};
        let tmp = tempfile::tempdir().expect("tempdir");
        let a: Arc<dyn Destination> = Arc::new(FsDestination::new("a", tmp.path().join("a")));
        let b = Arc::new(FaultyDestination::new(FsDestination::new(
            "b",
            tmp.path().join("b"),
        )));
        b.set_plan(FaultPlan {
            fail_puts: 1000,
            ..FaultPlan::default()
        });
        let spool_dir = tmp.path().join("spool");
        let fanout = Fanout::with_quorum(
            vec![a, b.clone() as Arc<dyn Destination>],
            1,
            SpoolConfig {
                dir: spool_dir.clone(),
                max_bytes: 1 << 20,
            },
        );
        fanout
            .put_if_absent("obj/1", Bytes::from_static(b"one"))
            .await
            .expect("a holds it");
        fanout
            .put_if_absent("obj/2", Bytes::from_static(b"two"))
            .await
            .expect("a holds it");
        // Deleted behind pitr's back while `b` is down; then `b` recovers.
        let files = find(&spool_dir, "obj~1");
        assert_eq!(files.len(), 1, "{files:?}");
        std::fs::remove_file(&files[0]).expect("delete");
        b.set_plan(FaultPlan::default());
        let mut waited = 0;
        while fanout.status().spooled > 0 {
            assert!(
                waited < 300,
                "the queue of b is stuck: {:?}",
                fanout.status()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
        assert!(b.head("obj/2").await.expect("head").is_some());
        assert_eq!(fanout.status().lost, [("b".to_owned(), "obj/1".to_owned())]);
    }

    #[test]
    fn the_latency_average_follows_recent_reads() {
        let h = DestinationHealth::new("d");
        assert_eq!(h.state().read_latency_us, None);
        h.record_read_latency(Duration::from_millis(100));
        assert_eq!(h.state().read_latency_us, Some(100_000));
        for _ in 0..20 {
            h.record_read_latency(Duration::from_millis(1));
        }
        let now = h.state().read_latency_us.expect("measured");
        assert!(now < 2_000, "{now}");
    }
}
