//! The one chart font: DejaVu Sans, compiled in (`assets/fonts/`, licence beside
//! it) and drawn through plotters' `ab_glyph` renderer.
//!
//! Invariant: after [`ensure_font`] returned `Ok`, plotters' `sans-serif` family
//! (the one its axes and labels use, and every chart here) is this font, whatever
//! fonts the machine has.

use std::sync::OnceLock;

use plotters::style::{register_font, FontStyle};

use crate::ReportError;

static DEJAVU_SANS: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Registers the bundled font as plotters' `sans-serif` once per process. Call it
/// before drawing any text with plotters ([`crate::chart::render_png`] does);
/// later calls are free.
pub fn ensure_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| register_font("sans-serif", FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ReportError::Font)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_font_registers() {
        ensure_font().expect("font");
        ensure_font().expect("second call");
    }
}
