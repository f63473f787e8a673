//! On-disk envelope shared by every file Mirante writes itself (manifests, rows, blobs, embedding
//! columns, deletion vectors). `docs/format.md` has the byte table; keep the two in step.
//!
//! ```text
//! offset  size  field
//!      0     8  magic (one per file kind)
//!      8     4  format version (u32 LE)
//!     12     4  dtype (embedding columns: 0 = f32 LE; other kinds: 0)
//!     16     8  body length in bytes (u64 LE)
//!     24     4  CRC-32C of the body (u32 LE)
//!     28     4  dim (embedding columns; 0 elsewhere)
//!     32     8  count: rows, vectors or bits, by kind (u64 LE)
//!     40     8  tag: embedding-space id for columns, 0 elsewhere (u64 LE)
//!     48    12  reserved, zero
//!     60     4  CRC-32C of bytes 0..60
//!     64     -  body, 64-byte aligned; the file ends exactly at 64 + body length
//! ```

use std::path::Path;

use crate::error::{Error, Result};
use crate::fsio::{self, Mapped};
use crate::manifest::FileRef;

/// Version written by this build. Bump it on any incompatible change and add a compatibility
/// fixture of the previous version.
pub const FORMAT_VERSION: u32 = 1;
/// Oldest version this build still reads.
pub const OLDEST_SUPPORTED_VERSION: u32 = 1;

/// Size of the envelope header; also the alignment of every body.
pub const HEADER_LEN: usize = 64;

/// The kinds of files Mirante writes, each with its own magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Manifest,
    Rows,
    Blob,
    Column,
    Deletes,
}

impl FileKind {
    pub fn magic(self) -> [u8; 8] {
        match self {
            FileKind::Manifest => *b"MIRMANI\0",
            FileKind::Rows => *b"MIRROWS\0",
            FileKind::Blob => *b"MIRBLOB\0",
            FileKind::Column => *b"MIREMBD\0",
            FileKind::Deletes => *b"MIRDELV\0",
        }
    }
}

/// The kind-specific header fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderFields {
    pub dtype: u32,
    pub dim: u32,
    pub count: u64,
    pub tag: u64,
}

/// Builds the 64-byte header for `body`.
pub fn encode_header(kind: FileKind, fields: HeaderFields, body: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&kind.magic());
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&fields.dtype.to_le_bytes());
    h[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    h[24..28].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    h[28..32].copy_from_slice(&fields.dim.to_le_bytes());
    h[32..40].copy_from_slice(&fields.count.to_le_bytes());
    h[40..48].copy_from_slice(&fields.tag.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Validates the envelope of `bytes` (the whole file) and returns its fields. Checks, in order:
/// length, magic, header checksum, version, body length, body checksum.
pub fn check_envelope(path: &Path, kind: FileKind, bytes: &[u8]) -> Result<HeaderFields> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::corruption(
            path,
            format!(
                "file is {} bytes, shorter than its {HEADER_LEN}-byte header",
                bytes.len()
            ),
        ));
    }
    if bytes[0..8] != kind.magic() {
        return Err(Error::corruption(
            path,
            format!(
                "bad magic \"{}\", expected \"{}\"",
                bytes[0..8].escape_ascii(),
                kind.magic().escape_ascii()
            ),
        ));
    }
    if crc32c::crc32c(&bytes[0..60]) != u32_at(bytes, 60) {
        return Err(Error::corruption(path, "header checksum mismatch"));
    }
    let version = u32_at(bytes, 8);
    if !(OLDEST_SUPPORTED_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            found: version,
            oldest: OLDEST_SUPPORTED_VERSION,
            newest: FORMAT_VERSION,
        });
    }
    let body_len = u64_at(bytes, 16);
    let actual = (bytes.len() - HEADER_LEN) as u64;
    if body_len != actual {
        return Err(Error::corruption(
            path,
            format!("header announces a {body_len}-byte body, file holds {actual} bytes"),
        ));
    }
    if crc32c::crc32c(&bytes[HEADER_LEN..]) != u32_at(bytes, 24) {
        return Err(Error::corruption(path, "body checksum mismatch"));
    }
    Ok(HeaderFields {
        dtype: u32_at(bytes, 12),
        dim: u32_at(bytes, 28),
        count: u64_at(bytes, 32),
        tag: u64_at(bytes, 40),
    })
}

/// Writes `body` under an envelope of `kind` to `path` and fsyncs it. Returns the file's length
/// and the body's CRC-32C, which the manifest records (see [`FileRef`]).
pub fn write_file(
    path: &Path,
    kind: FileKind,
    fields: HeaderFields,
    body: &[u8],
) -> Result<(u64, u32)> {
    let header = encode_header(kind, fields, body);
    fsio::write_synced(path, &[&header, body])?;
    Ok((HEADER_LEN as u64 + body.len() as u64, body_crc(&header)))
}

/// The body CRC-32C recorded in a header.
fn body_crc(header: &[u8]) -> u32 {
    u32_at(header, 24)
}

/// Maps `path`, validates its envelope, and checks it is the file `expect` committed.
pub fn map_file(path: &Path, kind: FileKind, expect: &FileRef) -> Result<(HeaderFields, Mapped)> {
    let mapped = fsio::map_sealed(path)?;
    let fields = check_envelope(path, kind, &mapped)?;
    check_committed(path, &mapped, body_crc(&mapped), expect)?;
    Ok((fields, mapped))
}

/// Checks that a file's length and checksum are those the manifest committed.
pub fn check_committed(path: &Path, bytes: &[u8], crc: u32, expect: &FileRef) -> Result<()> {
    if bytes.len() as u64 != expect.len || crc != expect.crc32c {
        return Err(Error::corruption(
            path,
            format!(
                "file is {} bytes with checksum {crc:08x}, the manifest committed {} bytes with checksum {:08x}",
                bytes.len(),
                expect.len,
                expect.crc32c
            ),
        ));
    }
    Ok(())
}

/// Reads a whole file, validates its envelope and checks it against `expect`.
pub fn read_file(path: &Path, kind: FileKind, expect: &FileRef) -> Result<(HeaderFields, Vec<u8>)> {
    let bytes = fsio::read(path)?;
    let fields = check_envelope(path, kind, &bytes)?;
    check_committed(path, &bytes, body_crc(&bytes), expect)?;
    Ok((fields, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_byte_is_detected() {
        let body = b"hello, mirante".to_vec();
        let fields = HeaderFields {
            dtype: 0,
            dim: 3,
            count: 7,
            tag: 9,
        };
        let mut file = encode_header(FileKind::Column, fields, &body).to_vec();
        file.extend_from_slice(&body);
        let p = Path::new("x.emb");
        assert_eq!(check_envelope(p, FileKind::Column, &file).unwrap(), fields);
        assert!(check_envelope(p, FileKind::Rows, &file).is_err());
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            assert!(
                check_envelope(p, FileKind::Column, &bad).is_err(),
                "byte {i}"
            );
        }
        for cut in 0..file.len() {
            assert!(check_envelope(p, FileKind::Column, &file[..cut]).is_err());
        }
    }
}
