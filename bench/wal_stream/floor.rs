//! The floor: what pitr's mandatory per-byte work costs, on real WAL, with
//! nothing else around it. `PITR_BENCH_CHILD=floor PITR_BENCH_FLOOR_WAL=DIR`
//! reads the complete 16 MiB segments in `DIR` (copied from a server's
//! `pg_wal` after a pgbench run; never a live one) and reports CPU seconds
//! per GB of WAL for:
//!
//! - zstd at the benchmark's level on 128 KiB chunks, one reused context
//!   (what `repo::ChunkPreparer` does; pgBackRest compresses whole segments
//!   at the same level);
//! - the keyed BLAKE3 chunk id of every chunk (invariant 3);
//! - decoding every record with its CRC-32C check and building the segment
//!   index (invariant 2);
//! - the three together.
//!
//! Each is repeated over the segments until it has processed at least 1 GB,
//! single-threaded; CPU time is the process's, from `/proc/self/stat`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use pitr::pg::Segment;
use pitr::repo::RepositoryKey;
use pitr::wal::index_segment;

use crate::common::{GB, cpu_secs};
use crate::{SEG, ZSTD_LEVEL};

const CHUNK: usize = 128 << 10;

pub fn child_floor() -> ExitCode {
    match floor() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wal_stream floor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn floor() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::var("PITR_BENCH_FLOOR_WAL").context("the floor needs PITR_BENCH_FLOOR_WAL")?,
    );
    let segments = read_segments(&dir)?;
    let bytes: usize = segments.iter().map(|(_, b)| b.len()).sum();
    anyhow::ensure!(bytes > 0, "no complete segments in {}", dir.display());
    let key = RepositoryKey::generate();
    let mut zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    let mut scratch = Vec::with_capacity(zstd::zstd_safe::compress_bound(CHUNK));
    // Bytes in and out of zstd, for its ratio.
    let zstd_bytes = std::cell::Cell::new((0usize, 0usize));
    let mut zstd_pass = |chunk: &[u8]| -> anyhow::Result<()> {
        scratch.clear();
        let n = zstd.compress_to_buffer(chunk, &mut scratch)?;
        let (raw, out) = zstd_bytes.get();
        zstd_bytes.set((raw + chunk.len(), out + n));
        Ok(())
    };
    let mut sink = 0u8;
    let mut hash_pass = |chunk: &[u8]| {
        sink ^= key.chunk_id(chunk).0[0];
    };
    let zstd_s = per_gb(&segments, |segs| {
        for (_, b) in segs {
            for c in b.chunks(CHUNK) {
                zstd_pass(c)?;
            }
        }
        Ok(())
    })?;
    let hash_s = per_gb(&segments, |segs| {
        for (_, b) in segs {
            b.chunks(CHUNK).for_each(&mut hash_pass);
        }
        Ok(())
    })?;
    let decode_s = per_gb(&segments, decode)?;
    let all_s = per_gb(&segments, |segs| {
        for (_, b) in segs {
            for c in b.chunks(CHUNK) {
                zstd_pass(c)?;
                hash_pass(c);
            }
        }
        decode(segs)
    })?;
    let (raw, out) = zstd_bytes.get();
    let ratio = raw as f64 / out.max(1) as f64;
    println!(
        "{} segments ({:.0} MB of WAL), each measured over at least 1 GB; zstd {ZSTD_LEVEL} ratio {ratio:.1}x\n",
        segments.len(),
        bytes as f64 / 1e6
    );
    println!("| work | CPU s per GB |\n| --- | ---: |");
    println!(
        "| zstd {ZSTD_LEVEL}, 128 KiB chunks, one context | {:.2} |",
        zstd_s.0
    );
    println!("| keyed BLAKE3 chunk ids | {:.2} |", hash_s.0);
    println!("| decode, CRC-32C, index | {:.2} |", decode_s.0);
    println!("| all three | {:.2} |", all_s.0);
    std::hint::black_box(sink);
    Ok(())
}

/// The complete segments in `dir`, by name, consecutive.
fn read_segments(dir: &Path) -> anyhow::Result<Vec<(Segment, Vec<u8>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(segment) = Segment::parse(&name, SEG) else {
            continue;
        };
        let bytes = std::fs::read(entry.path())?;
        anyhow::ensure!(bytes.len() as u64 == SEG, "{name} is not a whole segment");
        out.push((segment, bytes));
    }
    out.sort_by_key(|(s, _)| (s.timeline, s.no));
    for w in out.windows(2) {
        anyhow::ensure!(w[1].0 == w[0].0.next(), "the segments are not consecutive");
    }
    Ok(out)
}

/// Decodes the segments in order, the decoder carried across them.
fn decode(segments: &[(Segment, Vec<u8>)]) -> anyhow::Result<()> {
    let mut carry = None;
    for (segment, bytes) in segments {
        let (_, decoder) = index_segment(bytes, *segment, SEG, carry.take())?;
        carry = Some(decoder);
    }
    Ok(())
}

/// Runs `pass` over the segments until at least 1 GB went through; returns
/// CPU seconds per GB and the number of passes.
fn per_gb(
    segments: &[(Segment, Vec<u8>)],
    mut pass: impl FnMut(&[(Segment, Vec<u8>)]) -> anyhow::Result<()>,
) -> anyhow::Result<(f64, usize)> {
    let bytes: usize = segments.iter().map(|(_, b)| b.len()).sum();
    let passes = (GB / bytes as f64).ceil() as usize;
    let before = cpu_secs(None).context("CPU time")?;
    for _ in 0..passes {
        pass(segments)?;
    }
    let cpu = cpu_secs(None).context("CPU time")? - before;
    Ok((cpu / (passes * bytes) as f64 * GB, passes))
}
