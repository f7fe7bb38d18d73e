//! Moving through the byte stream: between records, inside one, and over the
//! zeros that follow a switch record or the end of the WAL.

use super::error::DecodeErrorKind;
use super::page::WAL_PAGE_SIZE;
use super::partial::Partial;
use super::record::{Record, RecordKind};
use super::{DecodeError, Decoder, MAXALIGN, State, ZEROS, next_segment};
use crate::pg::{Lsn, WalFormat};

impl Decoder {
    /// Consumes some of `bytes` (never past a page boundary) and returns how
    /// many; zero only when the state changed without consuming.
    pub(super) fn step(
        &mut self,
        bytes: &[u8],
        emit: &mut impl FnMut(Record),
    ) -> Result<usize, DecodeError> {
        let pos = self.pos;
        match self.state {
            State::EndOfWal { at } => return self.zeros(bytes, bytes.len(), at, "the end of WAL"),
            State::AfterSwitch => {
                let to_segment_end = next_segment(pos, self.seg_size).0 - pos.0;
                let n = bytes.len().min(to_segment_end as usize);
                let switch = self.prev.unwrap_or(pos);
                let taken = self.zeros(bytes, n, switch, "the switch record")?;
                if taken as u64 == to_segment_end {
                    self.state = State::Between;
                }
                return Ok(taken);
            }
            _ => {}
        }
        if self.header_len > 0 || pos.0 % WAL_PAGE_SIZE == 0 {
            return self.page_header(bytes);
        }
        let to_page_end = WAL_PAGE_SIZE - pos.0 % WAL_PAGE_SIZE;
        let data = &bytes[..bytes.len().min(to_page_end as usize)];
        match &mut self.state {
            State::SkipContinuation { remaining } => {
                let n = data.len().min(*remaining as usize);
                *remaining -= n as u32;
                self.skipped += n as u64;
                if *remaining == 0 {
                    self.state = State::Between;
                }
                Ok(n)
            }
            State::Between => {
                let padding = pos.0.next_multiple_of(MAXALIGN) - pos.0;
                if padding > 0 {
                    return Ok(data.len().min(padding as usize));
                }
                self.state = State::InRecord(Partial::new(pos));
                Ok(0)
            }
            State::InRecord(partial) => {
                let start = partial.start;
                let prev = self.prev;
                // A page header came first unless decoding began mid-page.
                let format = self.format.unwrap_or_else(WalFormat::newest);
                let taken = partial
                    .absorb(data, prev, format)
                    .map_err(|kind| self.error(start, kind))?;
                self.after_absorb(taken, emit)?;
                Ok(taken)
            }
            State::Start | State::AfterSwitch | State::EndOfWal { .. } => {
                unreachable!("handled above: Start only at a page boundary, the others first")
            }
        }
    }

    /// Moves on after the record in progress took `taken` more bytes: to the
    /// end of WAL when its length is zero, to the next record when it is
    /// complete.
    fn after_absorb(
        &mut self,
        taken: usize,
        emit: &mut impl FnMut(Record),
    ) -> Result<(), DecodeError> {
        let State::InRecord(partial) = &self.state else {
            return Ok(());
        };
        if partial.got == 4 && partial.total_len == 0 {
            // Zeros where a record would start: the server has not written
            // further (yet). The zero check goes on from here.
            self.state = State::EndOfWal { at: partial.start };
            return Ok(());
        }
        if !partial.is_complete() {
            return Ok(());
        }
        let State::InRecord(partial) = std::mem::replace(&mut self.state, State::Between) else {
            return Ok(());
        };
        let start = partial.start;
        let after = self.pos.0 + taken as u64;
        let is_switch = partial.is_switch();
        let end = if is_switch {
            next_segment(Lsn(after - 1), self.seg_size)
        } else {
            Lsn(after.next_multiple_of(MAXALIGN))
        };
        let record = partial
            .finish(end)
            .map_err(|kind| self.error(start, kind))?;
        if let Some(overwritten) = self.overwritten.take() {
            let names_it = matches!(record.kind,
                RecordKind::OverwriteContrecord { overwritten: o, .. } if o == overwritten);
            if !names_it {
                return Err(self.error(
                    start,
                    DecodeErrorKind::Continuation {
                        detail: format!(
                            "the record at {overwritten} was abandoned for an overwrite, but the \
                             record replacing it is not the XLOG_OVERWRITE_CONTRECORD naming it"
                        ),
                    },
                ));
            }
        }
        if is_switch && after % self.seg_size != 0 {
            self.state = State::AfterSwitch;
        }
        self.prev = Some(start);
        self.last_end = Some(end);
        emit(record);
        Ok(())
    }

    /// Takes the first `n` of `bytes`, which must be zeros because the WAL
    /// ended at `end` (`after` says how).
    pub(super) fn zeros(
        &self,
        bytes: &[u8],
        n: usize,
        end: Lsn,
        after: &'static str,
    ) -> Result<usize, DecodeError> {
        let n = n.min(ZEROS.len());
        if bytes[..n] != ZEROS[..n] {
            let offset = bytes[..n].iter().position(|&b| b != 0).unwrap_or(0);
            return Err(self.error(
                Lsn(self.pos.0 + offset as u64),
                DecodeErrorKind::NotZero { after, end },
            ));
        }
        Ok(n)
    }
}
