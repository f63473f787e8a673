//! Reading and decoding the images users point at, within limits: an image must not cost far
//! more than its bytes (decompression bombs), a path must be a regular file of bounded size
//! (not `/dev/zero` or a FIFO), and a JPEG cut short is refused as Pillow refuses it.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Pillow's `Image.MAX_IMAGE_PIXELS`: the default limit on an image's pixels. Pillow warns
/// above it and refuses twice as many; Mirante refuses above it (raise the limit to read more).
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// The default limit on an image file's size.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 512 << 20;

/// What an image may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Images with more pixels are refused before decoding (decompression bombs).
    pub max_pixels: u64,
    /// Image files larger than this are refused before reading.
    pub max_file_bytes: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Reads an image file: a regular file (symbolic links followed) of at most `max_bytes` bytes.
/// Devices, FIFOs, sockets and directories are refused before they are opened, so reading
/// never blocks on a FIFO nor runs on without end on `/dev/zero`.
pub fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let fail = |detail: String| Error::Image {
        source_name: path.display().to_string(),
        detail,
    };
    let regular = |meta: &std::fs::Metadata| {
        if meta.is_file() {
            return Ok(());
        }
        Err(fail(format!(
            "not a regular file (a {}); images are read from regular files only",
            kind_of(meta)
        )))
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => fail("image file not found".into()),
        _ => fail(e.to_string()),
    })?;
    regular(&meta)?;
    let file = open_without_blocking(path).map_err(|e| fail(e.to_string()))?;
    // The path may have been replaced between the two looks: check what was opened.
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    regular(&meta)?;
    if meta.len() > max_bytes {
        return Err(fail(too_big(meta.len(), max_bytes)));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > max_bytes {
        return Err(fail(too_big(bytes.len() as u64, max_bytes)));
    }
    Ok(bytes)
}

fn too_big(size: u64, max: u64) -> String {
    format!("{size} bytes is above the limit of {max} bytes for an image file")
}

#[cfg(unix)]
fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO that took a regular file's place returns at once.
    const O_NONBLOCK: i32 = 0o4000;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    if meta.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

/// Decodes an image, refusing what would cost far more than its bytes: more than `max_pixels`
/// pixels (a decompression bomb, as Pillow's `MAX_IMAGE_PIXELS`; checked from the header,
/// before any pixel is allocated), and a JPEG cut short, which Pillow refuses and Rust's decoder
/// would fill in silently.
pub fn decode(bytes: &[u8], source: &str, max_pixels: u64) -> Result<image::DynamicImage> {
    check(bytes, source, max_pixels)?;
    let mut reader = reader(bytes, source)?;
    let mut limits = image::Limits::default();
    // The decoded pixels (up to 16-bit RGBA: 8 bytes each), and the default's slack.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(512 << 20));
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| image_error(source, e.to_string()))
}

/// What [`decode`] checks before decoding (the header, the pixel limit, a JPEG's end), without
/// decoding: the image's width and height.
pub fn check(bytes: &[u8], source: &str, max_pixels: u64) -> Result<(u32, u32)> {
    let header = reader(bytes, source)?;
    let format = header.format();
    let (width, height) = header
        .into_dimensions()
        .map_err(|e| image_error(source, e.to_string()))?;
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(image_error(
            source,
            format!(
                "{width} x {height} = {pixels} pixels is above the limit of {max_pixels} \
                 pixels (a decompression bomb?); raise the limit (max_image_pixels) to read it"
            ),
        ));
    }
    if format == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        return Err(image_error(
            source,
            "the JPEG is truncated: its last scan has no end-of-image marker after it".into(),
        ));
    }
    Ok((width, height))
}

fn reader<'a>(
    bytes: &'a [u8],
    source: &str,
) -> Result<image::ImageReader<std::io::Cursor<&'a [u8]>>> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| image_error(source, e.to_string()))
}

fn image_error(source: &str, detail: String) -> Error {
    Error::Image {
        source_name: source.to_string(),
        detail,
    }
}

/// Whether a JPEG's last scan (start-of-scan marker `FF DA`) is followed by an end-of-image
/// marker (`FF D9`). Inside entropy-coded data `FF` is always followed by `00` or a restart
/// marker, so the markers found are real ones. Data without any scan is left to the decoder.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    match bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) {
        Some(scan) => bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 13) as u8, ((x + y) * 3) as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn images_above_the_pixel_limit_are_refused_from_the_header() {
        let png = encoded(64, 32, image::ImageFormat::Png);
        assert!(decode(&png, "small.png", 64 * 32).is_ok());
        let err = decode(&png, "small.png", 64 * 32 - 1)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("small.png") && err.contains("64 x 32 = 2048 pixels is above"),
            "{err}"
        );
        // A header that claims 100,000 x 100,000 pixels: refused before any pixel exists.
        let mut bomb = png.clone();
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = check(&bomb, "bomb.png", DEFAULT_MAX_PIXELS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("decompression bomb"), "{err}");
    }

    /// The CRC-32 of PNG chunks (ISO-HDLC), bit by bit: small enough for a test.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn a_truncated_jpeg_is_refused_and_a_whole_one_decodes() {
        let jpeg = encoded(64, 64, image::ImageFormat::Jpeg);
        assert_eq!(
            decode(&jpeg, "whole.jpg", DEFAULT_MAX_PIXELS)
                .unwrap()
                .width(),
            64
        );
        // Trailing bytes after the end marker are fine, as in Pillow.
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"trailer");
        assert!(decode(&trailing, "trailing.jpg", DEFAULT_MAX_PIXELS).is_ok());
        for cut in [jpeg.len() - 2, jpeg.len() * 2 / 3, jpeg.len() / 2] {
            let err = decode(&jpeg[..cut], "cut.jpg", DEFAULT_MAX_PIXELS)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cut.jpg") && err.contains("truncated"),
                "{err}"
            );
        }
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.png");
        std::fs::write(&file, encoded(8, 8, image::ImageFormat::Png)).unwrap();
        let size = std::fs::metadata(&file).unwrap().len();
        assert_eq!(read_file(&file, size).unwrap().len() as u64, size);
        let err = read_file(&file, size - 1).unwrap_err().to_string();
        assert!(err.contains("above the limit"), "{err}");

        let err = read_file(dir.path(), 1 << 20).unwrap_err().to_string();
        assert!(err.contains("not a regular file (a directory)"), "{err}");
        let err = read_file(&dir.path().join("none.png"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("image file not found"), "{err}");
        #[cfg(unix)]
        {
            let err = read_file(Path::new("/dev/zero"), 1 << 20)
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a regular file (a device)"), "{err}");
            // A FIFO nobody writes to: refused at once, never opened.
            let fifo = dir.path().join("x.png");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            assert!(made.unwrap().success());
            let err = read_file(&fifo, 1 << 20).unwrap_err().to_string();
            assert!(err.contains("not a regular file (a FIFO)"), "{err}");
        }
    }
}

#[cfg(test)]
mod formats {
    use super::*;

    #[test]
    fn bmp_and_tiff_decode_as_the_image_folder_lists_them() {
        let img =
            image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 77]));
        for format in [image::ImageFormat::Bmp, image::ImageFormat::Tiff] {
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, format).unwrap();
            let decoded = decode(&out.into_inner(), "x", DEFAULT_MAX_PIXELS).unwrap();
            assert_eq!(decoded.to_rgb8(), img, "{format:?}");
        }
    }
}
