//! How figures are written in the report and the terminal summary: thousands
//! separators, fixed decimals, `–` for a missing value, `n/a` for a target that
//! cannot be judged.

use super::summary::PointSummary;

/// An integer with thousands separators: `52,345`.
pub(super) fn thousands(v: f64) -> String {
    let r = v.round();
    if !r.is_finite() {
        return "–".to_owned();
    }
    if r.abs() >= 1e18 {
        return format!("{r:.0}");
    }
    let digits = (r.abs() as u64).to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if r < 0.0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate that may be small (a per-client limit): one decimal below 100.
pub(super) fn small_rate(v: f64) -> String {
    if v.abs() < 100.0 {
        format!("{v:.1}")
    } else {
        thousands(v)
    }
}

pub(super) fn ms(v: f64) -> String {
    format!("{v:.1}")
}

pub(super) fn mib(v: f64) -> String {
    format!("{v:.1}")
}

pub(super) fn ratio_text(v: f64) -> String {
    format!("{v:.2}×")
}

/// `–` for a missing value, else `f` of it.
pub(super) fn or_dash(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "–".to_owned(), f)
}

pub(super) fn met_text(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "n/a",
    }
}

/// The rate column of a point.
pub(super) fn rate_text(p: &PointSummary) -> String {
    match (p.rate_limited, p.rate_per_client) {
        (false, _) => "full speed".to_owned(),
        (true, Some(r)) => format!(
            "half rate: {}/s per client ({} msg/s)",
            small_rate(r),
            thousands(r * p.clients as f64)
        ),
        (true, None) => "half rate".to_owned(),
    }
}

pub(super) fn latency_pair(a: Option<f64>, b: Option<f64>) -> String {
    format!("{} / {}", or_dash(a, ms), or_dash(b, ms))
}

/// The line every report carries about how its figures are made.
pub(super) fn method_line(runs: usize) -> String {
    format!(
        "Medians over {runs} run{}; ratios computed within each run, then the median.",
        if runs == 1 { "" } else { "s" }
    )
}
