//! Damaged WAL: every kind of damage is an error naming the segment and the
//! position, never a skipped record.

use super::*;

#[test]
fn a_flipped_byte_is_a_crc_error_naming_the_record() {
    let (w, lsns) = sample();
    let mut bytes = w.padded(4 * PAGE);
    // A byte of the block-reference record's data, past its header.
    let at = (lsns[1].0 - w.base) as usize + 24 + 20;
    bytes[at] ^= 0x01;
    let err = decode_all(&bytes, 100).expect_err("corrupt");
    assert_eq!(err.lsn, lsns[1]);
    assert!(matches!(err.kind, DecodeErrorKind::Crc { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(NAME) && text.contains(&lsns[1].to_string()),
        "{text}"
    );

    // In the spanning record's last page, too.
    let mut bytes = w.padded(4 * PAGE);
    let at = (lsns[3].0 - w.base) as usize - 16;
    bytes[at] ^= 0x80;
    let err = decode_all(&bytes, 5000).expect_err("corrupt");
    assert_eq!((err.lsn, &err.segment), (lsns[2], &NAME.to_owned()));
    assert!(matches!(err.kind, DecodeErrorKind::Crc { .. }), "{err}");
}

#[test]
fn a_failed_decoder_stays_failed() {
    let (w, lsns) = sample();
    let mut bytes = w.padded(4 * PAGE);
    bytes[(lsns[0].0 - w.base) as usize + 26] ^= 0x04;
    let mut decoder = Decoder::new(1, SEG, Lsn(SEG_NO * SEG));
    let first = decoder.feed(&bytes).expect_err("corrupt");
    let again = decoder.feed(&[0; 16]).expect_err("still failed");
    assert_eq!(first, again);
}

#[test]
fn another_majors_magic_is_named() {
    let (w, _) = sample();
    let mut bytes = w.padded(4 * PAGE);
    bytes[..2].copy_from_slice(&0xD10Du16.to_le_bytes());
    let pg15 = WalFormat::of_major(15).expect("15 is supported");
    let mut decoder = Decoder::new(1, SEG, Lsn(SEG_NO * SEG)).with_format(pg15);
    let err = decoder.feed(&bytes).expect_err("PostgreSQL 14 magic");
    assert_eq!(
        err.kind,
        DecodeErrorKind::MajorMismatch {
            found: 0xD10D,
            found_major: Some(14),
            expected_major: 15,
            expected: 0xD110
        }
    );
    assert_eq!(err.lsn, Lsn(SEG_NO * SEG));
    let text = err.to_string();
    assert!(
        text.contains(NAME)
            && text.contains("D10D")
            && text.contains("PostgreSQL 14's")
            && text.contains("PostgreSQL 15's D110"),
        "{text}"
    );
}

#[test]
fn an_unknown_magic_names_the_supported_majors() {
    let (w, _) = sample();
    let mut bytes = w.padded(4 * PAGE);
    // PostgreSQL 13's magic.
    bytes[..2].copy_from_slice(&0xD106u16.to_le_bytes());
    let err = decode_all(&bytes, 4096).expect_err("PostgreSQL 13 magic");
    assert_eq!(err.kind, DecodeErrorKind::UnknownMagic { found: 0xD106 });
    let text = err.to_string();
    assert!(
        text.contains(NAME) && text.contains("D106") && text.contains("14, 15, 16, 17 and 18"),
        "{text}"
    );
}

#[test]
fn a_page_from_elsewhere_is_named() {
    let (w, _) = sample();
    let mut bytes = w.padded(4 * PAGE);
    // The second page, holding the middle of the spanning record, claims the
    // address it had in a recycled segment.
    let stale = (SEG_NO - 2) * SEG + PAGE;
    bytes[PAGE as usize + 8..PAGE as usize + 16].copy_from_slice(&stale.to_le_bytes());
    let err = decode_all(&bytes, 3000).expect_err("stale page");
    assert_eq!(err.kind, DecodeErrorKind::PageAddress { found: Lsn(stale) });
    assert_eq!(err.lsn, Lsn(SEG_NO * SEG + PAGE));
}

#[test]
fn a_broken_continuation_is_an_error() {
    let (w, lsns) = sample();
    let page2 = PAGE as usize;
    let mut bytes = w.padded(4 * PAGE);
    bytes[page2 + 16] ^= 0x01; // xlp_rem_len
    let err = decode_all(&bytes, 8192).expect_err("wrong remaining length");
    assert!(
        matches!(err.kind, DecodeErrorKind::Continuation { .. }),
        "{err}"
    );
    assert_eq!(err.lsn, lsns[2]);

    let mut bytes = w.padded(4 * PAGE);
    bytes[page2 + 2] &= !0x01; // XLP_FIRST_IS_CONTRECORD
    let err = decode_all(&bytes, 8192).expect_err("no continuation flag");
    assert!(
        matches!(err.kind, DecodeErrorKind::Continuation { .. }),
        "{err}"
    );

    // A page claiming to continue a record when none is open.
    let mut w = WalWriter::new(SEG_NO);
    w.record(21, 0, 0, &main_data(&vec![1; PAGE as usize - 40 - 24 - 5]));
    assert_eq!(w.pos % PAGE, 0, "the record fills the first page");
    w.commit(5, 0);
    let mut bytes = w.padded(2 * PAGE);
    bytes[page2 + 2] |= 0x01;
    bytes[page2 + 16] = 8;
    let err = decode_all(&bytes, 8192).expect_err("continuation out of nowhere");
    assert!(
        matches!(err.kind, DecodeErrorKind::Continuation { .. }),
        "{err}"
    );
}

#[test]
fn anything_but_zeros_after_the_end_is_an_error() {
    let (w, _) = sample();
    let mut bytes = w.padded(4 * PAGE);
    let late = (3 * PAGE + 100) as usize;
    bytes[late] = 1;
    let err = decode_all(&bytes, 1000).expect_err("data after the end");
    assert_eq!(err.lsn, Lsn(w.base + late as u64));
    assert_eq!(
        err.kind,
        DecodeErrorKind::NotZero {
            after: "the end of WAL",
            end: Lsn(w.pos)
        }
    );

    // Garbage where the next record would start is not an end.
    let next = (w.pos - w.base) as usize;
    let err = bad_record_header(&w, |b| b[next..next + 8].copy_from_slice(&[0xFF; 8]));
    assert_eq!(err.lsn, Lsn(w.pos));
}

/// Four pages of `w` damaged by `damage`: decoding must fail on a record
/// header; the error.
fn bad_record_header(w: &WalWriter, damage: impl FnOnce(&mut [u8])) -> DecodeError {
    let mut bytes = w.padded(4 * PAGE);
    damage(&mut bytes);
    let err = decode_all(&bytes, 1000).expect_err("a damaged record header");
    assert!(
        matches!(err.kind, DecodeErrorKind::RecordHeader { .. }),
        "{err}"
    );
    err
}

#[test]
fn a_record_header_pointing_nowhere_is_an_error() {
    let (w, lsns) = sample();
    let at = (lsns[1].0 - w.base) as usize;
    // The back link.
    let err = bad_record_header(&w, |b| b[at + 8] ^= 0x08);
    assert_eq!(err.lsn, lsns[1]);
    // No such resource manager.
    bad_record_header(&w, |b| b[at + 17] = 60);
    // Shorter than a record header.
    bad_record_header(&w, |b| b[at..at + 4].copy_from_slice(&12u32.to_le_bytes()));
}

#[test]
fn a_long_header_must_match_the_segment_size() {
    let (w, _) = sample();
    let bytes = w.padded(2 * PAGE);
    let mut decoder = Decoder::new(1, 2 * SEG, Lsn(SEG_NO * SEG));
    let err = decoder.feed(&bytes).expect_err("segment size");
    assert!(
        matches!(err.kind, DecodeErrorKind::PageHeader { .. }),
        "{err}"
    );

    let mut decoder = Decoder::new(1, SEG, Lsn(SEG_NO * SEG)).with_system_identifier(42);
    let err = decoder.feed(&bytes).expect_err("another cluster");
    assert!(err.to_string().contains("another cluster"), "{err}");
}

#[test]
fn starting_at_a_record_or_misaligned() {
    let (w, lsns) = sample();
    let bytes = w.padded(4 * PAGE);
    let mut decoder = Decoder::new(1, SEG, lsns[3]);
    let records = decoder
        .feed(&bytes[(lsns[3].0 - w.base) as usize..])
        .expect("decodes from a record");
    assert_eq!(records.len(), 3);

    let mut decoder = Decoder::new(1, SEG, Lsn(lsns[3].0 + 4));
    let err = decoder.feed(&[0; 8]).expect_err("misaligned");
    assert_eq!(err.kind, DecodeErrorKind::Misaligned);
}
