//! Cutting a byte stream into chunks: content-defined (FastCDC) or fixed,
//! page-aligned. See docs/FORMAT.md, "Chunks", for why each exists.

use std::fmt;
use std::pin::Pin;
use std::str::FromStr;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

/// FastCDC minimum chunk size.
pub const CDC_MIN: u32 = 64 * 1024;
/// FastCDC average chunk size.
pub const CDC_AVG: u32 = 256 * 1024;
/// FastCDC maximum chunk size.
pub const CDC_MAX: u32 = 1024 * 1024;
/// Default fixed chunk size: 16 PostgreSQL pages.
pub const FIXED_DEFAULT: u32 = 128 * 1024;
const PAGE: u32 = 8192;

/// How an item is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Content-defined chunks (FastCDC 2020, 64 KiB / 256 KiB / 1 MiB).
    Cdc,
    /// Fixed-size chunks of this many bytes (a multiple of 8 KiB, at most 4 MiB).
    Fixed(u32),
}

impl Chunking {
    /// Fixed chunks of the default size, for PostgreSQL relation files.
    pub const PAGES: Chunking = Chunking::Fixed(FIXED_DEFAULT);

    /// Whether the parameters are ones a reader accepts.
    pub fn is_valid(&self) -> bool {
        match *self {
            Chunking::Cdc => true,
            Chunking::Fixed(n) => n >= PAGE && n % PAGE == 0 && n <= 4 * 1024 * 1024,
        }
    }

    /// The largest chunk this chunker produces.
    pub fn max_chunk(&self) -> u32 {
        match *self {
            Chunking::Cdc => CDC_MAX,
            Chunking::Fixed(n) => n,
        }
    }
}

impl fmt::Display for Chunking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chunking::Cdc => f.write_str("cdc"),
            Chunking::Fixed(n) => write!(f, "fixed:{n}"),
        }
    }
}

impl FromStr for Chunking {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let c = match s {
            "cdc" => Chunking::Cdc,
            _ => match s.strip_prefix("fixed:").and_then(|n| n.parse().ok()) {
                Some(n) => Chunking::Fixed(n),
                None => return Err(format!("unknown chunker {s:?}")),
            },
        };
        if c.is_valid() {
            Ok(c)
        } else {
            Err(format!("invalid chunker parameters {s:?}"))
        }
    }
}

impl serde::Serialize for Chunking {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Chunking {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a content-defined cut of one input stands.
enum Cdc<R: AsyncRead + Unpin> {
    Start(R),
    Cutting(Box<fastcdc::v2020::AsyncStreamCDC<tokio::io::Chain<std::io::Cursor<Vec<u8>>, R>>>),
    Done,
}

/// A stream of chunks read from `reader`; memory is bounded by one chunk plus
/// the chunker's buffer.
pub fn chunks<'a, R>(
    chunking: Chunking,
    reader: R,
) -> Pin<Box<dyn Stream<Item = std::io::Result<Vec<u8>>> + Send + 'a>>
where
    R: AsyncRead + Unpin + Send + 'a,
{
    match chunking {
        Chunking::Cdc => {
            let stream = futures::stream::unfold(Cdc::Start(reader), |state| async move {
                let mut cdc = match state {
                    Cdc::Done => return None,
                    Cdc::Cutting(cdc) => cdc,
                    Cdc::Start(mut reader) => {
                        // FastCDC cuts nothing out of CDC_MIN bytes or fewer:
                        // such an input is one chunk, and most files in a base
                        // backup are that small. Its chunker zero-fills a
                        // buffer of CDC_MAX per input, which cost more than
                        // the rest of an incremental backup of 980 files.
                        let mut head = Vec::with_capacity(CDC_MIN as usize + 1);
                        let read = (&mut reader)
                            .take(u64::from(CDC_MIN) + 1)
                            .read_to_end(&mut head)
                            .await;
                        match read {
                            Err(e) => return Some((Err(e), Cdc::Done)),
                            Ok(0) => return None,
                            Ok(n) if n <= CDC_MIN as usize => return Some((Ok(head), Cdc::Done)),
                            Ok(_) => Box::new(fastcdc::v2020::AsyncStreamCDC::new(
                                std::io::Cursor::new(head).chain(reader),
                                CDC_MIN,
                                CDC_AVG,
                                CDC_MAX,
                            )),
                        }
                    }
                };
                let next = {
                    let mut s = Box::pin(cdc.as_stream());
                    s.next().await
                };
                match next {
                    None => None,
                    Some(Ok(c)) => Some((Ok(c.data), Cdc::Cutting(cdc))),
                    Some(Err(fastcdc::v2020::Error::IoError(e))) => Some((Err(e), Cdc::Done)),
                    Some(Err(e)) => Some((Err(std::io::Error::other(e.to_string())), Cdc::Done)),
                }
            });
            Box::pin(stream)
        }
        Chunking::Fixed(size) => {
            let stream = futures::stream::unfold(Some(reader), move |state| async move {
                let mut reader = state?;
                let mut buf = vec![0u8; size as usize];
                let mut filled = 0;
                while filled < buf.len() {
                    match reader.read(&mut buf[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Some((Err(e), None)),
                    }
                }
                if filled == 0 {
                    return None;
                }
                buf.truncate(filled);
                let more = (filled == size as usize).then_some(reader);
                Some((Ok(buf), more))
            });
            Box::pin(stream)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    async fn cut(c: Chunking, data: &[u8]) -> Vec<Vec<u8>> {
        chunks(c, data).try_collect().await.expect("chunks")
    }

    #[tokio::test]
    async fn fixed_chunks_are_page_aligned() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let got = cut(Chunking::Fixed(131072), &data).await;
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            [131072, 131072, 37856]
        );
        assert_eq!(got.concat(), data);
        assert!(cut(Chunking::Fixed(8192), &[]).await.is_empty());
    }

    #[tokio::test]
    async fn cdc_boundaries_survive_an_insert() {
        let mut data = vec![0u8; 3_000_000];
        let mut x: u64 = 1;
        for b in data.iter_mut() {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (x >> 33) as u8;
        }
        let a = cut(Chunking::Cdc, &data).await;
        assert_eq!(a.concat(), data);
        let mut shifted = b"inserted".to_vec();
        shifted.extend_from_slice(&data);
        let b = cut(Chunking::Cdc, &shifted).await;
        let common = a.iter().filter(|c| b.contains(c)).count();
        assert!(
            common + 2 >= a.len(),
            "{common} of {} chunks survive",
            a.len()
        );
    }

    #[tokio::test]
    async fn small_inputs_are_one_chunk_as_fastcdc_cuts_them() {
        let mut x: u64 = 7;
        let data: Vec<u8> = (0..3 * CDC_MIN as usize)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8
            })
            .collect();
        let min = CDC_MIN as usize;
        for len in [1, 4096, min - 1, min, min + 1, 2 * min, 3 * min] {
            let input = &data[..len];
            let ours = cut(Chunking::Cdc, input).await;
            let theirs: Vec<Vec<u8>> =
                fastcdc::v2020::FastCDC::new(input, CDC_MIN, CDC_AVG, CDC_MAX)
                    .map(|c| input[c.offset..c.offset + c.length].to_vec())
                    .collect();
            assert_eq!(ours, theirs, "{len} bytes");
        }
        assert!(cut(Chunking::Cdc, &[]).await.is_empty());
    }

    #[test]
    fn chunking_text_form() {
        for c in [Chunking::Cdc, Chunking::Fixed(131072)] {
            assert_eq!(c.to_string().parse::<Chunking>(), Ok(c));
        }
        assert!("fixed:1000".parse::<Chunking>().is_err());
        assert!("rabin".parse::<Chunking>().is_err());
    }
}
