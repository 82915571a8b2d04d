//! CPU time and peak memory of processes over a measured interval, from `/proc`.
//!
//! CPU is `utime + stime` of the whole process (all threads) at the end minus at
//! the start, for a broker or a Redis node plus its reaped children's
//! (`cutime + cstime`: a Redis node's AOF rewrites run in forked children, about
//! a twelfth of its CPU under the benchmark's load; the load generator's children
//! are the services, measured on their own); the peak RSS is the highest `VmRSS` of samples taken every
//! [`SAMPLE_EVERY`] (the kernel's `VmHWM` would be the peak since the process
//! started, which for a broker includes earlier runs). A process that exits
//! during the interval keeps its last reading.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::results::ProcessCost;

/// How often RSS is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`); 100 on
/// every Linux architecture tally runs on.
const TICKS_PER_S: f64 = 100.0;

/// A process to watch.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Shown name (`tally-producer`, `kafka-1`, ...).
    pub name: String,
    /// What it is part of (`tally`, `load`, `kafka`, `redis`).
    pub role: String,
    /// Its pid.
    pub pid: u32,
}

impl Watched {
    /// Whether its reaped children's CPU is its own: a stack node's forks are;
    /// the load generator's children are the tally services, watched on their own.
    fn owns_children(&self) -> bool {
        self.role == "kafka" || self.role == "redis"
    }
}

/// CPU ticks of `pid`, with its reaped children's if `children`, if it is alive.
fn cpu_ticks(pid: u32, children: bool) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_ticks(&stat, children)
}

/// `utime + stime` of one `/proc/<pid>/stat` line, plus `cutime + cstime` if
/// `children`.
fn stat_cpu_ticks(stat: &str, children: bool) -> Option<u64> {
    // The name (field 2) may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime, stime, cutime and cstime are fields 14–17.
    let counted = if children { 11..15 } else { 11..13 };
    fields
        .get(counted)?
        .iter()
        .try_fold(0u64, |sum, field| Some(sum + field.parse::<u64>().ok()?))
}

/// Resident set size of `pid` in KiB, if it is alive.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[derive(Debug, Clone)]
struct Reading {
    start_ticks: Option<u64>,
    last_ticks: Option<u64>,
    peak_rss_kib: u64,
}

/// Watches processes from [`Sampler::start`] until [`Sampler::finish`].
pub struct Sampler {
    watched: Vec<Watched>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Vec<Reading>>,
}

impl Sampler {
    /// Takes the start readings and samples until finished.
    pub fn start(watched: Vec<Watched>) -> Self {
        let mut readings: Vec<Reading> = watched
            .iter()
            .map(|w| {
                let ticks = cpu_ticks(w.pid, w.owns_children());
                Reading {
                    start_ticks: ticks,
                    last_ticks: ticks,
                    peak_rss_kib: rss_kib(w.pid).unwrap_or(0),
                }
            })
            .collect();
        let pids: Vec<(u32, bool)> = watched.iter().map(|w| (w.pid, w.owns_children())).collect();
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                for (reading, &(pid, children)) in readings.iter_mut().zip(&pids) {
                    if let Some(t) = cpu_ticks(pid, children) {
                        reading.last_ticks = Some(t);
                    }
                    if let Some(r) = rss_kib(pid) {
                        reading.peak_rss_kib = reading.peak_rss_kib.max(r);
                    }
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
            // One last reading at the end of the interval.
            for (reading, &(pid, children)) in readings.iter_mut().zip(&pids) {
                if let Some(t) = cpu_ticks(pid, children) {
                    reading.last_ticks = Some(t);
                }
            }
            readings
        });
        Self {
            watched,
            stop: Some(stop),
            task,
        }
    }

    /// Ends the interval; `messages` turns CPU into CPU per message.
    pub async fn finish(mut self, messages: u64) -> Vec<ProcessCost> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let readings = (&mut self.task).await.unwrap_or_default();
        self.watched
            .iter()
            .zip(readings)
            .map(|(w, r)| {
                let ticks = match (r.start_ticks, r.last_ticks) {
                    (Some(a), Some(b)) => b.saturating_sub(a),
                    _ => 0,
                };
                let cpu_s = ticks as f64 / TICKS_PER_S;
                ProcessCost {
                    name: w.name.clone(),
                    role: w.role.clone(),
                    cpu_s,
                    peak_rss_mib: r.peak_rss_kib as f64 / 1024.0,
                    cpu_us_per_message: if messages == 0 {
                        0.0
                    } else {
                        cpu_s * 1e6 / messages as f64
                    },
                }
            })
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The local stack's Kafka brokers and Redis nodes, from the pid files
/// `scripts/stack` keeps in `<stack_dir>/<node>/pid`; nodes not running are left out.
pub fn stack_processes(stack_dir: &std::path::Path) -> Vec<Watched> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(stack_dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let role = if name.starts_with("kafka-") {
            "kafka"
        } else if name.starts_with("redis-") {
            "redis"
        } else {
            continue;
        };
        let pid = std::fs::read_to_string(entry.path().join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .filter(|pid| cpu_ticks(*pid, false).is_some());
        if let Some(pid) = pid {
            found.push(Watched {
                name,
                role: role.to_owned(),
                pid,
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn measures_cpu_spent_by_this_process() {
        let me = Watched {
            name: "self".into(),
            role: "load".into(),
            pid: std::process::id(),
        };
        let sampler = Sampler::start(vec![me]);
        // Burn 0.3 s of CPU (not of wall time: the machine may be busy).
        let start = cpu_ticks(std::process::id(), false).expect("own stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while cpu_ticks(std::process::id(), false).expect("own stat") < start + 30
            && std::time::Instant::now() < deadline
        {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let cost = sampler.finish(1000).await;
        assert_eq!(cost.len(), 1);
        assert!(cost[0].cpu_s >= 0.3, "cpu {:?}", cost[0]);
        assert!(cost[0].peak_rss_mib > 1.0, "rss {:?}", cost[0]);
        assert!((cost[0].cpu_us_per_message - cost[0].cpu_s * 1e3).abs() < 1e-6);
    }

    #[test]
    fn a_stack_node_cpu_includes_its_reaped_children_and_the_load_generator_not() {
        // A Redis node's line: utime 40000, stime 6662, cutime 2500, cstime 211.
        let stat = "20591 (redis-server (x)) S 1 20591 20591 0 -1 4194560 1 0 0 0 \
                    40000 6662 2500 211 20 0 5 0 100 1 2";
        assert_eq!(stat_cpu_ticks(stat, true), Some(49_373));
        assert_eq!(stat_cpu_ticks(stat, false), Some(46_662));
        assert_eq!(stat_cpu_ticks("20591 (redis-server) S 1 2", true), None);
        assert_eq!(stat_cpu_ticks("no name here", false), None);
        let node = |role: &str| Watched {
            name: "n".into(),
            role: role.into(),
            pid: 1,
        };
        assert!(node("redis").owns_children() && node("kafka").owns_children());
        assert!(!node("load").owns_children() && !node("tally").owns_children());
    }

    #[test]
    fn a_missing_process_reads_as_nothing() {
        assert_eq!(cpu_ticks(u32::MAX, true), None);
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
