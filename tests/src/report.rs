//! The fault-injection suite's report: per-scenario outcome, recovery times, a
//! throughput chart per scenario and one markdown summary.
//!
//! What this module guarantees:
//! - It needs no running services: it only turns [`ScenarioReport`]s into numbers,
//!   PNG files and markdown.
//! - Charts are drawn on `tally-report`'s canvas: its bundled font (DejaVu Sans,
//!   through plotters' `ab_glyph` renderer, so they work on a machine with no
//!   system fonts and no fontconfig), its PNG writer and its markdown tables.
//! - [`recovery_time`] is a pure function of the samples, defined exactly in its doc
//!   comment; the markdown report states the same definition.
//! - Every file error comes back as a [`ReportError`] naming the path; nothing here
//!   panics on IO.
//! - [`write_markdown`] writes only `report.md` and `<name>.png` per scenario inside
//!   the directory it is given, and refuses scenario names that are not plain file
//!   names (or that two scenarios share) rather than write anywhere else.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use tally_report::chart::{
    axis_style, draw_error, render_png, tick_style, title_band, Area, GRID_COLOR, TEXT_COLOR,
};
use tally_report::{cell, check_file_name, create_dir, write_file, Align, Table};

/// Errors writing charts and reports: `tally-report`'s (scenario names that are
/// not plain file names, or that two scenarios share, included).
pub use tally_report::ReportError;

/// One scenario's outcome. Serializable (JSON via serde) so a harness can save it
/// per scenario and a later step can gather the saved reports into one markdown
/// report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// Short name, also the chart's file name: e.g. `03-counter-kill`. Letters,
    /// digits, `.`, `-` and `_` only, not starting with `.`.
    pub name: String,
    /// Human title, e.g. `counter kill -9, 3 rounds`; the chart's title.
    pub title: String,
    /// Messages sent, resends included.
    pub sent: u64,
    /// Messages ACKed.
    pub acked: u64,
    /// Messages the run should count.
    pub expected: u64,
    /// Whether `tally verify` said the counts are exact.
    pub exact: bool,
    /// The first mismatches (`tally verify`'s lines); empty if exact.
    pub mismatches: Vec<String>,
    /// Duplicates the counters and aggregators skipped.
    pub duplicates_absorbed: u64,
    /// `ERR unavailable` answers the load's clients got (each one a write whose
    /// outcome the producer could not know: the client reconnected and resent).
    #[serde(default)]
    pub err_unavailable: u64,
    /// The same answers by the producer's reason (`redis: timed out`, ...).
    #[serde(default)]
    pub unavailable_reasons: std::collections::BTreeMap<String, u64>,
    /// Throughput over time, in time order.
    pub samples: Vec<Sample>,
    /// When faults were injected and healed.
    pub faults: Vec<FaultMark>,
    /// How long the scenario ran.
    pub elapsed: Duration,
    /// What the scenario measured beside the counts (latencies in a fault, what
    /// an isolated node accepted), one line each, shown under its chart.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Throughput at one moment of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the scenario started.
    pub at_s: f64,
    /// Ingest rate: messages ACKed per second.
    pub acked_per_s: f64,
    /// Counted rate: messages applied by the counters per second.
    pub counted_per_s: f64,
}

/// Whether a [`FaultMark`] breaks something or repairs it.
///
/// Recovery is measured from [`FaultKind::Inject`] marks only; heals are drawn on
/// the chart but are not faults to recover from. The kind is stated by whoever
/// records the mark (the harness knows what it just did), not guessed from the
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultKind {
    /// Something was broken: a kill, a pause, a stop, a partition.
    Inject,
    /// Something was repaired: a restart, a resume, a rejoin.
    Heal,
}

/// A fault injected or healed at one moment of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultMark {
    /// Seconds since the scenario started.
    pub at_s: f64,
    /// What happened, e.g. `kill -9 counter-1` or `restart counter-1`.
    pub label: String,
    /// Whether it broke or repaired something.
    pub kind: FaultKind,
}

impl FaultMark {
    /// A fault injected at `at_s`.
    pub fn inject(at_s: f64, label: impl Into<String>) -> Self {
        Self {
            at_s,
            label: label.into(),
            kind: FaultKind::Inject,
        }
    }

    /// A fault healed at `at_s`.
    pub fn heal(at_s: f64, label: impl Into<String>) -> Self {
        Self {
            at_s,
            label: label.into(),
            kind: FaultKind::Heal,
        }
    }
}

/// Which throughput series to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// [`Sample::acked_per_s`]: ingest.
    Acked,
    /// [`Sample::counted_per_s`]: applied by the counters.
    Counted,
}

impl Series {
    /// Both series, in the order the report shows them.
    pub const ALL: [Series; 2] = [Series::Acked, Series::Counted];

    /// The series' value in a sample.
    pub fn of(self, sample: &Sample) -> f64 {
        match self {
            Series::Acked => sample.acked_per_s,
            Series::Counted => sample.counted_per_s,
        }
    }

    /// Its name in the chart and the report.
    pub fn name(self) -> &'static str {
        match self {
            Series::Acked => "ACKed",
            Series::Counted => "counted",
        }
    }
}

/// How long the baseline before a fault is, in seconds.
pub const BASELINE_WINDOW_S: f64 = 10.0;
/// The fraction of the baseline that counts as recovered.
pub const RECOVERED_FRACTION: f64 = 0.8;
/// How many consecutive samples the recovery test looks at (see [`recovery`]).
pub const RECOVERY_WINDOW: usize = 3;

/// The outcome of [`recovery`] for one fault.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recovery {
    /// Back at [`RECOVERED_FRACTION`] of the baseline this many seconds after the fault.
    Recovered(f64),
    /// Never back within the samples.
    NotRecovered,
    /// No sample in the [`BASELINE_WINDOW_S`] before the fault, or a baseline of 0.
    NoBaseline,
}

impl Recovery {
    /// The seconds to recovery, if it recovered.
    pub fn seconds(self) -> Option<f64> {
        match self {
            Recovery::Recovered(s) => Some(s),
            Recovery::NotRecovered | Recovery::NoBaseline => None,
        }
    }

    /// How bad it is, for picking the worst: no baseline < recovered (sooner is
    /// better) < never recovered.
    fn badness(self) -> (u8, f64) {
        match self {
            Recovery::NoBaseline => (0, 0.0),
            Recovery::Recovered(s) => (1, s),
            Recovery::NotRecovered => (2, 0.0),
        }
    }
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recovery::Recovered(s) => write!(f, "{s:.1} s"),
            Recovery::NotRecovered => f.write_str("never"),
            Recovery::NoBaseline => f.write_str("n/a"),
        }
    }
}

/// Time from a fault until `series` is back at 80% of its throughput before it, in
/// seconds; `None` if it never is within the samples or there is no baseline.
/// Exactly what it measures is in [`recovery`], which also tells the two `None`s
/// apart.
pub fn recovery_time(samples: &[Sample], fault_at_s: f64, series: Series) -> Option<f64> {
    recovery(samples, fault_at_s, series).seconds()
}

/// Recovery of `series` from a fault at `fault_at_s`, defined as follows.
///
/// - **Baseline**: the mean of the series over the samples with
///   `fault_at_s - 10 <= at_s < fault_at_s` ([`BASELINE_WINDOW_S`]). No such sample,
///   or a mean that is not above 0, gives [`Recovery::NoBaseline`].
/// - **Threshold**: 80% of the baseline ([`RECOVERED_FRACTION`]).
/// - **Recovered at** the first sample `s` with `at_s >= fault_at_s` such that `s`
///   itself is at or above the threshold *and* the median of `s` and the two samples
///   after it ([`RECOVERY_WINDOW`] = 3) is too, i.e. at least two of those three
///   are back. One isolated spike (a burst between stalls) therefore does not count
///   as recovered, and one isolated dip right after the recovery does not delay it.
///   The result is `s.at_s - fault_at_s`.
/// - A candidate without two samples after it cannot be confirmed, so a recovery in
///   the last two samples is [`Recovery::NotRecovered`], as is one that never comes.
///
/// Samples may come in any order (they are sorted by time here); samples with a
/// non-finite time or value are ignored. A fault that never dented the throughput
/// recovers at the first sample after it.
pub fn recovery(samples: &[Sample], fault_at_s: f64, series: Series) -> Recovery {
    let mut points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.at_s, series.of(s)))
        .filter(|(t, v)| t.is_finite() && v.is_finite())
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));

    let baseline: Vec<f64> = points
        .iter()
        .filter(|(t, _)| *t >= fault_at_s - BASELINE_WINDOW_S && *t < fault_at_s)
        .map(|(_, v)| *v)
        .collect();
    if baseline.is_empty() {
        return Recovery::NoBaseline;
    }
    let mean = baseline.iter().sum::<f64>() / baseline.len() as f64;
    if mean.is_nan() || mean <= 0.0 {
        return Recovery::NoBaseline;
    }
    let threshold = RECOVERED_FRACTION * mean;

    let after: Vec<(f64, f64)> = points
        .into_iter()
        .filter(|(t, _)| *t >= fault_at_s)
        .collect();
    for window in after.windows(RECOVERY_WINDOW) {
        let (at, first) = window[0];
        let back = window.iter().filter(|(_, v)| *v >= threshold).count();
        // Median of 3 >= threshold <=> at least 2 of the 3 are.
        if first >= threshold && back * 2 > RECOVERY_WINDOW {
            return Recovery::Recovered(at - fault_at_s);
        }
    }
    Recovery::NotRecovered
}

/// The worst recovery of `series` over a scenario's injected faults
/// ([`FaultKind::Inject`]; heals are not faults), with the fault it belongs to.
///
/// Worst means: never recovered, else the longest recovery, else (every fault
/// lacking a baseline) [`Recovery::NoBaseline`]. Among equals the earliest fault
/// wins. `None` if the scenario injected no fault.
pub fn worst_recovery(report: &ScenarioReport, series: Series) -> Option<(&FaultMark, Recovery)> {
    let mut worst: Option<(&FaultMark, Recovery)> = None;
    for fault in report.faults.iter().filter(|f| f.kind == FaultKind::Inject) {
        let r = recovery(&report.samples, fault.at_s, series);
        let worse = match worst {
            None => true,
            Some((_, w)) => {
                let (a, b) = (r.badness(), w.badness());
                a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
            }
        };
        if worse {
            worst = Some((fault, r));
        }
    }
    worst
}

const ACKED_COLOR: RGBColor = RGBColor(31, 119, 180);
const COUNTED_COLOR: RGBColor = RGBColor(255, 127, 14);
const INJECT_COLOR: RGBColor = RGBColor(200, 30, 30);
const HEAL_COLOR: RGBColor = RGBColor(30, 140, 60);

fn series_color(series: Series) -> RGBColor {
    match series {
        Series::Acked => ACKED_COLOR,
        Series::Counted => COUNTED_COLOR,
    }
}

/// Writes a PNG chart of both throughput series over time to `path`: title = the
/// scenario's title, x = seconds since the scenario started, y = messages/s, a
/// legend, and each fault as a vertical line with its label (injected faults red,
/// heals green). Samples with a non-finite time or value are left out.
pub fn write_chart(report: &ScenarioReport, path: &Path) -> Result<(), ReportError> {
    render_png(path, |root| draw_chart(report, root))
}

/// Draws the chart onto `root`; plotters' errors come back as text.
fn draw_chart(report: &ScenarioReport, root: &Area<'_>) -> Result<(), String> {
    let size = root.dim_in_pixel();
    let samples: Vec<&Sample> = report
        .samples
        .iter()
        .filter(|s| s.at_s.is_finite() && s.acked_per_s.is_finite() && s.counted_per_s.is_finite())
        .collect();
    let faults: Vec<&FaultMark> = report
        .faults
        .iter()
        .filter(|f| f.at_s.is_finite())
        .collect();
    let x_max = samples
        .iter()
        .map(|s| s.at_s)
        .chain(faults.iter().map(|f| f.at_s))
        .chain(std::iter::once(report.elapsed.as_secs_f64()))
        .fold(1.0_f64, f64::max);
    let x_min = samples
        .iter()
        .map(|s| s.at_s)
        .chain(faults.iter().map(|f| f.at_s))
        .fold(0.0_f64, f64::min);
    let peak = samples
        .iter()
        .map(|s| s.acked_per_s.max(s.counted_per_s))
        .fold(0.0_f64, f64::max);
    // Headroom above the peak for the fault labels.
    let y_max = if peak > 0.0 { peak * 1.3 } else { 1.0 };

    let e = |e: &dyn std::fmt::Display| draw_error(e);
    // Header: the title on the left, the legend on the right.
    let (header, body) = title_band(root, &report.title)?;
    let legend_style = ("sans-serif", 17).into_font().color(&TEXT_COLOR);
    let mut x = size.0 as i32 - 16;
    for series in Series::ALL.iter().rev() {
        let label = format!("{} messages/s", series.name());
        let (tw, th) = header
            .estimate_text_size(&label, &legend_style)
            .map_err(|x| e(&x))?;
        x -= tw as i32;
        header
            .draw_text(&label, &legend_style, (x, 20))
            .map_err(|x| e(&x))?;
        let y = 20 + th as i32 / 2;
        header
            .draw(&PathElement::new(
                vec![(x - 36, y), (x - 8, y)],
                series_color(*series).stroke_width(3),
            ))
            .map_err(|x| e(&x))?;
        x -= 36 + 28;
    }

    let mut chart = ChartBuilder::on(&body)
        .margin_left(16)
        .margin_right(24)
        .margin_bottom(12)
        .margin_top(4)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("seconds since scenario start")
        .y_desc("messages/s")
        .label_style(tick_style())
        .axis_desc_style(axis_style())
        .light_line_style(GRID_COLOR)
        .x_label_formatter(&|v| tick(*v, x_max - x_min))
        .y_label_formatter(&|v| tick(*v, y_max))
        .draw()
        .map_err(|x| e(&x))?;

    for series in Series::ALL {
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.at_s, series.of(s))),
                series_color(series).stroke_width(2),
            ))
            .map_err(|x| e(&x))?;
    }

    // Faults: a vertical line each; labels in rows from the top of the plot, each
    // in the first row where it does not overlap the label before it.
    let label_style = ("sans-serif", 14).into_font();
    let (x_range, y_range) = chart.plotting_area().get_pixel_range();
    let mut row_ends: Vec<i32> = Vec::new();
    let mut sorted = faults.clone();
    sorted.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    for fault in sorted {
        let color = match fault.kind {
            FaultKind::Inject => INJECT_COLOR,
            FaultKind::Heal => HEAL_COLOR,
        };
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(fault.at_s, 0.0), (fault.at_s, y_max)],
                color.stroke_width(2),
            )))
            .map_err(|x| e(&x))?;
        if fault.label.is_empty() {
            continue;
        }
        let style = label_style.color(&color);
        let (tw, th) = root
            .estimate_text_size(&fault.label, &style)
            .map_err(|x| e(&x))?;
        let (lx, _) = chart.backend_coord(&(fault.at_s, y_max));
        // Right of the line, unless that runs off the plot: then left of it.
        let start = if lx + 5 + tw as i32 <= x_range.end {
            lx + 5
        } else {
            (lx - 5 - tw as i32).max(x_range.start)
        };
        let end = start + tw as i32;
        let row = match row_ends.iter().position(|&r| r + 8 <= start) {
            Some(row) => row,
            None => {
                row_ends.push(i32::MIN);
                row_ends.len() - 1
            }
        };
        row_ends[row] = end;
        let y = y_range.start + 4 + row as i32 * (th as i32 + 6);
        // A white box behind the label keeps it readable over lines and grid.
        root.draw(&Rectangle::new(
            [(start - 2, y - 1), (end + 2, y + th as i32 + 1)],
            WHITE.mix(0.85).filled(),
        ))
        .map_err(|x| e(&x))?;
        root.draw_text(&fault.label, &style, (start, y))
            .map_err(|x| e(&x))?;
    }
    Ok(())
}

/// An axis tick label: whole numbers on an axis spanning 10 or more, else one decimal.
fn tick(value: f64, span: f64) -> String {
    if span >= 10.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// A worst-recovery table cell.
fn recovery_cell(report: &ScenarioReport, series: Series) -> String {
    match worst_recovery(report, series) {
        None => "–".to_owned(),
        Some((_, r)) => r.to_string(),
    }
}

/// Writes `dir/report.md` (creating `dir` if needed) and, through [`write_chart`],
/// `dir/<name>.png` for every scenario; returns the path of `report.md`.
///
/// The report has one table row per scenario, in the order given: name, title,
/// messages sent / ACKed / expected, exact (`yes` or `NO`), duplicates absorbed,
/// `ERR unavailable` answers (by reason under the scenario's chart), the worst recovery time per series ([`worst_recovery`]; `never`, `n/a` without a
/// baseline, `–` without an injected fault) and elapsed time. Then per scenario its
/// chart, each fault's recovery, and its mismatches if any.
pub fn write_markdown(reports: &[ScenarioReport], dir: &Path) -> Result<PathBuf, ReportError> {
    let mut names = BTreeSet::new();
    for r in reports {
        check_file_name(&r.name)?;
        if !names.insert(r.name.as_str()) {
            return Err(ReportError::DuplicateName(r.name.clone()));
        }
    }
    create_dir(dir)?;

    let mut md = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(md, "# Fault-injection report\n");
    let mut table = Table::new()
        .column("scenario", Align::Left)
        .column("title", Align::Left)
        .column("sent", Align::Right)
        .column("ACKed", Align::Right)
        .column("expected", Align::Right)
        .column("exact", Align::Center)
        .column("duplicates absorbed", Align::Right)
        .column("ERR unavailable", Align::Right)
        .column("recovery (ACKed)", Align::Right)
        .column("recovery (counted)", Align::Right)
        .column("elapsed", Align::Right);
    for r in reports {
        table.row([
            cell(&r.name),
            cell(&r.title),
            r.sent.to_string(),
            r.acked.to_string(),
            r.expected.to_string(),
            (if r.exact { "yes" } else { "NO" }).to_owned(),
            r.duplicates_absorbed.to_string(),
            r.err_unavailable.to_string(),
            recovery_cell(r, Series::Acked),
            recovery_cell(r, Series::Counted),
            format!("{:.1} s", r.elapsed.as_secs_f64()),
        ]);
    }
    table.write_to(&mut md);
    let _ = writeln!(
        md,
        "\nRecovery: per series, the worst over the scenario's injected faults of the time \
         from the fault until the throughput is back at ≥ 80% of its mean over the 10 s \
         before it (that sample and at least one of the two after it at ≥ 80%, so a lone \
         spike does not count). `never`: not back before the end of the samples; `n/a`: \
         no throughput in the 10 s before the fault; `–`: no fault injected."
    );

    for r in reports {
        let chart = format!("{}.png", r.name);
        write_chart(r, &dir.join(&chart))?;
        let _ = writeln!(md, "\n## {}: {}\n", r.name, r.title.replace('\n', " "));
        let _ = writeln!(md, "![{}]({chart})\n", cell(&r.title));
        if !r.faults.is_empty() {
            let mut faults = Table::new()
                .column("at", Align::Right)
                .column("fault", Align::Left)
                .column("recovery (ACKed)", Align::Right)
                .column("recovery (counted)", Align::Right);
            for f in &r.faults {
                let (acked, counted) = match f.kind {
                    FaultKind::Inject => (
                        recovery(&r.samples, f.at_s, Series::Acked).to_string(),
                        recovery(&r.samples, f.at_s, Series::Counted).to_string(),
                    ),
                    FaultKind::Heal => ("(heal)".to_owned(), "(heal)".to_owned()),
                };
                faults.row([format!("{:.1} s", f.at_s), cell(&f.label), acked, counted]);
            }
            faults.write_to(&mut md);
            md.push('\n');
        }
        for note in &r.notes {
            let _ = writeln!(md, "- {}", note.replace('\n', " "));
        }
        if !r.notes.is_empty() {
            md.push('\n');
        }
        if !r.unavailable_reasons.is_empty() {
            let reasons: Vec<String> = r
                .unavailable_reasons
                .iter()
                .map(|(reason, n)| format!("`{}` × {n}", reason.replace('`', "'")))
                .collect();
            let _ = writeln!(md, "`ERR unavailable` by reason: {}.\n", reasons.join(", "));
        }
        if r.exact {
            let _ = writeln!(md, "Counts exact.");
        } else if r.mismatches.is_empty() {
            let _ = writeln!(md, "Counts **not exact** (no mismatch lines recorded).");
        } else {
            let _ = writeln!(md, "Counts **not exact**. First mismatches:\n\n```text");
            for m in &r.mismatches {
                let _ = writeln!(md, "{}", m.replace("```", "'''"));
            }
            let _ = writeln!(md, "```");
        }
    }

    let path = dir.join("report.md");
    write_file(&path, &md)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_report::chart::{CHART_SIZE, HEADER_H};

    /// Samples every second for `0..n` s with the ACKed rate `acked(t)` and the
    /// counted rate `counted(t)`.
    fn series(n: usize, acked: impl Fn(f64) -> f64, counted: impl Fn(f64) -> f64) -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let t = i as f64;
                Sample {
                    at_s: t,
                    acked_per_s: acked(t),
                    counted_per_s: counted(t),
                }
            })
            .collect()
    }

    /// 100/s, down to 0 from 11 s, back to 100/s from `back_at`.
    fn dip(back_at: f64) -> impl Fn(f64) -> f64 {
        move |t| {
            if (11.0..back_at).contains(&t) {
                0.0
            } else {
                100.0
            }
        }
    }

    fn scenario(name: &str, exact: bool) -> ScenarioReport {
        ScenarioReport {
            name: name.to_owned(),
            title: format!("{name}: counter kill -9, 3 rounds"),
            sent: 1_200,
            acked: 1_150,
            expected: 1_150,
            exact,
            mismatches: if exact {
                Vec::new()
            } else {
                vec!["client c-7: counted 41, sent 42".to_owned()]
            },
            duplicates_absorbed: 17,
            err_unavailable: 3,
            unavailable_reasons: [("redis: timed out".to_owned(), 3)].into(),
            samples: series(40, dip(15.0), dip(18.0)),
            faults: vec![
                FaultMark::inject(10.5, "kill -9 counter-1"),
                FaultMark::heal(13.0, "restart counter-1"),
            ],
            elapsed: Duration::from_secs(40),
            notes: vec!["ACK p99 during the fault: 812 ms".to_owned()],
        }
    }

    #[test]
    fn recovers_when_back_at_80_percent() {
        let samples = series(30, dip(15.0), dip(18.0));
        assert_eq!(recovery_time(&samples, 10.5, Series::Acked), Some(4.5));
        assert_eq!(recovery_time(&samples, 10.5, Series::Counted), Some(7.5));
        // 80% of the baseline is enough, 79% is not.
        let samples = series(30, |t| if t < 11.0 { 100.0 } else { 80.0 }, |_| 0.0);
        assert_eq!(recovery_time(&samples, 10.5, Series::Acked), Some(0.5));
        let samples = series(30, |t| if t < 11.0 { 100.0 } else { 79.0 }, |_| 0.0);
        assert_eq!(recovery_time(&samples, 10.5, Series::Acked), None);
    }

    #[test]
    fn never_recovering_is_none() {
        let samples = series(30, |t| if t < 11.0 { 100.0 } else { 50.0 }, |_| 0.0);
        assert_eq!(
            recovery(&samples, 10.5, Series::Acked),
            Recovery::NotRecovered
        );
        assert_eq!(recovery_time(&samples, 10.5, Series::Acked), None);
        // Back only in the last two samples: cannot be confirmed.
        let samples = series(30, dip(28.0), |_| 0.0);
        assert_eq!(
            recovery(&samples, 10.5, Series::Acked),
            Recovery::NotRecovered
        );
        // Back in the last three: confirmed.
        let samples = series(30, dip(27.0), |_| 0.0);
        assert_eq!(recovery_time(&samples, 10.5, Series::Acked), Some(16.5));
    }

    #[test]
    fn no_baseline_is_none() {
        let samples = series(30, dip(15.0), |_| 0.0);
        // Nothing before the fault.
        assert_eq!(recovery(&samples, 0.0, Series::Acked), Recovery::NoBaseline);
        assert_eq!(recovery_time(&samples, 0.0, Series::Acked), None);
        // Only zeros before the fault (counted series is all zero).
        assert_eq!(
            recovery(&samples, 10.5, Series::Counted),
            Recovery::NoBaseline
        );
        // Samples older than 10 s before the fault are not a baseline.
        let mut late = series(5, |_| 100.0, |_| 100.0);
        late.extend(series(40, |_| 0.0, |_| 0.0).into_iter().skip(5));
        assert_eq!(recovery(&late, 20.0, Series::Acked), Recovery::NoBaseline);
    }

    #[test]
    fn a_noise_spike_is_not_recovery() {
        // Down from 11 s, one burst of 300/s at 12 s, back for good at 16 s.
        let acked = |t: f64| {
            if t == 12.0 {
                300.0
            } else if (11.0..16.0).contains(&t) {
                0.0
            } else {
                100.0
            }
        };
        let samples = series(30, acked, |_| 0.0);
        assert_eq!(recovery_time(&samples, 10.5, Series::Acked), Some(5.5));
        // Whereas one dip right after the recovery does not delay it.
        let acked = |t: f64| {
            if t == 16.0 {
                10.0
            } else if (11.0..15.0).contains(&t) {
                0.0
            } else {
                100.0
            }
        };
        let samples = series(30, acked, |_| 0.0);
        assert_eq!(recovery_time(&samples, 10.5, Series::Acked), Some(4.5));
    }

    #[test]
    fn samples_out_of_order_are_sorted() {
        let mut samples = series(30, dip(15.0), |_| 0.0);
        samples.reverse();
        assert_eq!(recovery_time(&samples, 10.5, Series::Acked), Some(4.5));
    }

    #[test]
    fn worst_recovery_ignores_heals_and_prefers_never() {
        let mut r = scenario("s", true);
        r.samples = series(
            60,
            |t| {
                if (11.0..15.0).contains(&t) || (31.0..38.0).contains(&t) {
                    0.0
                } else {
                    100.0
                }
            },
            |_| 100.0,
        );
        r.faults = vec![
            FaultMark::inject(10.5, "kill -9 counter-1"),
            FaultMark::heal(12.0, "restart counter-1"),
            FaultMark::inject(30.5, "kill -9 counter-2"),
            FaultMark::heal(32.0, "restart counter-2"),
        ];
        let (fault, rec) = worst_recovery(&r, Series::Acked).expect("a fault");
        assert_eq!(fault.label, "kill -9 counter-2");
        assert_eq!(rec, Recovery::Recovered(7.5));
        // A heal right after a long outage would have a 0 baseline; it is ignored,
        // and an unrecovered fault is worst of all.
        r.faults.push(FaultMark::inject(55.5, "pause broker-1"));
        r.samples
            .iter_mut()
            .filter(|s| s.at_s > 55.0)
            .for_each(|s| s.acked_per_s = 0.0);
        let (fault, rec) = worst_recovery(&r, Series::Acked).expect("a fault");
        assert_eq!(
            (fault.label.as_str(), rec),
            ("pause broker-1", Recovery::NotRecovered)
        );
        r.faults.retain(|f| f.kind == FaultKind::Heal);
        assert_eq!(worst_recovery(&r, Series::Acked), None);
    }

    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let bytes = std::fs::read(path).expect("read png");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert!(bytes.len() > 10_000, "PNG only {} bytes", bytes.len());
        // Anything but 8-bit RGB is an error here.
        let img = tally_report::read_rgb_png(path).expect("an 8-bit RGB PNG");
        (img.width, img.height, img.pixels)
    }

    fn pixel(img: &(u32, u32, Vec<u8>), x: u32, y: u32) -> [u8; 3] {
        let i = ((y * img.0 + x) * 3) as usize;
        [img.2[i], img.2[i + 1], img.2[i + 2]]
    }

    fn count(
        img: &(u32, u32, Vec<u8>),
        area: (u32, u32, u32, u32),
        want: impl Fn([u8; 3]) -> bool,
    ) -> usize {
        let (x0, y0, x1, y1) = area;
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| want(pixel(img, x, y)))
            .count()
    }

    #[test]
    fn chart_is_a_png_with_lines_and_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = scenario("03-counter-kill", true);
        let path = dir.path().join("chart.png");
        write_chart(&report, &path).expect("chart");
        let img = decode(&path);
        assert_eq!((img.0, img.1), CHART_SIZE);
        let all = (0, 0, img.0, img.1);
        let is = |c: RGBColor| move |p: [u8; 3]| p == [c.0, c.1, c.2];
        // Both series and both kinds of fault line are drawn.
        assert!(
            count(&img, all, is(ACKED_COLOR)) > 500,
            "ACKed line missing"
        );
        assert!(
            count(&img, all, is(COUNTED_COLOR)) > 500,
            "counted line missing"
        );
        assert!(
            count(&img, all, is(INJECT_COLOR)) > 500,
            "fault line missing"
        );
        assert!(count(&img, all, is(HEAL_COLOR)) > 500, "heal line missing");

        // Text: the title band holds dark, anti-aliased glyph pixels where the
        // title goes, and none without a title.
        let title_band = (0, 0, img.0 / 2, HEADER_H);
        let dark = |p: [u8; 3]| p.iter().all(|&c| c < 100);
        let grey = |p: [u8; 3]| p[0] == p[1] && p[1] == p[2] && (100..230).contains(&p[0]);
        assert!(count(&img, title_band, dark) > 300, "no title text");
        assert!(count(&img, title_band, grey) > 50, "title not anti-aliased");

        let mut untitled = report.clone();
        untitled.title.clear();
        untitled.faults.clear();
        let path2 = dir.path().join("untitled.png");
        write_chart(&untitled, &path2).expect("chart");
        let img2 = decode(&path2);
        assert_eq!(count(&img2, title_band, dark), 0, "title band not empty");
        // The fault labels are gone too: the red and green are only in labels and
        // lines, so none of either is left.
        assert_eq!(count(&img2, all, is(INJECT_COLOR)), 0);
        assert_eq!(
            count(&img2, all, |p| p[0] > 150 && p[1] < 80 && p[2] < 80),
            0
        );
    }

    #[test]
    fn chart_of_an_empty_scenario_and_a_bad_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut empty = scenario("empty", true);
        empty.samples.clear();
        empty.faults.clear();
        empty.elapsed = Duration::ZERO;
        write_chart(&empty, &dir.path().join("empty.png")).expect("empty chart");
        decode(&dir.path().join("empty.png"));
        let err = write_chart(&empty, &dir.path().join("no/such/dir/x.png"))
            .expect_err("missing directory");
        assert!(matches!(err, ReportError::Io { .. }), "{err}");
    }

    #[test]
    fn markdown_has_a_row_per_scenario_and_no_for_inexact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("results");
        let reports = vec![
            scenario("03-counter-kill", true),
            scenario("07-broker-bounce", false),
        ];
        let path = write_markdown(&reports, &out).expect("report");
        assert_eq!(path, out.join("report.md"));
        let md = std::fs::read_to_string(&path).expect("read report");

        let rows: Vec<Vec<&str>> = md
            .lines()
            .take_while(|l| !l.starts_with("Recovery:"))
            .filter(|l| l.starts_with("| ") && !l.starts_with("| scenario"))
            .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
            .collect();
        assert_eq!(rows.len(), 2, "{md}");
        assert_eq!(rows[0][0], "03-counter-kill");
        assert_eq!(rows[1][0], "07-broker-bounce");
        assert_eq!(&rows[0][2..8], ["1200", "1150", "1150", "yes", "17", "3"]);
        assert_eq!(rows[1][5], "NO");
        assert_eq!(&rows[0][8..], ["4.5 s", "7.5 s", "40.0 s"]);
        assert!(
            md.contains("`ERR unavailable` by reason: `redis: timed out` × 3."),
            "{md}"
        );
        assert!(md.contains("- ACK p99 during the fault: 812 ms"), "{md}");

        for r in &reports {
            assert!(md.contains(&format!("]({}.png)", r.name)), "{md}");
            decode(&out.join(format!("{}.png", r.name)));
        }
        assert!(md.contains("client c-7: counted 41, sent 42"), "{md}");
        assert_eq!(md.matches("not exact").count(), 1, "{md}");
    }

    #[test]
    fn report_round_trips_through_json() {
        let report = scenario("03-counter-kill", false);
        let json = serde_json::to_string(&report).expect("serialize");
        let back: ScenarioReport = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, report);
    }

    #[test]
    fn markdown_refuses_names_that_are_not_file_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["../escape", "", ".hidden", "a/b"] {
            let err = write_markdown(&[scenario(name, true)], dir.path()).expect_err(name);
            assert!(matches!(err, ReportError::InvalidName(_)), "{err}");
        }
        let err = write_markdown(&[scenario("a", true), scenario("a", false)], dir.path())
            .expect_err("duplicate");
        assert!(matches!(err, ReportError::DuplicateName(_)), "{err}");
        assert!(!dir.path().join("report.md").exists());
    }
}
