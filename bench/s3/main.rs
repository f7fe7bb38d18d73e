//! S3 destination benchmark, against moto's S3 server on loopback (the same
//! server the tests use; `.ci/setup` installs it):
//!
//! 1. Upload throughput of pitr's S3 destination (`object_store`, conditional
//!    create) for 16 MiB objects (the default pack size) and for the small
//!    packs WAL partials make, one request at a time and four at a time,
//!    beside boto3's `put_object` — what a backup script in Python would
//!    use — on the same server. On loopback the server is most of the cost:
//!    these numbers compare clients, not networks.
//! 2. PUT requests per hour that streaming one database costs a destination:
//!    pitr streams a real PostgreSQL cluster into a repository on S3 (a
//!    counting layer in front of the destination), first idle, then at 10
//!    commits per second. Target: ≤ 360 PUTs per hour per idle database per
//!    destination.
//!
//! ```text
//! cargo bench --bench s3                   # prints the tables
//! cargo bench --bench s3 -- --write-md     # also rewrites BENCHMARKS.md
//! ```
//!
//! 3. The same at 10 commits per second with the S3 destination batched
//!    (`batch_interval`) beside a directory that takes every write: PUTs per
//!    hour on the batched destination (target ≤ 120) and the delay from
//!    commit to acknowledgement (the RPO), which must match the unbatched
//!    run's.
//!
//! Environment: `PITR_BENCH_IDLE_SECS` (default 300), `PITR_BENCH_BUSY_SECS`
//! (default 120), `PITR_BENCH_ROUNDS` (throughput rounds, default 3),
//! `PITR_BENCH_BATCH_SECS` (the batch interval, default 300),
//! `PITR_BENCH_BATCHED_SECS` (how long the batched run lasts, default 900),
//! `PITR_BENCH_ALONE_SECS` (the run before it with the directory alone, for
//! the acknowledgement delay without a batched destination, default 120).

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use pitr::ship::{Destination, ObjectMeta, PutOutcome, S3Destination, S3Options, ShipError};

/// moto's server on a free loopback port, killed on drop.
struct Moto {
    child: std::process::Child,
    port: u16,
}

impl Moto {
    fn start() -> anyhow::Result<Moto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("start moto_server (pip install 'moto[server]')")?;
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bucket(&self, name: &str) -> anyhow::Result<S3Options> {
        let ok = std::process::Command::new("curl")
            .args(["-sf", "-X", "PUT"])
            .arg(format!("{}/{name}", self.endpoint()))
            .status()?
            .success();
        anyhow::ensure!(ok, "create bucket {name}");
        Ok(S3Options {
            bucket: name.into(),
            prefix: String::new(),
            region: "us-east-1".into(),
            endpoint: Some(self.endpoint()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            request_timeout: Duration::from_secs(60),
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts the PUT requests that reach a destination.
#[derive(Debug)]
struct Counting<D> {
    inner: D,
    puts: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

#[async_trait]
impl<D: Destination> Destination for Counting<D> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn prepare(&self) -> Result<(), ShipError> {
        self.inner.prepare().await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome, ShipError> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.inner.put_if_absent(key, data).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, ShipError> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, ShipError> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ShipError> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ShipError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), ShipError> {
        self.inner.delete(key).await
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// MB/s of `count` uploads of `size` bytes through pitr's destination,
/// `parallel` at a time.
async fn pitr_upload(
    d: &Arc<S3Destination>,
    tag: &str,
    size: usize,
    count: usize,
    parallel: usize,
) -> anyhow::Result<f64> {
    use futures::StreamExt;
    let data: Bytes = (0..size)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let started = Instant::now();
    let results: Vec<Result<PutOutcome, ShipError>> = futures::stream::iter(0..count)
        .map(|i| {
            let d = d.clone();
            let data = data.clone();
            let key = format!("{tag}/{i}");
            async move { d.put_if_absent(&key, data).await }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok((size * count) as f64 / common::MB / started.elapsed().as_secs_f64())
}

/// MB/s of the same uploads with boto3, one at a time.
fn boto3_upload(
    endpoint: &str,
    bucket: &str,
    tag: &str,
    size: usize,
    count: usize,
) -> anyhow::Result<f64> {
    let script = format!(
        r#"
import boto3, time
s3 = boto3.client("s3", endpoint_url="{endpoint}", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
data = bytes(i % 251 for i in range({size}))
t = time.monotonic()
for i in range({count}):
    s3.put_object(Bucket="{bucket}", Key="{tag}/%d" % i, Body=data)
print(time.monotonic() - t)
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .context("run python3 with boto3")?;
    anyhow::ensure!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok((size * count) as f64 / common::MB / secs)
}

async fn throughput(moto: &Moto, rounds: usize) -> anyhow::Result<String> {
    let settings = moto.bucket("throughput")?;
    let d = Arc::new(S3Destination::new("s3", &settings));
    let cases = [
        (16usize << 20, 12usize, "16 MiB (a full pack)"),
        (128 << 10, 120, "128 KiB (a WAL partial's pack)"),
    ];
    let mut md = String::from(
        "| object size | pitr, 1 at a time | pitr, 4 at a time | boto3 `put_object`, 1 at a time |\n| --- | --- | --- | --- |\n",
    );
    for (size, count, label) in cases {
        let (mut one, mut four, mut boto) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            one.push(pitr_upload(&d, &format!("p1-{size}-{r}"), size, count, 1).await?);
            boto.push(boto3_upload(
                &moto.endpoint(),
                "throughput",
                &format!("b-{size}-{r}"),
                size,
                count,
            )?);
            four.push(pitr_upload(&d, &format!("p4-{size}-{r}"), size, count, 4).await?);
        }
        md.push_str(&format!(
            "| {label} | {:.1} MB/s | {:.1} MB/s | {:.1} MB/s |\n",
            median(one),
            median(four),
            median(boto)
        ));
    }
    Ok(md)
}

async fn puts_per_hour(moto: &Moto, idle_secs: u64, busy_secs: u64) -> anyhow::Result<String> {
    let base = std::env::temp_dir();
    let pg = common::pg::Cluster::start(&base, &[])?;
    let settings = moto.bucket("stream")?;
    let puts = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let dest: Arc<dyn Destination> = Arc::new(Counting {
        inner: S3Destination::new("s3", &settings),
        puts: puts.clone(),
        bytes: bytes.clone(),
    });
    let fanout = pitr::ship::Fanout::new(vec![dest]);
    let dir = tempfile::tempdir()?;
    let identity = age::x25519::Identity::generate();
    let opts = pitr::repo::RepoOptions {
        recipients: vec![identity.to_public()],
        identities: vec![],
        key_file: None,
        state_dir: dir.path().join("state"),
        zstd_level: 3,
        pack_size: 16 << 20,
    };
    pitr::repo::Repository::init(&fanout, &opts).await?;
    let repo = pitr::repo::Repository::open(fanout, opts).await?;
    let info = pitr::pg::ConnInfo::parse(&pg.conninfo())?;
    let (tx, progress) = tokio::sync::watch::channel(pitr::wal::Progress::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(pitr::wal::stream(
        repo,
        pitr::wal::StreamOptions::new("main", info, "pitr"),
        tx,
        async {
            let _ = stopped.await;
        },
    ));
    let client = pg.connect().await?;
    client
        .batch_execute("CREATE TABLE t (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        .await?;
    // Settle: the table, the slot, the first partials.
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let lsn: pitr::pg::Lsn = lsn.parse()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.borrow().flushed < lsn {
        anyhow::ensure!(Instant::now() < deadline, "the stream did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let p0 = puts.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle = puts.load(Ordering::Relaxed) - p0;

    let p1 = puts.load(Ordering::Relaxed);
    let b1 = bytes.load(Ordering::Relaxed);
    let (n, ack) = ten_commits_per_second(&client, &progress, busy_secs).await?;
    let busy = puts.load(Ordering::Relaxed) - p1;
    let busy_bytes = bytes.load(Ordering::Relaxed) - b1;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;

    let per_hour = |count: u64, secs: u64| count as f64 * 3600.0 / secs as f64;
    Ok(format!(
        "| database | measured | PUTs | PUTs per hour | bytes uploaded per hour | commit to acknowledgement, median / max |\n| --- | --- | --- | --- | --- | --- |\n\
         | idle | {idle_secs} s | {idle} | {:.0} | - | - |\n\
         | 10 commits/s | {busy_secs} s ({n} commits) | {busy} | {:.0} | {:.1} MB | {} |\n",
        per_hour(idle, idle_secs),
        per_hour(busy, busy_secs),
        busy_bytes as f64 * 3600.0 / busy_secs as f64 / common::MB,
        ack.show(),
    ))
}

/// How long each commit waited for pitr's acknowledgement (the RPO a
/// destination taking every write gives).
struct AckDelays(Vec<Duration>);

impl AckDelays {
    fn show(&self) -> String {
        let mut v = self.0.clone();
        v.sort();
        match (v.get(v.len() / 2), v.last()) {
            (Some(m), Some(x)) => format!("{} ms / {} ms", m.as_millis(), x.as_millis()),
            _ => "-".to_owned(),
        }
    }
}

/// One INSERT every 100 ms for `secs`; each commit's WAL position is
/// watched until the stream acknowledges it.
async fn ten_commits_per_second(
    client: &tokio_postgres::Client,
    progress: &tokio::sync::watch::Receiver<pitr::wal::Progress>,
    secs: u64,
) -> anyhow::Result<(u64, AckDelays)> {
    let started = Instant::now();
    let mut n = 0u64;
    let mut pending: std::collections::VecDeque<(pitr::pg::Lsn, Instant)> = Default::default();
    let mut delays = Vec::new();
    let mut settle = |pending: &mut std::collections::VecDeque<(pitr::pg::Lsn, Instant)>| {
        let flushed = progress.borrow().flushed;
        while let Some((lsn, at)) = pending.front() {
            if *lsn > flushed {
                break;
            }
            delays.push(at.elapsed());
            pending.pop_front();
        }
    };
    while started.elapsed() < Duration::from_secs(secs) {
        client.execute("INSERT INTO t DEFAULT VALUES", &[]).await?;
        let at = Instant::now();
        let lsn: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        pending.push_back((lsn.parse()?, at));
        n += 1;
        let next = Duration::from_millis(100 * n);
        while let Some(wait) = next.checked_sub(started.elapsed()) {
            settle(&mut pending);
            tokio::time::sleep(wait.min(Duration::from_millis(10))).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() && Instant::now() < deadline {
        settle(&mut pending);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(
        pending.is_empty(),
        "commits were not acknowledged within 30 s"
    );
    Ok((n, AckDelays(delays)))
}

/// The same database at 10 commits per second with two destinations: a
/// directory taking every write, and the S3 one batched every `batch_secs`
/// (`repo::batch`, as `pitr run` drives it). Counts the batched one's PUTs
/// and the acknowledgement delay, which only the directory sets.
async fn batched_puts_per_hour(
    moto: &Moto,
    batch_secs: u64,
    busy_secs: u64,
    alone_secs: u64,
) -> anyhow::Result<String> {
    let base = std::env::temp_dir();
    let pg = common::pg::Cluster::start(&base, &[])?;
    let settings = moto.bucket("batched")?;
    let puts = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let s3: Arc<dyn Destination> = Arc::new(Counting {
        inner: S3Destination::new("s3", &settings),
        puts: puts.clone(),
        bytes: bytes.clone(),
    });
    let dir = tempfile::tempdir()?;
    let local: Arc<dyn Destination> = Arc::new(pitr::ship::FsDestination::new(
        "local".to_owned(),
        dir.path().join("store"),
    ));
    let fanout = pitr::ship::Fanout::new(vec![local]);
    let identity = age::x25519::Identity::generate();
    let opts = pitr::repo::RepoOptions {
        recipients: vec![identity.to_public()],
        identities: vec![],
        key_file: None,
        state_dir: dir.path().join("state"),
        zstd_level: 3,
        pack_size: 16 << 20,
    };
    pitr::repo::Repository::init(&fanout, &opts).await?;
    let repo = pitr::repo::Repository::open(fanout, opts.clone()).await?;
    let info = pitr::pg::ConnInfo::parse(&pg.conninfo())?;
    let (tx, progress) = tokio::sync::watch::channel(pitr::wal::Progress::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(pitr::wal::stream(
        repo.clone(),
        pitr::wal::StreamOptions::new("main", info, "pitr"),
        tx,
        async {
            let _ = stopped.await;
        },
    ));
    let client = pg.connect().await?;
    client
        .batch_execute("CREATE TABLE t (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        .await?;
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let lsn: pitr::pg::Lsn = lsn.parse()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.borrow().flushed < lsn {
        anyhow::ensure!(Instant::now() < deadline, "the stream did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // First the directory alone: the acknowledgement delay without any
    // batched destination, on the same cluster and stream.
    let (_, alone) = ten_commits_per_second(&client, &progress, alone_secs).await?;
    let stage = Arc::new(pitr::repo::BatchStage::new(
        "s3",
        &opts.state_dir,
        &opts.recipients,
        repo.key(),
    )?);
    repo.attach_batch_stage(stage.clone());
    let batched = repo.open_batched(pitr::ship::Fanout::new(vec![s3])).await?;
    // The first batch brings the destination up to date; counting starts
    // after it, as a sidecar that has run for a while sees it.
    repo.send_batch(&batched, Some(&stage), &pitr::wal::superseded_by)
        .await?;
    let (batch_stop, mut batch_stopped) = tokio::sync::watch::channel(false);
    let batcher = {
        let (repo, batched, stage) = (repo.clone(), batched.clone(), stage.clone());
        tokio::spawn(async move {
            let mut batches = Vec::new();
            loop {
                tokio::select! {
                    _ = batch_stopped.changed() => return Ok::<_, anyhow::Error>(batches),
                    () = tokio::time::sleep(Duration::from_secs(batch_secs)) => {}
                }
                batches.push(
                    repo.send_batch(&batched, Some(&stage), &pitr::wal::superseded_by)
                        .await?,
                );
            }
        })
    };
    let p1 = puts.load(Ordering::Relaxed);
    let b1 = bytes.load(Ordering::Relaxed);
    let (n, ack) = ten_commits_per_second(&client, &progress, busy_secs).await?;
    let _ = batch_stop.send(true);
    let mut batches = batcher.await??;
    // One more, as the next interval would: it carries the end of the run,
    // so every commit measured is in the count.
    batches.push(
        repo.send_batch(&batched, Some(&stage), &pitr::wal::superseded_by)
            .await?,
    );
    let busy = puts.load(Ordering::Relaxed) - p1;
    let busy_bytes = bytes.load(Ordering::Relaxed) - b1;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    let built: usize = batches.iter().map(|b| b.packs_built).sum();
    let copied: usize = batches.iter().map(|b| b.packs_copied).sum();
    Ok(format!(
        "| destinations | measured | batches | PUTs to s3 | s3 PUTs per hour | s3 bytes uploaded per hour | packs built / copied whole | commit to acknowledgement, median / max |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- |\n\
         | fs alone (before s3 is added) | {alone_secs} s | - | - | - | - | - | {} |\n\
         | fs, and s3 with batch_interval {batch_secs} s | {busy_secs} s ({n} commits) | {} | {busy} | {:.0} | {:.1} MB | {built} / {copied} | {} |\n",
        alone.show(),
        batches.len(),
        busy as f64 * 3600.0 / busy_secs as f64,
        busy_bytes as f64 * 3600.0 / busy_secs as f64 / common::MB,
        ack.show(),
    ))
}

fn main() -> anyhow::Result<()> {
    let Some(write_md) = common::run_mode("s3") else {
        return Ok(());
    };
    let rounds = env_u64("PITR_BENCH_ROUNDS", 3) as usize;
    let idle_secs = env_u64("PITR_BENCH_IDLE_SECS", 300);
    let busy_secs = env_u64("PITR_BENCH_BUSY_SECS", 120);
    let batch_secs = env_u64("PITR_BENCH_BATCH_SECS", 300);
    let batched_secs = env_u64("PITR_BENCH_BATCHED_SECS", 900);
    // `PITR_BENCH_PARTS=batched` runs the third part alone (it has its own
    // section in BENCHMARKS.md).
    let parts = std::env::var("PITR_BENCH_PARTS").unwrap_or_else(|_| "all".to_owned());
    let part = |p: &str| parts == "all" || parts.split(',').any(|x| x == p);
    let rt = tokio::runtime::Runtime::new()?;
    let moto = Moto::start()?;
    let load = || common::load_average().map_or("-".to_owned(), |l| format!("{l:.2}"));
    if part("throughput") || part("puts") {
        let load_before = load();
        let tp = rt.block_on(throughput(&moto, rounds))?;
        let puts = rt.block_on(puts_per_hour(&moto, idle_secs, busy_secs))?;
        let mut md = String::new();
        md.push_str(&format!(
            "Command: `cargo bench --bench s3 -- --write-md` (rounds {rounds}, idle {idle_secs} s, busy {busy_secs} s); \
             load average before: {load_before}.\n\n"
        ));
        md.push_str(
            "Upload throughput to moto's S3 server on loopback (medians of the rounds):\n\n",
        );
        md.push_str(&tp);
        md.push_str("\nPUT requests to one S3 destination while streaming one database:\n\n");
        md.push_str(&puts);
        common::report(
            "<!-- BEGIN s3 results (generated by bench/s3/main.rs) -->",
            "<!-- END s3 results -->",
            "## `s3`: the S3 destination (throughput, PUTs per hour)",
            &md,
            write_md,
        )?;
    }
    if part("batched") {
        let load_before = load();
        let alone_secs = env_u64("PITR_BENCH_ALONE_SECS", 120);
        let batched = rt.block_on(batched_puts_per_hour(
            &moto,
            batch_secs,
            batched_secs,
            alone_secs,
        ))?;
        let md = format!(
            "Command: `PITR_BENCH_PARTS=batched cargo bench --bench s3 -- --write-md` (interval {batch_secs} s over \
             {batched_secs} s at 10 commits per second); load average before: {load_before}, after: {}.\n\n{batched}",
            load()
        );
        common::report(
            "<!-- BEGIN s3 batched results (generated by bench/s3/main.rs) -->",
            "<!-- END s3 batched results -->",
            "## `s3`: the S3 destination (throughput, PUTs per hour)",
            &md,
            write_md,
        )?;
    }
    Ok(())
}
