//! What a service process costs, read from `/proc`: resident memory and CPU
//! seconds (user + system, all threads); and what the whole machine did
//! meanwhile (`/proc/stat`), so a slow phase can be told apart from a slow
//! machine.

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

/// The machine's CPU time so far, in clock ticks summed over its CPUs: the
/// first line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// User, nice, system, irq and softirq.
    pub busy: u64,
    /// Idle and iowait.
    pub idle: u64,
    /// Time the hypervisor ran something else while this machine's CPUs
    /// had work: a virtual machine's host taking its cores back.
    pub steal: u64,
}

impl MachineTicks {
    pub fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Parses `/proc/stat`'s `cpu` line (proc(5): user nice system idle
    /// iowait irq softirq steal guest guest_nice; guest time is already in
    /// user and nice).
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        if fields.len() < 4 {
            return None;
        }
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        Some(Self {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            idle: field(3) + field(4),
            steal: field(7),
        })
    }

    /// The shares of the machine's CPU time between `before` and `self`.
    pub fn since(&self, before: &Self) -> Option<MachineShare> {
        let busy = self.busy.checked_sub(before.busy)?;
        let idle = self.idle.checked_sub(before.idle)?;
        let steal = self.steal.checked_sub(before.steal)?;
        let total = (busy + idle + steal) as f64;
        (total > 0.0).then(|| MachineShare {
            busy_pct: 100.0 * busy as f64 / total,
            idle_pct: 100.0 * idle as f64 / total,
            steal_pct: 100.0 * steal as f64 / total,
        })
    }
}

/// How the machine's CPU time was spent over a phase, in percent of all
/// of it (every CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MachineShare {
    pub busy_pct: f64,
    pub idle_pct: f64,
    /// Taken by the hypervisor: time this machine's work waited for a
    /// core it was given none of. Latency tails grow with it whatever the
    /// product does.
    pub steal_pct: f64,
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
    machine_start: Option<MachineTicks>,
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
            machine_start: MachineTicks::read(),
            cpu_start,
            rss_start,
            peaks,
            stop,
            task,
        }
    }

    /// Each process's cost, and the machine's CPU over the same window.
    pub async fn finish(self) -> (Vec<ProcessCost>, Option<MachineShare>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let machine = self
            .machine_start
            .zip(MachineTicks::read())
            .and_then(|(start, end)| end.since(&start));
        let costs = self
            .processes
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
            .collect();
        (costs, machine)
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
    fn the_machine_line_is_split_into_busy_idle_and_steal() {
        let stat = "cpu  100 5 20 300 10 1 2 40 0 0\ncpu0 50 2 10 150 5 0 1 20 0 0\nintr 1\n";
        let before = MachineTicks::parse(stat).expect("a cpu line");
        assert_eq!(
            before,
            MachineTicks {
                busy: 100 + 5 + 20 + 1 + 2,
                idle: 300 + 10,
                steal: 40,
            }
        );
        let after = MachineTicks {
            busy: before.busy + 60,
            idle: before.idle + 20,
            steal: before.steal + 20,
        };
        let share = after.since(&before).expect("time passed");
        assert!((share.busy_pct - 60.0).abs() < 1e-9, "{share:?}");
        assert!((share.idle_pct - 20.0).abs() < 1e-9, "{share:?}");
        assert!((share.steal_pct - 20.0).abs() < 1e-9, "{share:?}");
        // No time passed, or counters that went backwards: no share.
        assert_eq!(before.since(&before), None);
        assert_eq!(before.since(&after), None);
        // Not a stat file.
        assert_eq!(MachineTicks::parse("intr 1\n"), None);
        assert_eq!(MachineTicks::parse("cpu  1 x 3 4\n"), None);
    }

    #[test]
    fn this_machine_reports_its_cpu_time() {
        let ticks = MachineTicks::read().expect("/proc/stat on Linux");
        assert!(ticks.busy + ticks.idle > 0, "{ticks:?}");
    }

    #[test]
    fn a_missing_process_has_no_figures() {
        // PIDs are at most 2^22 on Linux.
        assert_eq!(rss_kib(u32::MAX), None);
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
