//! `chaos-report DIR`: collects the scenario reports (`*.json`) the fault suite
//! wrote into DIR and writes `DIR/report.md` with the table and the charts.

use std::path::PathBuf;
use std::process::ExitCode;

use tally_tests::report::{write_markdown, ScenarioReport};

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: chaos-report DIR");
        return ExitCode::from(2);
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("chaos-report: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    let mut reports: Vec<ScenarioReport> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(report) => reports.push(report),
            Err(e) => eprintln!("chaos-report: skipping {}: {e}", path.display()),
        }
    }
    if reports.is_empty() {
        eprintln!("chaos-report: no scenario report in {}", dir.display());
        return ExitCode::from(1);
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    match write_markdown(&reports, &dir) {
        Ok(path) => {
            if let Ok(text) = std::fs::read_to_string(&path) {
                for line in text.lines().take_while(|l| !l.starts_with("## ")) {
                    println!("{line}");
                }
            }
            println!("report: {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chaos-report: {e}");
            ExitCode::from(1)
        }
    }
}
