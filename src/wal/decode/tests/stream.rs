//! Good WAL: decoded whole, in pieces of any size, across pages and segments,
//! up to its end; and the segment index built from it.

use super::*;
use crate::wal::{SegmentIndex, index_segment};

/// Fills segment 3 until a record spans into segment 4, then commits.
fn spanning_segments() -> (WalWriter, Lsn, Lsn) {
    let mut w = WalWriter::new(SEG_NO);
    while w.pos < (SEG_NO + 1) * SEG - 20_000 {
        w.record(21, 0, 0, &main_data(&[3; 7000]));
    }
    let spanning = w.record(21, 0, 0, &main_data(&[4; 30_000]));
    let commit = w.commit(9, micros("2026-11-24T11:00:00Z"));
    (w, spanning, commit)
}

#[test]
fn decodes_what_was_written_in_any_chunking() {
    let (w, lsns) = sample();
    let bytes = w.padded(4 * PAGE);
    let (records, decoder) = decode_all(&bytes, bytes.len()).expect("decodes");
    assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), lsns);
    assert_eq!(
        records[0].lsn,
        Lsn(SEG_NO * SEG + 40),
        "after the long header"
    );
    assert_eq!(
        records[0].kind,
        RecordKind::Commit {
            time: ts("2026-11-24T10:00:00.123456Z"),
            prepared: false
        }
    );
    assert_eq!(records[0].xid, 700);
    assert_eq!(records[1].kind, RecordKind::Other);
    assert_eq!((records[1].rmgr, records[1].prev), (10, records[0].lsn));
    assert_eq!(records[2].total_len, 24 + 5 + 20_000);
    assert_eq!(
        records[3].kind,
        RecordKind::RestorePoint {
            time: ts("2026-11-24T10:00:01Z"),
            name: "golden".to_owned()
        }
    );
    assert_eq!(
        records[4].kind,
        RecordKind::Abort {
            time: ts("2026-11-24T10:00:02Z"),
            prepared: false
        }
    );
    for pair in records.windows(2) {
        let next_start = if pair[0].end.0 % PAGE == 0 {
            pair[0].end.0 + 24
        } else {
            pair[0].end.0
        };
        assert_eq!(next_start, pair[1].lsn.0, "end of {:?}", pair[0]);
    }
    assert_eq!(decoder.end_of_wal(), Some(Lsn(w.pos)));
    assert_eq!(decoder.system_identifier(), Some(SYSID));

    for chunk in [1, 3, 7, 24, 41, 1000, 8192, 8193] {
        let (again, _) = decode_all(&bytes, chunk).expect("decodes in pieces");
        assert_eq!(again, records, "in pieces of {chunk} bytes");
    }
}

#[test]
fn zeros_where_a_record_would_start_end_the_wal() {
    let (w, lsns) = sample();
    // Zeros after the last record, and whole zero pages after that.
    let (records, decoder) = decode_all(&w.padded(6 * PAGE), 777).expect("decodes");
    assert_eq!(records.len(), lsns.len());
    assert_eq!(decoder.end_of_wal(), Some(Lsn(w.pos)));

    // The spanning record cut off mid-way (the server flushed part of it):
    // the WAL ends where it starts.
    let cut = (lsns[2].0 - w.base + 9000) as usize;
    let mut bytes = w.padded(4 * PAGE);
    bytes[cut..].fill(0);
    let (records, decoder) = decode_all(&bytes, 4096).expect("decodes");
    assert_eq!(records.len(), 2);
    assert_eq!(decoder.end_of_wal(), Some(lsns[2]));
    assert_eq!(decoder.complete_up_to(), lsns[2]);

    // Not yet arrived is not the end: nothing is decided.
    let (_, decoder) = decode_all(&w.buf[..cut], 4096).expect("decodes");
    assert_eq!(decoder.end_of_wal(), None);
    assert_eq!(decoder.pending_record(), Some(lsns[2]));
}

#[test]
fn a_switch_fills_the_segment_and_decoding_goes_on_in_the_next() {
    let mut w = WalWriter::new(SEG_NO);
    w.commit(1, 0);
    let switch = w.switch();
    let after = w.commit(2, 1);
    assert_eq!(after, Lsn((SEG_NO + 1) * SEG + 40));
    let bytes = w.padded(SEG + PAGE);
    let (records, _) = decode_all(&bytes, 65536).expect("decodes");
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].lsn, switch);
    assert_eq!(records[1].kind, RecordKind::Switch);
    assert_eq!(records[1].end, Lsn((SEG_NO + 1) * SEG));
    assert_eq!(records[2].prev, switch);

    let mut bytes = bytes;
    bytes[(SEG / 2) as usize] = 7;
    let err = decode_all(&bytes, 65536).expect_err("garbage after the switch");
    assert_eq!(
        err.kind,
        DecodeErrorKind::NotZero {
            after: "the switch record",
            end: switch
        }
    );
}

#[test]
fn records_continue_across_segments() {
    let (w, spanning, commit) = spanning_segments();
    let bytes = w.padded(2 * SEG);
    let (first, second) = bytes.split_at(SEG as usize);
    let seg3 = Segment {
        timeline: 1,
        no: SEG_NO,
    };

    let (index3, carry) = index_segment(first, seg3, SEG, None).expect("segment 3");
    assert_eq!(index3.end_of_wal, None);
    assert_eq!(index3.continued_record, Some(spanning));
    assert_eq!(index3.skipped_continuation, 0);
    let (index4, _) = index_segment(second, seg3.next(), SEG, Some(carry)).expect("segment 4");
    assert_eq!(index4.records, 2, "{index4:?}");
    assert_eq!(index4.first_record, Some(spanning));
    assert_eq!(index4.last_record, Some(commit));
    assert_eq!(index4.end_of_wal, Some(Lsn(w.pos)));
    assert_eq!(index4.skipped_continuation, 0);
    let commits = index4.commits.expect("a commit");
    assert_eq!(
        (commits.count, commits.first),
        (1, ts("2026-11-24T11:00:00Z"))
    );

    // Without the carry, the spanning record's tail is passed over, and says so.
    let (alone, _) = index_segment(second, seg3.next(), SEG, None).expect("segment 4 alone");
    assert_eq!(alone.records, 1);
    assert_eq!(alone.first_record, Some(commit));
    assert!(alone.skipped_continuation > 0);

    // A carry that does not end where the segment starts is a gap.
    let (_, carry) = index_segment(&first[..1000], seg3, SEG, None).expect("partial");
    let err = index_segment(second, seg3.next(), SEG, Some(carry)).expect_err("gap");
    assert_eq!(
        err.kind,
        DecodeErrorKind::Gap {
            expected: Lsn(SEG_NO * SEG + 1000)
        }
    );
    // A decoder fed both segments in one go sees the same records.
    let (records, _) = decode_all(&bytes, 100_000).expect("decodes");
    assert_eq!(records.len() as u64, index3.records + index4.records);
}

#[test]
fn an_abandoned_record_is_replaced_by_an_overwrite_contrecord() {
    let mut w = WalWriter::new(SEG_NO);
    let before = w.commit(1, 0);
    // A record spanning pages, of which the server wrote only the first page
    // before crashing; after recovery it wrote an overwrite record instead.
    let rec = w.assemble(21, 0, 0, &main_data(&[5; 10_000]));
    let room = (PAGE - w.pos % PAGE) as usize;
    let abandoned = w.put(&rec, room);
    w.prev = before.0;
    w.next_page_flags = 0x0008;
    let mut data = abandoned.0.to_le_bytes().to_vec();
    data.extend_from_slice(&micros("2026-11-24T12:00:00Z").to_le_bytes());
    let overwrite = w.record(0, 0xD0, 0, &main_data(&data));
    w.commit(2, 1);
    let (records, _) = decode_all(&w.padded(3 * PAGE), 500).expect("decodes");
    let lsns: Vec<Lsn> = records.iter().map(|r| r.lsn).collect();
    assert_eq!(lsns[..2], [before, overwrite]);
    assert_eq!(
        records[1].kind,
        RecordKind::OverwriteContrecord {
            overwritten: abandoned,
            time: ts("2026-11-24T12:00:00Z")
        }
    );

    // The overwrite record must name the abandoned one.
    let mut bytes = w.padded(3 * PAGE);
    let at = (overwrite.0 - w.base) as usize + 24 + 2;
    bytes[at] ^= 0x10;
    // Re-seal the CRC so only the name is wrong.
    let tot = 24 + 2 + 16;
    let body_crc = crc32c::crc32c(&bytes[at - 2..at - 2 + tot - 24]);
    let crc = crc32c::crc32c_append(body_crc, &bytes[at - 26..at - 6]);
    bytes[at - 6..at - 2].copy_from_slice(&crc.to_le_bytes());
    let err = decode_all(&bytes, 500).expect_err("names another record");
    assert!(
        matches!(err.kind, DecodeErrorKind::Continuation { .. }),
        "{err}"
    );
    assert_eq!(err.lsn, overwrite);
}

#[test]
fn the_index_serializes_for_the_catalog() {
    let (w, lsns) = sample();
    let seg = Segment {
        timeline: 1,
        no: SEG_NO,
    };
    let (index, _) = index_segment(&w.padded(SEG), seg, SEG, None).expect("index");
    assert_eq!(index.records, 6);
    assert_eq!(index.first_record, Some(lsns[0]));
    assert_eq!(index.end_of_wal, Some(Lsn(w.pos)));
    assert_eq!(index.restore_points[0].name, "golden");
    assert_eq!(index.restore_points[0].lsn, lsns[3]);
    let commits = index.commits.expect("commits");
    assert_eq!(commits.count, 2);
    assert_eq!(commits.first, ts("2026-11-24T10:00:00.123456Z"));
    assert_eq!(commits.last, ts("2026-11-24T10:00:03.000001Z"));
    assert_eq!(
        index.aborts.map(|a| a.latest),
        Some(ts("2026-11-24T10:00:02Z"))
    );
    assert!(!index.ends_with_switch);

    let json = serde_json::to_string(&index).expect("serialize");
    assert!(json.contains("\"first_record\":\"0/300028\""), "{json}");
    assert!(json.contains("2026-11-24T10:00:00.123456Z"), "{json}");
    let back: SegmentIndex = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, index);

    let err = index_segment(&w.padded(SEG + 1), seg, SEG, None).expect_err("too long");
    assert!(matches!(err.kind, DecodeErrorKind::SegmentOverflow { .. }));
}

#[test]
fn postgres_timestamps_count_from_2000() {
    assert_eq!(record::pg_timestamp(0), Some(ts("2000-01-01T00:00:00Z")));
    assert_eq!(
        record::pg_timestamp(-1),
        Some(ts("1999-12-31T23:59:59.999999Z"))
    );
    assert_eq!(record::pg_timestamp(i64::MAX), None);
}
