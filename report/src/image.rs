//! The one PNG encoder of the reports' charts.
//!
//! Invariant: a chart file is either written whole or the call returns an error
//! naming it ([`ReportError::Io`] when the file cannot be created,
//! [`ReportError::Png`] when encoding or writing fails).

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::ReportError;

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
    use super::testing::decode;
    use super::*;

    #[test]
    fn round_trips_through_a_decoder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.png");
        let pixels: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        write_rgb_png(&pixels, (4, 3), &path).expect("write");
        assert_eq!(decode(&path), (4, 3, pixels));
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

/// A PNG written here, read back, for the crate's tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    /// (width, height, RGB pixels) of the 8-bit RGB PNG at `path`.
    pub(crate) fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let bytes = std::fs::read(path).expect("read png");
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("png header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("png frame");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }
}
