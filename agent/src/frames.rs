//! The wire framing of a compressed stream: the plugin cuts the stream into chunks of at
//! most 1 MiB and sends each as a frame, zstd-compressed where that pays (text-like layers
//! as `docker save` writes them, uncompressed) and as is where it does not (random data,
//! layers that are gzip already). The agent decodes the frames back into the exact stream:
//! the importer sees the same bytes, and the image the same digests, as without framing.
//!
//! A frame: tag (1 byte: 0 as is, 1 zstd), payload length (u32 LE), decoded length (u32
//! LE), payload. The stream ends where its announced decoded length is reached, so the
//! agent never reads past the last frame (exec v4 has no stdin close).

use std::io::{self, Read};

pub const RAW: u8 = 0;
pub const ZSTD: u8 = 1;
/// Largest decoded chunk (and, with zstd's worst case, about the largest payload).
pub const CHUNK: usize = 1 << 20;
const MAX_PAYLOAD: usize = CHUNK + (CHUNK >> 7) + 1024;

/// Bytes of a frame's header.
pub const HEADER: usize = 9;

/// A frame's header: tag, payload length, decoded length (the format above).
pub fn header(tag: u8, payload: usize, decoded: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0] = tag;
    h[1..5].copy_from_slice(&(payload as u32).to_le_bytes());
    h[5..9].copy_from_slice(&(decoded as u32).to_le_bytes());
    h
}

/// Whether a chunk goes compressed: only where that saves a tenth or more, so random data
/// and gzip layers travel as they are and cost the node no decoding.
pub fn pays(compressed: usize, plain: usize) -> bool {
    compressed < plain - plain / 10
}

/// Decodes frames read from `inner` into the plain stream.
pub struct Deframer<R> {
    inner: R,
    out: Vec<u8>,
    at: usize,
    payload: Vec<u8>,
    decoder: ruzstd::decoding::FrameDecoder,
}

impl<R: Read> Deframer<R> {
    pub fn new(inner: R) -> Self {
        Deframer {
            inner,
            out: Vec::with_capacity(CHUNK),
            at: 0,
            payload: Vec::with_capacity(MAX_PAYLOAD),
            decoder: ruzstd::decoding::FrameDecoder::new(),
        }
    }

    /// Reads the next frame into `out`; false at a clean end (EOF between frames).
    fn next_frame(&mut self) -> io::Result<bool> {
        let mut header = [0u8; HEADER];
        let mut got = 0;
        while got < header.len() {
            match self.inner.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let tag = header[0];
        let len = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
        let decoded = u32::from_le_bytes(header[5..9].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD || decoded > CHUNK || (tag == RAW && len != decoded) {
            return Err(bad(format!(
                "bad frame (tag {tag}, {len} bytes, {decoded} decoded)"
            )));
        }
        self.payload.resize(len, 0);
        self.inner.read_exact(&mut self.payload)?;
        self.out.clear();
        self.at = 0;
        match tag {
            RAW => self.out.extend_from_slice(&self.payload),
            ZSTD => {
                // One decoder for the whole stream: its window buffers are reused frame
                // after frame (a new decoder per 1 MiB frame halved the decode speed).
                // `out` holds CHUNK bytes at most, so a frame that decodes to more is an
                // error (TargetTooSmall), not an allocation.
                self.decoder
                    .decode_all_to_vec(&self.payload, &mut self.out)
                    .map_err(|e| bad(format!("bad zstd frame: {e}")))?;
                if self.out.len() != decoded {
                    return Err(bad(format!(
                        "a zstd frame decoded to {} bytes, announced {decoded}",
                        self.out.len()
                    )));
                }
            }
            other => return Err(bad(format!("unknown frame tag {other}"))),
        }
        Ok(true)
    }
}

fn bad(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl<R: Read> Read for Deframer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.out.len() {
            if !self.next_frame()? {
                return Ok(0);
            }
        }
        let n = (self.out.len() - self.at).min(buf.len());
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, payload: &[u8], decoded: usize) -> Vec<u8> {
        [&header(tag, payload.len(), decoded)[..], payload].concat()
    }

    /// A zstd frame holding `data`, made with ruzstd's own (uncompressed-block) encoder so
    /// the test needs no C library.
    fn zstd_of(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Uncompressed)
    }

    #[test]
    fn raw_and_zstd_frames_decode_to_the_stream() {
        let a = b"hello ".repeat(1000);
        let b = b"world".to_vec();
        let mut wire = frame(ZSTD, &zstd_of(&a), a.len());
        wire.extend(frame(RAW, &b, b.len()));
        let mut out = Vec::new();
        Deframer::new(&wire[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn lies_and_cuts_are_errors() {
        let a = b"abc".repeat(10);
        let mut out = Vec::new();
        let lie = frame(ZSTD, &zstd_of(&a), a.len() + 1);
        assert!(Deframer::new(&lie[..]).read_to_end(&mut out).is_err());
        let cut = frame(RAW, &a, a.len());
        assert!(
            Deframer::new(&cut[..cut.len() - 1])
                .read_to_end(&mut out)
                .is_err()
        );
        let huge = frame(RAW, b"", CHUNK + 1);
        assert!(Deframer::new(&huge[..]).read_to_end(&mut out).is_err());
    }
}
