//! `throughput.png` and `latency.png`: lines against the client count (log
//! scale), reference lines for the raw ceilings and the targets, a legend panel.
//! Drawn on `tally-report`'s canvas (bundled font, PNG writer, shared styles).

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use tally_report::chart::{
    axis_style, draw_error as e, render_png, tick_style, title_band, Area, GRID_COLOR, TEXT_COLOR,
};
use tally_report::create_dir;

use super::format::thousands;
use super::summary::{PointSummary, Summary};
use super::targets::{TARGET_ACK_P99_MS, TARGET_E2E_P99_MS, TARGET_SUSTAINED_PER_S};
use super::ReportError;
use crate::results::BenchResults;

/// Width of the legend panel right of the plot.
const LEGEND_W: u32 = 330;
const INGEST_COLOR: RGBColor = RGBColor(31, 119, 180);
const E2E_COLOR: RGBColor = RGBColor(255, 127, 14);
const KAFKA_COLOR: RGBColor = RGBColor(148, 103, 189);
const TXN_COLOR: RGBColor = RGBColor(140, 86, 75);
const TARGET_COLOR: RGBColor = RGBColor(127, 127, 127);
const ACK_P50_COLOR: RGBColor = RGBColor(31, 119, 180);
const ACK_P99_COLOR: RGBColor = RGBColor(44, 160, 44);
const E2E_P50_COLOR: RGBColor = RGBColor(255, 127, 14);
const E2E_P99_COLOR: RGBColor = RGBColor(214, 39, 40);

/// A line's points: (clients, value).
type Points = Vec<(f64, f64)>;

/// A chart: lines against client count, standalone markers and horizontal
/// reference lines, each with its legend label.
struct Plot {
    title: String,
    y_desc: &'static str,
    y_log: bool,
    lines: Vec<(String, RGBColor, Points)>,
    markers: Vec<(String, RGBColor, (f64, f64))>,
    hlines: Vec<(String, RGBColor, f64)>,
}

impl Plot {
    /// Keeps only the points both axes can take (clients > 0; y > 0 on a log
    /// axis), and drops empty series.
    fn drawable(mut self) -> Self {
        let x_ok = |x: f64| x.is_finite() && x > 0.0;
        let y_log = self.y_log;
        let y_ok = |y: f64| y.is_finite() && (if y_log { y > 0.0 } else { y >= 0.0 });
        for (_, _, pts) in &mut self.lines {
            pts.retain(|&(x, y)| x_ok(x) && y_ok(y));
        }
        self.lines.retain(|l| !l.2.is_empty());
        self.markers.retain(|m| x_ok(m.2 .0) && y_ok(m.2 .1));
        self.hlines.retain(|h| y_ok(h.2));
        self
    }

    /// The x range: the clients drawn, widened by 1.5× either way (log axis).
    fn x_range(&self) -> (f64, f64) {
        let xs = self
            .lines
            .iter()
            .flat_map(|l| l.2.iter().map(|p| p.0))
            .chain(self.markers.iter().map(|m| m.2 .0));
        let (lo, hi) = xs.fold((f64::INFINITY, 0.0_f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        if lo.is_finite() && hi > 0.0 {
            (lo / 1.5, hi * 1.5)
        } else {
            (1.0, 10.0)
        }
    }

    /// The y range; expects [`Plot::drawable`] to have removed what the axis cannot take.
    fn y_range(&self) -> (f64, f64) {
        let ys: Vec<f64> = self
            .lines
            .iter()
            .flat_map(|l| l.2.iter().map(|p| p.1))
            .chain(self.markers.iter().map(|m| m.2 .1))
            .chain(self.hlines.iter().map(|h| h.2))
            .collect();
        let hi = ys.iter().copied().fold(0.0_f64, f64::max);
        if self.y_log {
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            if lo.is_finite() && lo > 0.0 {
                (lo / 2.0, hi * 2.0)
            } else {
                (0.1, 1000.0)
            }
        } else if hi > 0.0 {
            (0.0, hi * 1.15)
        } else {
            (0.0, 1.0)
        }
    }
}

/// Writes `dir/throughput.png` and `dir/latency.png` (creating `dir` if needed)
/// and returns their paths.
///
/// - `throughput.png`: x = clients (log), y = msg/s; the full-speed points'
///   median ingest and end-to-end rates, and horizontal lines for the raw Kafka
///   produce and transactional medians and the 50,000 msg/s target.
/// - `latency.png`: x = clients (log), y = ms (log); the full-speed points'
///   median ACK p50/p99 and e2e p50/p99, the half-rate point's four values as
///   triangles, and the 20 ms and 1 s targets.
///
/// Values an axis cannot show (missing, non-finite, or ≤ 0 on a log axis) are
/// left out; a chart with nothing to show still gets its axes and title.
pub fn write_charts(
    results: &BenchResults,
    summary: &Summary,
    dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    create_dir(dir)?;
    let mut written = Vec::new();
    for (name, plot) in [
        ("throughput.png", throughput_plot(summary)),
        ("latency.png", latency_plot(results, summary)),
    ] {
        let path = dir.join(name);
        let plot = plot.drawable();
        render_png(&path, |root| draw_plot(&plot, root))?;
        written.push(path);
    }
    Ok(written)
}

fn series(s: &Summary, f: impl Fn(&PointSummary) -> Option<f64>) -> Vec<(f64, f64)> {
    s.full_speed()
        .filter_map(|p| f(p).map(|v| (p.clients as f64, v)))
        .collect()
}

fn runs_text(s: &Summary) -> String {
    format!(
        "median of {} run{}",
        s.runs,
        if s.runs == 1 { "" } else { "s" }
    )
}

fn throughput_plot(s: &Summary) -> Plot {
    let mut hlines = Vec::new();
    if let Some(v) = s.kafka_produce_per_s {
        hlines.push((
            format!("raw Kafka acks=all produce ({})", thousands(v)),
            KAFKA_COLOR,
            v,
        ));
    }
    if let Some(v) = s.kafka_transactional_per_s {
        hlines.push((
            format!("raw Kafka transactional ({})", thousands(v)),
            TXN_COLOR,
            v,
        ));
    }
    hlines.push((
        format!("target {} msg/s", thousands(TARGET_SUSTAINED_PER_S)),
        TARGET_COLOR,
        TARGET_SUSTAINED_PER_S,
    ));
    Plot {
        title: format!("tally throughput against clients ({})", runs_text(s)),
        y_desc: "messages/s",
        y_log: false,
        lines: vec![
            (
                "ingest (ACKed)".to_owned(),
                INGEST_COLOR,
                series(s, |p| p.ingest_per_s),
            ),
            (
                "end to end (counted exactly)".to_owned(),
                E2E_COLOR,
                series(s, |p| p.end_to_end_per_s),
            ),
        ],
        markers: Vec::new(),
        hlines,
    }
}

fn latency_plot(results: &BenchResults, s: &Summary) -> Plot {
    let mut markers = Vec::new();
    if let Some(h) = s.half_rate(results.config.half_rate_clients) {
        let x = h.clients as f64;
        let label = |what: &str| format!("{what}, half rate ({} clients)", h.clients);
        let values = [
            ("ACK p50", ACK_P50_COLOR, h.ack_p50_ms),
            ("ACK p99", ACK_P99_COLOR, h.ack_p99_ms),
            ("e2e p50", E2E_P50_COLOR, h.e2e_p50_ms),
            ("e2e p99", E2E_P99_COLOR, h.e2e_p99_ms),
        ];
        for (what, color, v) in values {
            if let Some(v) = v {
                markers.push((label(what), color, (x, v)));
            }
        }
    }
    Plot {
        title: format!("tally latency against clients ({})", runs_text(s)),
        y_desc: "ms (log scale)",
        y_log: true,
        lines: vec![
            (
                "ACK p50".to_owned(),
                ACK_P50_COLOR,
                series(s, |p| p.ack_p50_ms),
            ),
            (
                "ACK p99".to_owned(),
                ACK_P99_COLOR,
                series(s, |p| p.ack_p99_ms),
            ),
            (
                "e2e p50".to_owned(),
                E2E_P50_COLOR,
                series(s, |p| p.e2e_p50_ms),
            ),
            (
                "e2e p99".to_owned(),
                E2E_P99_COLOR,
                series(s, |p| p.e2e_p99_ms),
            ),
        ],
        markers,
        hlines: vec![
            (
                format!("target ACK p99 {} ms", TARGET_ACK_P99_MS),
                TARGET_COLOR,
                TARGET_ACK_P99_MS,
            ),
            (
                "target e2e p99 1 s".to_owned(),
                TARGET_COLOR,
                TARGET_E2E_P99_MS,
            ),
        ],
    }
}

/// Draws the chart onto `root`.
fn draw_plot(plot: &Plot, root: &Area<'_>) -> Result<(), String> {
    let (_, rest) = title_band(root, &plot.title)?;
    let width = root.dim_in_pixel().0;
    let (body, legend) = rest.split_horizontally(width.saturating_sub(LEGEND_W));
    draw_legend(&legend, plot)?;

    let (x_lo, x_hi) = plot.x_range();
    let (y_lo, y_hi) = plot.y_range();
    let x = (x_lo..x_hi).log_scale();
    if plot.y_log {
        draw_body(&body, plot, x, (y_lo..y_hi).log_scale(), (x_lo, x_hi))
    } else {
        draw_body(&body, plot, x, y_lo..y_hi, (x_lo, x_hi))
    }
}

/// Axes, grid, lines, markers and reference lines.
fn draw_body<Y>(
    area: &Area<'_>,
    plot: &Plot,
    x: impl AsRangedCoord<CoordDescType = LogCoord<f64>, Value = f64>,
    y: Y,
    (x_lo, x_hi): (f64, f64),
) -> Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .margin_left(16)
        .margin_right(16)
        .margin_bottom(12)
        .margin_top(8)
        .x_label_area_size(48)
        .y_label_area_size(90)
        .build_cartesian_2d(x, y)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("clients (log scale)")
        .y_desc(plot.y_desc)
        .label_style(tick_style())
        .axis_desc_style(axis_style())
        .light_line_style(GRID_COLOR)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(e)?;

    for (_, color, y) in &plot.hlines {
        chart
            .draw_series(DashedLineSeries::new(
                [(x_lo, *y), (x_hi, *y)],
                12,
                8,
                color.stroke_width(2),
            ))
            .map_err(e)?;
    }
    for (_, color, pts) in &plot.lines {
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(3)))
            .map_err(e)?;
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(e)?;
    }
    for (_, color, p) in &plot.markers {
        // A dark triangle under a smaller coloured one: an outlined marker.
        chart
            .draw_series([
                TriangleMarker::new(*p, 12, TEXT_COLOR.filled()),
                TriangleMarker::new(*p, 8, color.filled()),
            ])
            .map_err(e)?;
    }
    Ok(())
}

/// The legend panel: one row per drawn line, marker and reference line.
fn draw_legend(area: &Area<'_>, plot: &Plot) -> Result<(), String> {
    let style = ("sans-serif", 15).into_font().color(&TEXT_COLOR);
    let row_h = 26;
    let mut y = 24;
    let sx = 8;
    let tx = sx + 48;
    for (label, color, _) in &plot.lines {
        area.draw(&PathElement::new(
            vec![(sx, y), (sx + 36, y)],
            color.stroke_width(3),
        ))
        .map_err(e)?;
        area.draw(&Circle::new((sx + 18, y), 5, color.filled()))
            .map_err(e)?;
        area.draw_text(label, &style, (tx, y - 8)).map_err(e)?;
        y += row_h;
    }
    for (label, color, _) in &plot.markers {
        area.draw(&TriangleMarker::new((sx + 18, y), 12, TEXT_COLOR.filled()))
            .map_err(e)?;
        area.draw(&TriangleMarker::new((sx + 18, y), 8, color.filled()))
            .map_err(e)?;
        area.draw_text(label, &style, (tx, y - 8)).map_err(e)?;
        y += row_h;
    }
    for (label, color, _) in &plot.hlines {
        for dash in [0, 16, 32] {
            area.draw(&PathElement::new(
                vec![(sx + dash, y), (sx + dash + 8, y)],
                color.stroke_width(2),
            ))
            .map_err(e)?;
        }
        area.draw_text(label, &style, (tx, y - 8)).map_err(e)?;
        y += row_h;
    }
    Ok(())
}

/// A tick label on a log or linear axis: thousands separators from 10 up, else
/// up to two decimals without trailing zeros.
fn tick(v: f64) -> String {
    if v.abs() >= 10.0 {
        thousands(v)
    } else {
        let s = format!("{v:.2}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures::*;
    use crate::report::markdown::write_markdown;
    use crate::report::summary::summarize;
    use crate::report::text::summary_text;
    use tally_report::chart::CHART_SIZE;

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let bytes = std::fs::read(path).expect("read png");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        // Anything but 8-bit RGB is an error here.
        let img = tally_report::read_rgb_png(path).expect("an 8-bit RGB PNG");
        (img.width, img.height, img.pixels)
    }

    fn count(img: &(u32, u32, Vec<u8>), c: RGBColor) -> usize {
        img.2
            .chunks_exact(3)
            .filter(|p| p == &[c.0, c.1, c.2])
            .count()
    }

    #[test]
    fn charts_are_pngs_with_their_series() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = three_runs();
        let s = summarize(&r);
        let paths = write_charts(&r, &s, &dir.path().join("charts")).expect("charts");
        let names: Vec<String> = paths
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, ["throughput.png", "latency.png"]);

        let tput = decode(&paths[0]);
        assert_eq!((tput.0, tput.1), CHART_SIZE);
        for c in [INGEST_COLOR, E2E_COLOR, KAFKA_COLOR, TXN_COLOR] {
            assert!(count(&tput, c) > 300, "throughput: colour {c:?} missing");
        }
        let lat = decode(&paths[1]);
        for c in [ACK_P50_COLOR, ACK_P99_COLOR, E2E_P50_COLOR, E2E_P99_COLOR] {
            assert!(count(&lat, c) > 300, "latency: colour {c:?} missing");
        }
        // Some dark text (title, ticks, legend) is drawn.
        assert!(
            lat.2
                .chunks_exact(3)
                .filter(|p| p.iter().all(|&v| v < 80))
                .count()
                > 1000
        );
    }

    #[test]
    fn charts_survive_one_client_count_zeros_and_no_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        // One client count, a zero and a missing latency, a zero Kafka rate.
        let mut one = run(1, 0.0, [0.0; 4]);
        one.e2e.retain(|p| p.clients == 1);
        one.e2e[0].ack_p50_ms = 0.0;
        one.e2e[0].e2e_p99_ms = None;
        one.e2e[0].end_to_end_per_s = f64::NAN;
        let r = results(vec![one]);
        let s = summarize(&r);
        assert_eq!(s.ratio_to_kafka, None);
        for p in write_charts(&r, &s, dir.path()).expect("charts") {
            decode(&p);
        }
        // No runs at all.
        let r = results(Vec::new());
        let s = summarize(&r);
        for p in write_charts(&r, &s, &dir.path().join("empty")).expect("charts") {
            decode(&p);
        }
        write_markdown(&r, &s, &dir.path().join("empty")).expect("markdown");
        summary_text(&r, &s);
        // A directory that cannot be created is an error naming it.
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").expect("write");
        let err = write_charts(&r, &s, &file.join("sub")).expect_err("not a dir");
        assert!(matches!(err, ReportError::Io { .. }), "{err}");
    }

    #[test]
    fn thousands_and_ticks() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-12_345.0), "-12,345");
        assert_eq!(thousands(f64::NAN), "–");
        assert_eq!(tick(0.5), "0.5");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(20_000.0), "20,000");
    }
}
