//! The WAL decoder against the judge PostgreSQL ships: `pg_waldump` on the
//! segments a real server wrote under pgbench must list the same records
//! (positions, lengths, transaction ids, commit times, restore points) as
//! pitr's decoder, and both must reject the same corrupted copy.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use jiff::Timestamp;
use pitr::pg::{Lsn, Segment};
use pitr::wal::{DecodeErrorKind, Decoder, Record, RecordKind, SegmentIndex, index_segment};

use crate::support::PgCluster;

/// One line of `pg_waldump` output, the fields we compare.
#[derive(Debug)]
pub(crate) struct Dumped {
    pub(crate) rmgr: String,
    pub(crate) total_len: u32,
    pub(crate) xid: u32,
    pub(crate) lsn: Lsn,
    pub(crate) desc: String,
}

/// Parses `rmgr: Heap len (rec/tot): 54/ 150, tx: 735, lsn: 0/0155A3F8,
/// prev 0/0155A3C0, desc: INSERT off 3 ...`.
pub(crate) fn parse_dump_line(line: &str) -> Option<Dumped> {
    let field = |name: &str| -> Option<&str> {
        let rest = &line[line.find(name)? + name.len()..];
        Some(rest[..rest.find(',').unwrap_or(rest.len())].trim())
    };
    let total_len = field("len (rec/tot):")?
        .split('/')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some(Dumped {
        rmgr: line
            .strip_prefix("rmgr: ")?
            .split_whitespace()
            .next()?
            .to_owned(),
        total_len,
        xid: field("tx:")?.parse().ok()?,
        lsn: field("lsn:")?.parse().ok()?,
        desc: line[line.find("desc: ")? + 6..].to_owned(),
    })
}

/// The time `pg_waldump` prints after `COMMIT ` or `ABORT `:
/// `2026-11-24 10:00:00.123456 UTC` (with `TZ=UTC`).
pub(crate) fn dumped_time(desc: &str, verb: &str) -> Option<Timestamp> {
    let text = desc.strip_prefix(verb)?.strip_prefix(' ')?;
    let stamp = text.get(..26)?;
    assert_eq!(
        text.get(26..30),
        Some(" UTC"),
        "pg_waldump time zone in {desc:?}"
    );
    format!("{}Z", stamp.replacen(' ', "T", 1)).parse().ok()
}

pub(crate) fn pg_waldump(pg: &PgCluster, dir: &Path, first: &str, last: &str) -> Output {
    Command::new(pg.bin("pg_waldump"))
        .env("TZ", "UTC")
        .arg("-p")
        .arg(dir)
        .args([first, last])
        .output()
        .expect("run pg_waldump")
}

/// Decodes `segments` (in order, read from `dir`) with one decoder.
fn decode(
    dir: &Path,
    segments: &[Segment],
    seg_size: u64,
) -> Result<Vec<Record>, pitr::wal::DecodeError> {
    let mut decoder = Decoder::new(segments[0].timeline, seg_size, segments[0].start(seg_size));
    let mut records = Vec::new();
    for segment in segments {
        let bytes = fs::read(dir.join(segment.file_name(seg_size))).expect("read a segment");
        decoder.feed_with(&bytes, |record| records.push(record))?;
    }
    Ok(records)
}

#[test]
fn the_decoder_agrees_with_pg_waldump_on_a_pgbench_run() {
    let mut pg = PgCluster::start();
    pg.pgbench(&["-i", "-s", "5", "-q"]);
    pg.pgbench(&["-T", "5", "-c", "4", "-j", "2"]);
    pg.psql("SELECT pg_create_restore_point('golden')");
    pg.psql(
        "BEGIN; CREATE TABLE rolled_back (x int); INSERT INTO rolled_back VALUES (1); ROLLBACK;",
    );
    pg.psql("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 1)");
    let last_name = pg.psql("SELECT pg_walfile_name(pg_switch_wal())");
    let seg_size: u64 = pg
        .psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        .parse()
        .expect("wal_segment_size in bytes");
    let last = Segment::parse(&last_name, seg_size).expect("a segment name");

    // Copy the completed segments (the switch completed the last one): as
    // root we may read the server's files; the copies are ours to damage.
    let copy = pg.dir().join("wal-copy");
    fs::create_dir(&copy).expect("create the copy dir");
    let mut segments: Vec<Segment> = fs::read_dir(pg.data_dir().join("pg_wal"))
        .expect("list pg_wal")
        .filter_map(|entry| Segment::parse(entry.ok()?.file_name().to_str()?, seg_size))
        .filter(|s| s.timeline == 1 && s.no <= last.no)
        .collect();
    segments.sort();
    for pair in segments.windows(2) {
        assert_eq!(pair[0].next(), pair[1], "pg_wal has a hole");
    }
    assert!(segments.len() >= 3, "pgbench wrote {segments:?} only");
    for segment in &segments {
        let name = segment.file_name(seg_size);
        fs::copy(pg.data_dir().join("pg_wal").join(&name), copy.join(&name)).expect("copy");
    }
    let first_name = segments[0].file_name(seg_size);

    // The segment after the switch, as the server left it on a clean stop:
    // a few records, then zeros (copied after the stop, so no write races
    // the copy; the completed ones were copied before, as the shutdown
    // checkpoint recycles them).
    pg.psql("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (2, 2, 2, 2)");
    pg.stop();
    let partial = last.next();
    let partial_name = partial.file_name(seg_size);
    let partial_dir = pg.dir().join("wal-partial");
    fs::create_dir(&partial_dir).expect("create the partial dir");
    fs::copy(
        pg.data_dir().join("pg_wal").join(&partial_name),
        partial_dir.join(&partial_name),
    )
    .expect("copy the partial segment");

    let out = pg_waldump(&pg, &copy, &first_name, &last_name);
    let stdout = String::from_utf8(out.stdout).expect("pg_waldump prints UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pg_waldump on good WAL: {stderr}");
    let dumped: Vec<Dumped> = stdout
        .lines()
        .map(|line| parse_dump_line(line).unwrap_or_else(|| panic!("pg_waldump line {line:?}")))
        .collect();

    let records = decode(&copy, &segments, seg_size).expect("the decoder reads real WAL");
    assert_eq!(
        records.len(),
        dumped.len(),
        "record count (pg_waldump stderr: {stderr})"
    );
    let (mut commits, mut aborts) = (0, 0);
    for (ours, theirs) in records.iter().zip(&dumped) {
        let context = format!("{ours:?} vs {theirs:?}");
        assert_eq!(ours.lsn, theirs.lsn, "{context}");
        assert_eq!(ours.total_len, theirs.total_len, "{context}");
        assert_eq!(ours.xid, theirs.xid, "{context}");
        assert_eq!(ours.rmgr == 1, theirs.rmgr == "Transaction", "{context}");
        assert_eq!(ours.rmgr == 0, theirs.rmgr == "XLOG", "{context}");
        match &ours.kind {
            RecordKind::Commit { time, .. } => {
                assert_eq!(
                    Some(*time),
                    dumped_time(&theirs.desc, "COMMIT"),
                    "{context}"
                );
                commits += 1;
            }
            RecordKind::Abort { time, .. } => {
                assert_eq!(Some(*time), dumped_time(&theirs.desc, "ABORT"), "{context}");
                aborts += 1;
            }
            RecordKind::RestorePoint { name, .. } => {
                assert_eq!(theirs.desc, format!("RESTORE_POINT {name}"), "{context}");
            }
            RecordKind::Switch => assert_eq!(theirs.desc.trim_end(), "SWITCH", "{context}"),
            _ => {
                for verb in ["COMMIT ", "ABORT ", "RESTORE_POINT", "SWITCH"] {
                    let missed = theirs.rmgr == "Transaction" || theirs.rmgr == "XLOG";
                    assert!(!(missed && theirs.desc.starts_with(verb)), "{context}");
                }
            }
        }
    }
    assert!(commits > 100, "only {commits} commits under pgbench");
    assert!(
        aborts >= 1,
        "the rolled-back transaction left no abort record"
    );

    // The per-segment index, with each segment's decoder carried to the next,
    // covers the same records, and finds the restore point and the switch.
    let mut carry = None;
    let mut indexes: BTreeMap<Segment, SegmentIndex> = BTreeMap::new();
    for segment in &segments {
        let bytes = fs::read(copy.join(segment.file_name(seg_size))).expect("read a segment");
        let (index, decoder) =
            index_segment(&bytes, *segment, seg_size, carry.take()).expect("index a segment");
        carry = Some(decoder);
        indexes.insert(*segment, index);
    }
    let total: u64 = indexes.values().map(|index| index.records).sum();
    assert_eq!(total, records.len() as u64);
    let golden: Vec<_> = indexes
        .values()
        .flat_map(|index| &index.restore_points)
        .collect();
    assert_eq!(golden.len(), 1);
    assert_eq!(golden[0].name, "golden");
    let last_index = &indexes[&last];
    assert!(
        last_index.ends_with_switch && last_index.end_of_wal.is_none(),
        "{last_index:?}"
    );
    let index_aborts: u64 = indexes
        .values()
        .filter_map(|i| i.aborts)
        .map(|a| a.count)
        .sum();
    assert_eq!(index_aborts, aborts);
    let last_commit = records
        .iter()
        .rev()
        .find_map(|r| match r.kind {
            RecordKind::Commit { time, .. } => Some(time),
            _ => None,
        })
        .expect("commits");
    let index_last_commit = indexes
        .values()
        .rev()
        .find_map(|i| i.commits)
        .map(|c| c.last);
    assert_eq!(index_last_commit, Some(last_commit));
    for index in indexes.values().skip(1) {
        assert_eq!(
            index.skipped_continuation, 0,
            "carried decoders skip nothing"
        );
    }

    // Zeros where the next record would start end the WAL, where pg_waldump
    // says it ends.
    let bytes = fs::read(partial_dir.join(&partial_name)).expect("read the partial segment");
    let (index, _) =
        index_segment(&bytes, partial, seg_size, carry).expect("index the partial segment");
    let end = index.end_of_wal.expect("the partial segment ends early");
    let out = pg_waldump(&pg, &partial_dir, &partial_name, &partial_name);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let listed = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    assert_eq!(index.records, listed, "records before the end of WAL");
    assert!(
        stderr.contains(&format!("invalid record length at {end}")),
        "pg_waldump ends elsewhere than {end}: {stderr}"
    );
    assert!(
        index.records >= 2,
        "the insert's commit and the shutdown checkpoint: {index:?}"
    );
    assert_eq!(index.commits.map(|c| c.count), Some(1));

    // Damage one record in a copy: both judges must refuse it, and ours must
    // name the record. Pick one in the middle whose first 64 bytes share a
    // page, and flip a byte of its data (past the 24-byte header).
    let victim = records
        .iter()
        .skip(records.len() / 2)
        .find(|r| r.total_len >= 64 && r.lsn.0 % 8192 + 64 < 8192)
        .expect("a record to damage");
    let victim_segment = Segment::containing(1, victim.lsn, seg_size);
    let damaged = pg.dir().join("wal-damaged");
    fs::create_dir(&damaged).expect("create the damaged dir");
    for segment in &segments {
        let name = segment.file_name(seg_size);
        let mut bytes = fs::read(copy.join(&name)).expect("read a segment");
        if *segment == victim_segment {
            bytes[(victim.lsn.segment_offset(seg_size) + 40) as usize] ^= 0x20;
        }
        fs::write(damaged.join(&name), bytes).expect("write a segment");
    }
    let err = decode(&damaged, &segments, seg_size).expect_err("a damaged record");
    assert!(matches!(err.kind, DecodeErrorKind::Crc { .. }), "{err}");
    assert_eq!(err.lsn, victim.lsn, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&victim.lsn.to_string())
            && text.contains(&victim_segment.file_name(seg_size)),
        "{text}"
    );
    let out = pg_waldump(&pg, &damaged, &first_name, &last_name);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pg_waldump accepted the damaged WAL");
    assert!(
        stderr.contains("checksum") && stderr.contains(&victim.lsn.to_string()),
        "pg_waldump on the damaged record: {stderr}"
    );
}
