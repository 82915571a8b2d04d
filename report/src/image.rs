//! The one PNG encoder of the reports' charts.
//!
//! Invariant: a chart file is either written whole or the call returns an error
//! naming it ([`ReportError::Io`] when the file cannot be created,
//! [`ReportError::Png`] when encoding or writing fails). Reading one back
//! ([`read_rgb_png`], for tests of charts) yields exactly what was written.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::ReportError;

/// An 8-bit RGB image read back from a PNG file ([`read_rgb_png`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB bytes, 3 per pixel.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// The pixel at (x, y); `None` outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        let p = self.pixels.get(i..i + 3)?;
        Some([p[0], p[1], p[2]])
    }
}

/// Reads an 8-bit RGB PNG (what [`write_rgb_png`] writes) back, e.g. for a test
/// to look at the pixels of a chart; any other colour type is refused.
pub fn read_rgb_png(path: &Path) -> Result<RgbImage, ReportError> {
    let bytes = std::fs::read(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let decode_error = |message: String| ReportError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .map_err(|e| decode_error(e.to_string()))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| decode_error("image too large".to_owned()))?;
    let mut pixels = vec![0; size];
    let info = reader
        .next_frame(&mut pixels)
        .map_err(|e| decode_error(e.to_string()))?;
    if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
        return Err(decode_error(format!(
            "{:?} at {:?} bits, not 8-bit RGB",
            info.color_type, info.bit_depth
        )));
    }
    pixels.truncate(info.buffer_size());
    Ok(RgbImage {
        width: info.width,
        height: info.height,
        pixels,
    })
}

/// Writes an 8-bit RGB buffer of `size` (width, height) as a PNG file.
pub fn write_rgb_png(pixels: &[u8], size: (u32, u32), path: &Path) -> Result<(), ReportError> {
    let file = File::create(path).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let png_error = |source| ReportError::Png {
        path: path.to_path_buf(),
        source,
    };
    let mut encoder = png::Encoder::new(BufWriter::new(file), size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(pixels).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_decoder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.png");
        let pixels: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        write_rgb_png(&pixels, (4, 3), &path).expect("write");
        let image = read_rgb_png(&path).expect("read");
        assert_eq!((image.width, image.height), (4, 3));
        assert_eq!(image.pixel(1, 0), Some([21, 28, 35]));
        assert_eq!(image.pixel(4, 0), None);
        assert_eq!(image.pixels, pixels);
    }

    #[test]
    fn reading_refuses_what_is_not_an_rgb_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("not.png");
        std::fs::write(&text, b"not a png").expect("write");
        let err = read_rgb_png(&text).expect_err("not a png");
        assert!(matches!(err, ReportError::Decode { .. }), "{err}");
        let err = read_rgb_png(&dir.path().join("missing.png")).expect_err("missing");
        assert!(matches!(err, ReportError::Io { .. }), "{err}");

        let grey = dir.path().join("grey.png");
        let file = std::fs::File::create(&grey).expect("create");
        let mut encoder = png::Encoder::new(file, 2, 2);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(&[0, 64, 128, 255]).expect("data");
        writer.finish().expect("finish");
        let err = read_rgb_png(&grey).expect_err("greyscale");
        assert!(matches!(err, ReportError::Decode { .. }), "{err}");
    }

    #[test]
    fn a_wrong_buffer_or_path_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = write_rgb_png(&[0; 5], (4, 3), &dir.path().join("short.png"))
            .expect_err("short buffer");
        assert!(matches!(err, ReportError::Png { .. }), "{err}");
        let err = write_rgb_png(&[0; 36], (4, 3), &dir.path().join("no/dir/x.png"))
            .expect_err("missing directory");
        assert!(matches!(err, ReportError::Io { .. }), "{err}");
    }
}
