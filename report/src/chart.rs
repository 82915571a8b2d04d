//! The canvas every report chart is drawn on: one size, a white background, a
//! title band, the bundled font and the shared text and grid styles.
//!
//! Invariant: [`render_png`] registers the bundled font before any drawing, turns
//! every plotters error into [`ReportError::Draw`] naming the chart file, and
//! writes the PNG only once the whole chart was drawn.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::TextStyle;

use crate::{ensure_font, write_rgb_png, ReportError};

/// Chart size in pixels.
pub const CHART_SIZE: (u32, u32) = (1280, 720);
/// Height of the band above the plot that holds the title (and, for some
/// charts, the legend).
pub const HEADER_H: u32 = 56;
/// Text: titles, ticks, axis descriptions, legends.
pub const TEXT_COLOR: RGBColor = RGBColor(20, 20, 20);
/// The light grid lines.
pub const GRID_COLOR: RGBColor = RGBColor(235, 235, 235);

/// A drawing area of a chart being rendered.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws a [`CHART_SIZE`] chart with `draw` onto a white canvas and writes it to
/// `path` as a PNG. `draw` reports plotters' errors as text ([`draw_error`]).
pub fn render_png<F>(path: &Path, draw: F) -> Result<(), ReportError>
where
    F: FnOnce(&Area<'_>) -> Result<(), String>,
{
    ensure_font()?;
    let (w, h) = CHART_SIZE;
    let mut pixels = vec![0u8; (w as usize) * (h as usize) * 3];
    paint(&mut pixels, (w, h), draw).map_err(|message| ReportError::Draw {
        path: path.to_path_buf(),
        message,
    })?;
    write_rgb_png(&pixels, (w, h), path)
}

fn paint<F>(pixels: &mut [u8], size: (u32, u32), draw: F) -> Result<(), String>
where
    F: FnOnce(&Area<'_>) -> Result<(), String>,
{
    let root = BitMapBackend::with_buffer(pixels, size).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    draw(&root)?;
    root.present().map_err(draw_error)
}

/// Splits `root` into the [`HEADER_H`] band, with `title` drawn on its left, and
/// the area below it: `(header, body)`.
pub fn title_band<'a>(root: &Area<'a>, title: &str) -> Result<(Area<'a>, Area<'a>), String> {
    let (header, body) = root.split_vertically(HEADER_H);
    let title_style = ("sans-serif", 26).into_font().color(&TEXT_COLOR);
    header
        .draw_text(title, &title_style, (16, 14))
        .map_err(draw_error)?;
    Ok((header, body))
}

/// Tick labels.
pub fn tick_style() -> TextStyle<'static> {
    ("sans-serif", 14).into_font().color(&TEXT_COLOR)
}

/// Axis descriptions.
pub fn axis_style() -> TextStyle<'static> {
    ("sans-serif", 16).into_font().color(&TEXT_COLOR)
}

/// plotters' errors as text (its error type borrows the backend).
pub fn draw_error(err: impl std::fmt::Display) -> String {
    err.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read_rgb_png;

    #[test]
    fn a_titled_chart_is_white_with_dark_title_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.png");
        render_png(&path, |root| {
            let (_, body) = title_band(root, "a title")?;
            body.fill(&RGBColor(1, 2, 3)).map_err(draw_error)
        })
        .expect("chart");
        let img = read_rgb_png(&path).expect("read chart");
        let (w, h) = (img.width, img.height);
        assert_eq!((w, h), CHART_SIZE);
        let at = |x: u32, y: u32| img.pixel(x, y).expect("inside");
        assert_eq!(at(w - 1, 0), [255, 255, 255], "header background");
        assert_eq!(at(w / 2, h - 1), [1, 2, 3], "body");
        let dark = (0..HEADER_H)
            .flat_map(|y| (0..w / 2).map(move |x| (x, y)))
            .filter(|&(x, y)| at(x, y).iter().all(|&c| c < 100))
            .count();
        assert!(dark > 100, "no title text");
    }

    #[test]
    fn draw_errors_name_the_chart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.png");
        let err = render_png(&path, |_| Err("nope".to_owned())).expect_err("draw error");
        match err {
            ReportError::Draw { path: p, message } => {
                assert_eq!((p, message.as_str()), (path.clone(), "nope"));
            }
            other => panic!("expected a draw error, got {other}"),
        }
        assert!(!path.exists(), "nothing written after a failed draw");
    }
}
