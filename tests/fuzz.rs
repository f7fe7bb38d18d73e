//! The fuzz driver (FUZZING.md). A stable-toolchain harness: no nightly,
//! no coverage guidance; inputs are the seeds (the golden files, and real
//! files made here by SQLite and tar) mutated at random, plus random bytes.
//! Each input goes to one of `pitr::fuzz`'s targets, and fails the run when
//! it panics, asks for more than 256 MiB at once or holds more than 256 MiB
//! live (a counting global allocator), or takes over 1 s of CPU (reported
//! always; a failure only in a long run: `cargo test` asserts no timing). A
//! watchdog aborts an input stuck for 60 s of wall time. Failing inputs are
//! written to `target/fuzz-failures/`.
//!
//!   cargo test --test fuzz                      # every target, briefly
//!   PITR_FUZZ_INPUTS=10000000 PITR_FUZZ_TARGETS=wal,tar \
//!     cargo test --release --test fuzz          # a long run
//!   PITR_FUZZ_REPLAY=target/fuzz-failures/tar-1.bin cargo test --test fuzz

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Over this, an allocation (or the live total) is a failure.
const LIMIT: usize = 256 << 20;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static OVER: AtomicBool = AtomicBool::new(false);

/// Counts live bytes; refuses (null, so the process aborts) any single
/// request over the limit after noting it.
struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LIMIT {
            OVER.store(true, Ordering::SeqCst);
            save_current(b"oom");
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as given.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
            if live > LIMIT {
                OVER.store(true, Ordering::Relaxed);
            }
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > LIMIT {
            OVER.store(true, Ordering::SeqCst);
            save_current(b"oom");
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as given.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
            if live > LIMIT {
                OVER.store(true, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The input being run, for the allocator and the watchdog to save
/// without allocating (they may run when allocating is what failed).
static CURRENT_PTR: AtomicUsize = AtomicUsize::new(0);
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
/// Input counter and its start (ms since the driver started).
static STARTED_MS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Writes the current input to `target/fuzz-failures/current-<why>.bin`
/// with raw system calls (no allocation).
fn save_current(why: &[u8]) {
    let mut path = [0u8; 128];
    let prefix = b"target/fuzz-failures/current-";
    let n = prefix.len() + why.len();
    if n + 5 >= path.len() {
        return;
    }
    path[..prefix.len()].copy_from_slice(prefix);
    path[prefix.len()..n].copy_from_slice(why);
    path[n..n + 4].copy_from_slice(b".bin");
    let ptr = CURRENT_PTR.load(Ordering::SeqCst) as *const u8;
    let len = CURRENT_LEN.load(Ordering::SeqCst);
    if ptr.is_null() {
        return;
    }
    // SAFETY: a NUL-terminated path; the input slice outlives the target
    // call it is set for (the driver clears it afterwards).
    unsafe {
        let fd = libc::open(
            path.as_ptr().cast(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        );
        if fd >= 0 {
            libc::write(fd, ptr.cast(), len);
            libc::close(fd);
        }
    }
}

/// xorshift64*: the mutations need speed, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(root().join("tests/golden").join(name))
        .unwrap_or_else(|e| panic!("tests/golden/{name}: {e}"));
    let hex: String = text.split_whitespace().collect();
    hex::decode(hex).unwrap_or_else(|e| panic!("tests/golden/{name}: {e}"))
}

/// A real SQLite WAL, written by SQLite, and a tar archive written by tar.
fn made_files() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("seed.db");
    let conn = rusqlite::Connection::open(&db).expect("sqlite");
    conn.pragma_update(None, "journal_mode", "wal")
        .expect("wal");
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .expect("no checkpoint");
    conn.execute_batch(
        "CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(300)), (randomblob(5000));
         UPDATE t SET x = randomblob(100) WHERE rowid = 1;",
    )
    .expect("rows");
    let wal = std::fs::read(dir.path().join("seed.db-wal")).expect("the -wal file");
    drop(conn);
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("base/1")).expect("mkdir");
    std::fs::write(tree.join("PG_VERSION"), "15\n").expect("write");
    std::fs::write(tree.join("base/1/1259"), vec![7u8; 9000]).expect("write");
    std::os::unix::fs::symlink("/tmp/ts", tree.join("base/link")).expect("symlink");
    let out = std::process::Command::new("tar")
        .args(["--format=ustar", "-cf", "-", "-C"])
        .arg(&tree)
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar");
    (wal, out.stdout)
}

fn seeds(target: &str, wal: &[u8], tar: &[u8]) -> Vec<Vec<u8>> {
    let text = |s: &str| s.as_bytes().to_vec();
    match target {
        "pack" => vec![golden("pack.hex"), golden("pack-index-plaintext.hex")],
        "manifest" => vec![golden("descriptor.hex"), golden("commit-object-name.hex")],
        "catalog_commit" => vec![
            golden("commit-plaintext.hex"),
            golden("commit-v2-plaintext.hex"),
            golden("commit-v2-cids-plaintext.hex"),
            golden("sealed-commit-kind.hex"),
        ],
        "key_object" => vec![golden("key-object-plaintext.hex")],
        // First byte: the major (and page headers kept valid); second: the
        // split. The rest: record-shaped bytes.
        "wal" => (0..5u8)
            .map(|m| {
                let mut v = vec![m, 128, 0, 0, 0, 0, 0];
                v.extend_from_slice(&[0x32, 0, 0, 0, 0, 0, 0, 0]);
                v.extend_from_slice(&[0; 24]);
                v
            })
            .collect(),
        "tar" => vec![[&[100u8][..], tar].concat()],
        "sqlite_wal" => vec![wal.to_vec()],
        "page_set" => {
            let mut v = b"PITRPGS1".to_vec();
            v.extend_from_slice(&4096u32.to_be_bytes());
            v.extend_from_slice(&3u32.to_be_bytes());
            v.extend_from_slice(&2u32.to_be_bytes());
            v.extend_from_slice(&0u32.to_be_bytes());
            v.extend_from_slice(&1u32.to_be_bytes());
            v.extend_from_slice(&3u32.to_be_bytes());
            vec![v]
        }
        "replication" => vec![
            [
                &b"w"[..],
                &[0, 0, 0, 0, 1, 0, 0, 0][..],
                &[0, 0, 0, 0, 2, 0, 0, 0][..],
                &[0; 8][..],
                b"wal",
            ]
            .concat(),
            [&b"k"[..], &[0; 16][..], &[1][..]].concat(),
            text("SERROR\0VERROR\0C42501\0Mpermission denied\0\0"),
            [&[0u8, 1][..], b"slot_name\0", &[0; 18][..]].concat(),
            [&[0u8, 2, 0, 0, 0, 3][..], b"abc", &[255, 255, 255, 255][..]].concat(),
            text("\x021\t0/3000000\tno recovery target specified\n"),
        ],
        "config" => ["postgres.toml", "postgres-storacha.toml", "sqlite.toml"]
            .iter()
            .map(|f| std::fs::read(root().join("deploy/config").join(f)).expect("config"))
            .collect(),
        _ => Vec::new(),
    }
}

const INTERESTING: &[u32] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    match rng.below(16) {
        // Random bytes now and then.
        0 => {
            let n = rng.below(512);
            out.extend((0..n).map(|_| rng.next() as u8));
            return;
        }
        _ if !seeds.is_empty() => out.extend_from_slice(&seeds[rng.below(seeds.len())]),
        _ => {}
    }
    for _ in 0..1 + rng.below(8) {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                out.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let copy = out[i..i + n].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, copy);
            }
            5 if len >= 4 => {
                let i = rng.below(len - 3);
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let bytes = if rng.below(2) == 0 {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                out[i..i + 4].copy_from_slice(&bytes);
            }
            6 if len > 0 => out.truncate(rng.below(len)),
            7 if !seeds.is_empty() => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let at = rng.below(len + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
}

struct Outcome {
    inputs: u64,
    failures: Vec<String>,
    peak: usize,
    slowest: Duration,
}

/// CPU time of this thread: what an input costs, whatever else the machine
/// runs (wall time under a shared, niced machine says nothing).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn run_one(target: &str, input: &[u8], epoch: Instant) -> Result<Duration, String> {
    CURRENT_PTR.store(input.as_ptr() as usize, Ordering::SeqCst);
    CURRENT_LEN.store(input.len(), Ordering::SeqCst);
    OVER.store(false, Ordering::SeqCst);
    let start = thread_cpu();
    STARTED_MS.store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    let result = std::panic::catch_unwind(|| {
        // The driver's own check that a panic is caught and reported.
        if target == "__driver_selftest" {
            panic!("the self-test panics on purpose");
        }
        pitr::fuzz::run(target, input)
    });
    STARTED_MS.store(u64::MAX, Ordering::SeqCst);
    let took = thread_cpu().saturating_sub(start);
    CURRENT_PTR.store(0, Ordering::SeqCst);
    match result {
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            Err(format!("panicked: {msg}"))
        }
        Ok(false) => Err(format!("no target {target}")),
        Ok(true) if OVER.load(Ordering::SeqCst) => {
            Err(format!("held more than {} MiB", LIMIT >> 20))
        }
        Ok(true) => Ok(took),
    }
}

fn save(target: &str, n: u64, input: &[u8]) -> PathBuf {
    let dir = root().join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{n}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

fn fuzz(
    target: &str,
    inputs: u64,
    seed: u64,
    long: bool,
    seeds: &[Vec<u8>],
    epoch: Instant,
) -> Outcome {
    let mut rng = Rng(seed | 1);
    let mut outcome = Outcome {
        inputs: 0,
        failures: Vec::new(),
        peak: 0,
        slowest: Duration::ZERO,
    };
    let mut buf = Vec::new();
    let base = LIVE.load(Ordering::SeqCst);
    let every: Vec<Vec<u8>> = seeds.to_vec();
    for n in 0..inputs {
        // The seeds themselves first, then mutations.
        let input: &[u8] = if (n as usize) < every.len() {
            &every[n as usize]
        } else {
            mutate(&mut rng, seeds, &mut buf);
            &buf
        };
        PEAK.store(LIVE.load(Ordering::SeqCst), Ordering::SeqCst);
        let result = run_one(target, input, epoch);
        outcome.peak = outcome
            .peak
            .max(PEAK.load(Ordering::SeqCst).saturating_sub(base));
        outcome.inputs += 1;
        match result {
            Ok(took) => {
                if took > outcome.slowest {
                    outcome.slowest = took;
                }
                if long && took > Duration::from_secs(1) {
                    let path = save(target, n, input);
                    outcome
                        .failures
                        .push(format!("input {n} took {took:?}: {}", path.display()));
                }
            }
            Err(why) => {
                let path = save(target, n, input);
                outcome
                    .failures
                    .push(format!("input {n} {why}: {}", path.display()));
            }
        }
        if outcome.failures.len() >= 20 {
            break;
        }
        if long && n > 0 && n % 100_000 == 0 {
            eprintln!(
                "fuzz {target}: {n} inputs, {} failures, peak {:.1} MiB, slowest {:?}",
                outcome.failures.len(),
                outcome.peak as f64 / (1 << 20) as f64,
                outcome.slowest
            );
        }
    }
    outcome
}

fn main() {
    // `cargo test -- --list` and friends: one "test" per target.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for t in pitr::fuzz::TARGETS {
            println!("{t}: test");
        }
        return;
    }
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let _ = std::fs::create_dir_all(root().join("target/fuzz-failures"));
    // A quiet panic hook: failures are reported once, below.
    std::panic::set_hook(Box::new(|_| {}));
    let epoch = Instant::now();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let started = STARTED_MS.load(Ordering::SeqCst);
            if started != u64::MAX && epoch.elapsed().as_millis() as u64 > started + 60_000 {
                save_current(b"hang");
                eprintln!("fuzz: an input ran for 60 s: target/fuzz-failures/current-hang.bin");
                std::process::abort();
            }
        }
    });

    if let Ok(replay) = std::env::var("PITR_FUZZ_REPLAY") {
        let path = Path::new(&replay);
        let input = std::fs::read(path).unwrap_or_else(|e| panic!("{replay}: {e}"));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let target = pitr::fuzz::TARGETS
            .iter()
            .find(|t| name.starts_with(&format!("{t}-")))
            .unwrap_or_else(|| panic!("{name}: name it <target>-<n>.bin"));
        let _ = std::panic::take_hook();
        pitr::fuzz::run(target, &input);
        println!("{target}: {replay} ran without a panic");
        return;
    }

    let long = std::env::var("PITR_FUZZ_INPUTS").is_ok();
    let inputs: u64 = std::env::var("PITR_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let seed: u64 = std::env::var("PITR_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f022);
    let selected: Vec<&str> = match std::env::var("PITR_FUZZ_TARGETS") {
        Ok(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                *pitr::fuzz::TARGETS
                    .iter()
                    .find(|t| **t == s)
                    .unwrap_or_else(|| panic!("no fuzz target {s}"))
            })
            .collect(),
        Err(_) => pitr::fuzz::TARGETS.to_vec(),
    };
    // The driver reports a panicking target (else a clean run proves
    // nothing).
    let caught = run_one("__driver_selftest", b"x", epoch);
    assert!(
        caught.as_ref().is_err_and(|e| e.contains("on purpose")),
        "the driver did not report a panic: {caught:?}"
    );
    let (wal, tar) = made_files();
    let (mut passed, mut failed) = (0, 0);
    for target in selected {
        if !filter.is_empty() && !filter.iter().any(|f| target.contains(f.as_str())) {
            continue;
        }
        let started = Instant::now();
        let s = seeds(target, &wal, &tar);
        let o = fuzz(target, inputs, seed, long, &s, epoch);
        println!(
            "fuzz {target}: {} inputs (seed {seed}), {} failures, peak {:.1} MiB, slowest {:?}, {:?}",
            o.inputs,
            o.failures.len(),
            o.peak as f64 / (1 << 20) as f64,
            o.slowest,
            started.elapsed()
        );
        for f in &o.failures {
            println!("  {f}");
        }
        if o.failures.is_empty() {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("fuzz: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
