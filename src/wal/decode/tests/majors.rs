//! The same record bytes read by the rules of the major the pages name: what
//! differs between majors comes from `FORMATS`, never from a guess.

use super::*;

/// A record body with one full-page image (block 0, no block data) whose
/// `bimg_info` is `HAS_HOLE | 0x04`: in 14, 0x04 is `BKPIMAGE_APPLY` and the
/// image is plain; from 15 on it is `BKPIMAGE_COMPRESS_PGLZ`, and a
/// compressed image with a hole carries a hole length the bytes lack.
fn image_record_body() -> Vec<u8> {
    let image_len: u16 = 100;
    let mut body = vec![0, 0x10];
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&image_len.to_le_bytes());
    body.extend_from_slice(&50u16.to_le_bytes());
    body.push(0x01 | 0x04);
    body.extend_from_slice(&[0x7F, 6, 0, 0, 5, 0, 0, 0, 0, 64, 0, 0]);
    body.extend_from_slice(&9u32.to_le_bytes());
    body.extend_from_slice(&[255, 2]);
    body.extend(std::iter::repeat_n(0xAB, image_len.into()));
    body.extend_from_slice(&[5, 6]);
    body
}

/// WAL with the image record and a commit, pages marked with `magic`.
fn wal_with_image(magic: u16) -> (Vec<u8>, Vec<Lsn>) {
    let mut w = WalWriter::new(SEG_NO);
    w.magic = magic;
    let lsns = vec![
        w.record(10, 0x00, 700, &image_record_body()),
        w.commit(700, micros("2026-11-24T10:00:00Z")),
    ];
    (w.padded(2 * PAGE), lsns)
}

#[test]
fn a_plain_image_of_14_decodes_by_14s_rules() {
    let (bytes, lsns) = wal_with_image(0xD10D);
    let (records, decoder) = decode_all(&bytes, 1000).expect("PostgreSQL 14 WAL");
    assert_eq!(records.iter().map(|r| r.lsn).collect::<Vec<_>>(), lsns);
    assert_eq!(decoder.format().map(|f| f.major), Some(14));
}

#[test]
fn the_same_image_bits_are_compression_from_15_on() {
    for magic in [0xD110, 0xD113, 0xD116, 0xD118] {
        let (bytes, lsns) = wal_with_image(magic);
        let err = decode_all(&bytes, 1000).expect_err("a compressed image without its hole");
        assert_eq!(err.lsn, lsns[0]);
        assert!(
            matches!(err.kind, DecodeErrorKind::RecordBody { .. }),
            "{magic:04X}: {err}"
        );
    }
}

#[test]
fn custom_resource_managers_exist_from_15_on() {
    for (magic, ok) in [(0xD10D, false), (0xD110, true), (0xD118, true)] {
        let mut w = WalWriter::new(SEG_NO);
        w.magic = magic;
        let lsn = w.record(130, 0x00, 0, &main_data(&[1, 2, 3]));
        let got = decode_all(&w.padded(PAGE), PAGE as usize);
        match (ok, got) {
            (true, Ok((records, _))) => assert_eq!(records[0].rmgr, 130),
            (false, Err(e)) => {
                assert_eq!(e.lsn, lsn);
                assert!(e.to_string().contains("PostgreSQL 14"), "{e}");
            }
            (_, other) => panic!("{magic:04X}: {other:?}"),
        }
    }
}

#[test]
fn a_decoder_keeps_the_major_of_its_first_page() {
    // Segment 3 of PostgreSQL 16 WAL, then a segment 4 claiming 17.
    let (mut w, _) = sample();
    w.switch();
    let mut bytes = w.padded(SEG);
    for page in (0..SEG).step_by(PAGE as usize) {
        let p = page as usize;
        if bytes[p..p + 2] == 0xD110u16.to_le_bytes() {
            bytes[p..p + 2].copy_from_slice(&0xD113u16.to_le_bytes());
        }
    }
    let mut decoder = Decoder::new(1, SEG, Lsn(SEG_NO * SEG));
    decoder.feed(&bytes).expect("PostgreSQL 16 WAL");
    assert_eq!(decoder.format().map(|f| f.major), Some(16));
    let mut next = WalWriter::new(SEG_NO + 1);
    next.magic = 0xD116;
    next.switch();
    let err = decoder.feed(&next.padded(PAGE)).expect_err("17 after 16");
    assert!(
        matches!(
            err.kind,
            DecodeErrorKind::MajorMismatch {
                found_major: Some(17),
                expected_major: 16,
                ..
            }
        ),
        "{err}"
    );
}
