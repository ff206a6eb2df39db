//! What a service process costs, read from `/proc`: resident memory and CPU
//! seconds (user + system, all threads).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Resident set size in KiB (`VmRSS`), or `None` once the process is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds used so far (user + system, every thread).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing
    // parenthesis are space-separated: utime and stime are the 12th and
    // 13th of them (fields 14 and 15 of stat(5)).
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// One process's cost over a phase.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ProcessCost {
    pub name: String,
    pub rss_start_kib: u64,
    pub rss_peak_kib: u64,
    pub cpu_seconds: f64,
}

/// Samples the resident memory of some processes every 50 ms until
/// stopped, keeping each one's peak, and their CPU seconds from start to stop.
pub struct CostSampler {
    processes: Vec<(String, u32)>,
    cpu_start: Vec<f64>,
    rss_start: Vec<u64>,
    peaks: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CostSampler {
    pub fn start(processes: Vec<(String, u32)>) -> Self {
        let rss_start: Vec<u64> = processes
            .iter()
            .map(|(_, pid)| rss_kib(*pid).unwrap_or(0))
            .collect();
        let cpu_start = processes
            .iter()
            .map(|(_, pid)| cpu_seconds(*pid).unwrap_or(0.0))
            .collect();
        let peaks: Arc<Vec<AtomicU64>> =
            Arc::new(rss_start.iter().map(|&r| AtomicU64::new(r)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let pids: Vec<u32> = processes.iter().map(|(_, pid)| *pid).collect();
        let task = {
            let peaks = peaks.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for (i, pid) in pids.iter().enumerate() {
                        if let Some(rss) = rss_kib(*pid) {
                            peaks[i].fetch_max(rss, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Self {
            processes,
            cpu_start,
            rss_start,
            peaks,
            stop,
            task,
        }
    }

    pub async fn finish(self) -> Vec<ProcessCost> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.processes
            .iter()
            .enumerate()
            .map(|(i, (name, pid))| {
                if let Some(rss) = rss_kib(*pid) {
                    self.peaks[i].fetch_max(rss, Ordering::Relaxed);
                }
                ProcessCost {
                    name: name.clone(),
                    rss_start_kib: self.rss_start[i],
                    rss_peak_kib: self.peaks[i].load(Ordering::Relaxed),
                    cpu_seconds: cpu_seconds(*pid).unwrap_or(0.0) - self.cpu_start[i],
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let pid = std::process::id();
        let rss = rss_kib(pid).expect("own VmRSS");
        assert!(
            rss > 100,
            "a running test binary has more than 100 KiB resident, got {rss}"
        );
        // Burn a little CPU so the counter cannot stay at zero forever.
        let start = cpu_seconds(pid).expect("own CPU seconds");
        let mut x = 0u64;
        let until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < until {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        let end = cpu_seconds(pid).expect("own CPU seconds");
        assert!(end >= start);
    }

    #[test]
    fn a_missing_process_has_no_figures() {
        // PIDs are at most 2^22 on Linux.
        assert_eq!(rss_kib(u32::MAX), None);
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
