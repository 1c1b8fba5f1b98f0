//! Thumbnails for the supervisors' pages (no IO): a photo's bytes to a JPEG whose long side
//! is at most [`LONG_SIDE`] pixels. A photo's bytes are the worker's phone's, so decoding is
//! bounded ([`limits`]): a small file that claims to be 60,000 × 60,000 pixels is refused
//! before its pixels are allocated.

use std::io::Cursor;

/// The long side of a thumbnail, in pixels.
pub const LONG_SIDE: u32 = 320;
/// The widest and tallest photo decoded.
pub const MAX_SIDE: u32 = 8192;
/// The most memory one decoding may take.
pub const MAX_ALLOC: u64 = 64 * 1024 * 1024;

/// A photo that could not be made into a thumbnail (not an image, too large to decode).
#[derive(Debug, thiserror::Error)]
#[error("no thumbnail: {0}")]
pub struct ThumbError(String);

/// The decoding limits: [`MAX_SIDE`] and [`MAX_ALLOC`].
pub fn limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    limits
}

/// The thumbnail of a JPEG, PNG or WebP photo: a JPEG, the long side [`LONG_SIDE`] at most
/// (a smaller photo keeps its size).
pub fn thumbnail(bytes: &[u8]) -> Result<Vec<u8>, ThumbError> {
    let err = |e: &dyn std::fmt::Display| ThumbError(e.to_string());
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(&e))?;
    reader.limits(limits());
    let img = reader.decode().map_err(|e| err(&e))?;
    let small = if img.width() > LONG_SIDE || img.height() > LONG_SIDE {
        img.thumbnail(LONG_SIDE, LONG_SIDE)
    } else {
        img
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&small.to_rgb8())
        .map_err(|e| err(&e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        });
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    }

    #[test]
    fn the_long_side_becomes_320_pixels_as_a_jpeg() {
        let thumb = thumbnail(&png(800, 400)).expect("thumbnail");
        assert!(thumb.starts_with(&[0xFF, 0xD8, 0xFF]));
        let img = image::load_from_memory(&thumb).expect("decodes");
        assert_eq!((img.width(), img.height()), (320, 160));
        let small = image::load_from_memory(&thumbnail(&png(40, 30)).unwrap()).unwrap();
        assert_eq!((small.width(), small.height()), (40, 30));
    }

    #[test]
    fn a_decoding_bomb_is_refused_before_its_pixels_are_allocated() {
        // A PNG header claiming 60,000 × 60,000 pixels (10.8 GB as RGB), in a few bytes.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&60_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&60_000u32.to_be_bytes());
        assert!(thumbnail(&bomb).is_err());
        // A real image wider than MAX_SIDE (a few hundred bytes compressed).
        assert!(thumbnail(&png(MAX_SIDE + 1, 1)).is_err());
        assert!(thumbnail(&png(MAX_SIDE, 1)).is_ok());
        assert!(thumbnail(b"\xFF\xD8\xFFnot a jpeg").is_err());
    }
}
