//! The report: every phase's figures, the same-run comparisons and the
//! targets they are checked against, as a table and as JSON.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::driver::PhaseResult;
use crate::pgbench::PgbenchResult;
use tp_loadgen::procstat::ProcessCost;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    pub postgres: String,
}

impl Machine {
    pub fn describe(postgres: String) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            postgres,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub concurrency: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub tenants: usize,
    pub members_per_tenant: usize,
    pub transcript_turns: usize,
    pub passages: usize,
    pub scaling_tenants: usize,
    /// Head sampling of exported traces, when set (else all exported).
    #[serde(default)]
    pub trace_sample_ratio: Option<f64>,
}

/// One target from the performance issue, checked against this run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetCheck {
    pub name: String,
    pub measured: String,
    pub target: String,
    pub met: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    /// Each service a second after start, before any load.
    pub idle: Vec<ProcessCost>,
    pub phases: Vec<PhaseResult>,
    pub pgbench: Option<PgbenchResult>,
    /// What the stacks with telemetry on exported to the OTLP receiver.
    #[serde(default)]
    pub otlp_spans: u64,
    #[serde(default)]
    pub otlp_metric_exports: u64,
    /// Each telemetry stack's CPU over the whole comparison, per call.
    #[serde(default)]
    pub telemetry_cpu: Option<TelemetryCpu>,
    /// This build against `--compare-bin-dir`'s, when asked for.
    #[serde(default)]
    pub builds_cpu: Option<BuildsCpu>,
    /// The gateway hop taken apart from the exported spans.
    #[serde(default)]
    pub hop_breakdown: Option<crate::otlp::HopBreakdown>,
    /// The one-stream ListMessages phase's calls taken apart from the
    /// exported spans (its measured window only).
    #[serde(default)]
    pub list_breakdown: Option<crate::otlp::TailBreakdown>,
    pub targets: Vec<TargetCheck>,
}

/// CPU time of the three services per SendMessage, telemetry on and off,
/// read from the first slice's start to a second after the last one ends:
/// work a stack defers (span batches exported, log lines flushed) often
/// runs during the other stack's slice, where the per-slice figures do
/// not count it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TelemetryCpu {
    pub on_us_per_call: f64,
    pub off_us_per_call: f64,
    /// The same, service by service: telemetry's share of each service's
    /// own CPU differs several-fold (the gateway and knowledge serve one
    /// call each per SendMessage, conversation does most of the work), and
    /// the services' workers are what a side's calls queue for.
    #[serde(default)]
    pub services: Vec<ServiceCpu>,
}

/// One service's CPU per SendMessage with telemetry on and off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceCpu {
    pub service: String,
    pub on_us_per_call: f64,
    pub off_us_per_call: f64,
}

impl TelemetryCpu {
    /// From each side's CPU per call by service (µs, the stacks' order).
    pub fn from_services(on: &[(String, f64)], off: &[(String, f64)]) -> Self {
        let services: Vec<ServiceCpu> = on
            .iter()
            .filter_map(|(service, on_us)| {
                let (_, off_us) = off.iter().find(|(name, _)| name == service)?;
                Some(ServiceCpu {
                    service: service.clone(),
                    on_us_per_call: *on_us,
                    off_us_per_call: *off_us,
                })
            })
            .collect();
        Self {
            on_us_per_call: on.iter().map(|(_, us)| us).sum(),
            off_us_per_call: off.iter().map(|(_, us)| us).sum(),
            services,
        }
    }
}

/// The slices of the builds comparison.
pub const THIS_BUILD: &str = "this build, slice ";
pub const OTHER_BUILD: &str = "compared build, slice ";

/// Each pair's rate of `op` in the slices named `{first}{k}` over that in
/// `{second}{k}` (k = 1, 2, ...), in pair order: the spread of a
/// comparison. A pair shares the machine's state (the same window, or
/// slices seconds apart), so their spread is what one comparison can
/// resolve on it, and a mean inside it is not a result.
pub fn pair_ratios(phases: &[PhaseResult], first: &str, second: &str, op: &str) -> Vec<f64> {
    let slice = |prefix: &str, k: usize| {
        let name = format!("{prefix}{k}");
        phases.iter().find(|p| p.name == name)
    };
    (1..)
        .map_while(|k| Some((slice(first, k)?, slice(second, k)?)))
        .filter_map(|(a, b)| {
            let below = rate(&[b], op);
            (below > 0.0).then(|| rate(&[a], op) / below)
        })
        .collect()
}

/// Fractions as signed percentages: `[0.041, -0.02]` is "+4.1, -2.0 %".
pub fn percents(fractions: impl IntoIterator<Item = f64>) -> String {
    let parts: Vec<String> = fractions
        .into_iter()
        .map(|f| format!("{:+.1}", f * 100.0))
        .collect();
    format!("{} %", parts.join(", "))
}

/// The standard error of the mean of `values` (their sample standard
/// deviation over the square root of their count), `None` for fewer than
/// two. For a two-stack comparison's pairs it says how far the run's
/// figure may be from what the same comparison would read on average:
/// A/A runs of the same binaries differed by up to ±2 % here (session 30).
pub fn standard_error(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some((variance / n).sqrt())
}

/// Several runs' figures of one comparison pooled, each run one
/// observation: what the comparison reads on average and how sure that is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pooled {
    pub runs: usize,
    pub mean: f64,
    pub standard_error: f64,
    /// The one-sided 95 % upper confidence bound of the mean (Student's t
    /// with `runs - 1` degrees of freedom): the average is below it with
    /// 95 % confidence, so a target at or above it is met with that
    /// confidence however one run happens to read.
    pub upper_95: f64,
}

/// Pools `values` (one per run); `None` for fewer than two.
pub fn pool(values: &[f64]) -> Option<Pooled> {
    let standard_error = standard_error(values)?;
    let runs = values.len();
    let mean = values.iter().sum::<f64>() / runs as f64;
    Some(Pooled {
        runs,
        mean,
        standard_error,
        upper_95: mean + t_95_one_sided(runs - 1) * standard_error,
    })
}

/// Student's t at 0.95, one-sided, for `degrees` degrees of freedom (the
/// normal quantile past 30).
fn t_95_one_sided(degrees: usize) -> f64 {
    const TABLE: [f64; 30] = [
        6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771,
        1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706,
        1.703, 1.701, 1.699, 1.697,
    ];
    degrees
        .checked_sub(1)
        .and_then(|index| TABLE.get(index))
        .copied()
        .unwrap_or(1.645)
}

/// Successful calls per second of `op` summed over phases.
pub fn rate(phases: &[&PhaseResult], op: &str) -> f64 {
    let ok: u64 = phases.iter().filter_map(|p| p.op(op)).map(|o| o.ok).sum();
    let secs: f64 = phases.iter().map(|p| p.seconds).sum();
    if secs > 0.0 { ok as f64 / secs } else { 0.0 }
}

/// CPU time of the three services per SendMessage, this build and the one
/// it is compared with, read as [`TelemetryCpu`] is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuildsCpu {
    pub other_bin_dir: String,
    pub this_us_per_call: f64,
    pub other_us_per_call: f64,
}

impl Report {
    pub fn phase(&self, name: &str) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Failed calls, but for the shedding an overload phase sets out to
    /// cause (`RESOURCE_EXHAUSTED` there is the service working).
    pub fn failed_calls(&self) -> u64 {
        self.phases
            .iter()
            .map(|p| {
                let shed: u64 = if p.overload {
                    p.ops
                        .iter()
                        .filter_map(|o| o.errors.get("ResourceExhausted"))
                        .sum()
                } else {
                    0
                };
                p.errors - shed
            })
            .sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(
            out,
            "\nmachine: {} cores, {}, Linux {}, {}",
            m.cores, m.cpu, m.kernel, m.postgres
        );
        let _ = writeln!(
            out,
            "settings: {} concurrent, {:.0} s warm-up + {:.0} s measured per phase; {} tenants x {} members; \
             transcripts of {} turns; {} tenant passages; {} tenants in the scaling run; \
             traces exported: {}\n",
            s.concurrency,
            s.warmup_secs,
            s.duration_secs,
            s.tenants,
            s.members_per_tenant,
            s.transcript_turns,
            s.passages,
            s.scaling_tenants,
            s.trace_sample_ratio.map_or("all".to_owned(), |r| format!(
                "{:.0} % (head sampling)",
                r * 100.0
            ))
        );
        let _ = writeln!(
            out,
            "{:<34} {:<30} {:>9} {:>8} {:>8} {:>8} {:>8} {:>17} {:>6}",
            "phase",
            "operation",
            "calls/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9",
            "1st event p50/p99",
            "failed"
        );
        for phase in &self.phases {
            for op in &phase.ops {
                let first = op.first_event.as_ref().map_or_else(
                    || "-".to_owned(),
                    |f| format!("{:.2}/{:.2}", f.p50_ms, f.p99_ms),
                );
                let failed: u64 = op.errors.values().sum();
                let _ = writeln!(
                    out,
                    "{:<34} {:<30} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>17} {:>6}",
                    phase.name,
                    op.op,
                    op.rate_per_sec,
                    op.latency.p50_ms,
                    op.latency.p90_ms,
                    op.latency.p99_ms,
                    op.latency.p999_ms,
                    first,
                    failed
                );
                for (code, n) in &op.errors {
                    let _ = writeln!(out, "{:<34}   {code}: {n}", "");
                }
            }
        }
        if let Some(pg) = &self.pgbench {
            let _ = writeln!(
                out,
                "{:<34} {:<30} {:>9.1} (average {:.2} ms, {} failed)",
                "pgbench (SendMessage's SQL)",
                "script",
                pg.rate_per_sec,
                pg.latency_avg_ms,
                pg.failed
            );
        }
        let _ = writeln!(
            out,
            "\nprocesses (RSS MiB at start / peak, CPU seconds in the window; the machine's \
             CPU, steal being the time its host gave its cores to others):"
        );
        let idle: Vec<String> = self
            .idle
            .iter()
            .map(|p| format!("{} {:.1}", p.name, mib(p.rss_start_kib)))
            .collect();
        let _ = writeln!(out, "  {:<32} {}", "idle", idle.join(", "));
        for phase in &self.phases {
            let costs: Vec<String> = phase
                .processes
                .iter()
                .map(|p| {
                    format!(
                        "{} {:.1}/{:.1} MiB {:.1} s",
                        p.name,
                        mib(p.rss_start_kib),
                        mib(p.rss_peak_kib),
                        p.cpu_seconds
                    )
                })
                .collect();
            if !costs.is_empty() {
                let machine = phase.machine.map_or(String::new(), |m| {
                    format!(
                        "; machine busy {:.0} %, steal {:.0} %",
                        m.busy_pct, m.steal_pct
                    )
                });
                let _ = writeln!(out, "  {:<32} {}{machine}", phase.name, costs.join(", "));
            }
        }
        let _ = writeln!(
            out,
            "\nOTLP receiver: {} spans and {} metric exports from the stacks with telemetry on",
            self.otlp_spans, self.otlp_metric_exports
        );
        if let Some(hop) = &self.hop_breakdown {
            let alone = hop
                .conversation_alone_us
                .map(|us| format!("; conversation's span when called directly or through the proxy: {us:.0} us"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "gateway hop from the exported spans (GetConversation, medians of {} traces): \
                 the gateway's span {:.0} us = {:.0} before conversation's span + {:.0} in it + {:.0} after{alone}",
                hop.traces,
                hop.gateway_us,
                hop.before_conversation_us,
                hop.conversation_us,
                hop.after_conversation_us,
            );
        }
        if let Some(list) = &self.list_breakdown {
            let part = |s: &crate::otlp::Spread| format!("{:.0}/{:.0}", s.p50_us, s.p99_us);
            let _ = writeln!(
                out,
                "ListMessages at one stream from the exported spans ({} traces; p50/p99 of each \
                 part, us): the gateway's span {}, before conversation's span {}, conversation's \
                 span {}, after it {}",
                list.traces,
                part(&list.gateway),
                part(&list.before_conversation),
                part(&list.conversation),
                part(&list.after_conversation),
            );
        }
        if let Some(cpu) = &self.telemetry_cpu {
            let _ = writeln!(
                out,
                "CPU of the three services per SendMessage over the whole telemetry comparison: \
                 {:.0} us on, {:.0} us off ({:+.0} us)",
                cpu.on_us_per_call,
                cpu.off_us_per_call,
                cpu.on_us_per_call - cpu.off_us_per_call
            );
            let services: Vec<String> = cpu
                .services
                .iter()
                .map(|s| {
                    format!(
                        "{} {:.0} against {:.0} us ({:+.1} %)",
                        s.service,
                        s.on_us_per_call,
                        s.off_us_per_call,
                        (s.on_us_per_call / s.off_us_per_call.max(f64::EPSILON) - 1.0) * 100.0
                    )
                })
                .collect();
            if !services.is_empty() {
                let _ = writeln!(
                    out,
                    "  service by service, on against off: {}",
                    services.join("; ")
                );
            }
        }
        if let Some(cpu) = &self.builds_cpu {
            let slices = |prefix: &str| -> Vec<&PhaseResult> {
                self.phases
                    .iter()
                    .filter(|p| p.name.starts_with(prefix))
                    .collect()
            };
            let send = crate::workers::op::SEND_MESSAGE;
            let this = rate(&slices(THIS_BUILD), send);
            let other = rate(&slices(OTHER_BUILD), send);
            let pairs = pair_ratios(&self.phases, THIS_BUILD, OTHER_BUILD, send);
            let _ = writeln!(
                out,
                "this build against {}, {}SendMessage {this:.0}/s against {other:.0}/s ({:+.1} %; \
                 pair by pair {}); CPU of the three services per call {:.0} us against {:.0} us \
                 ({:+.0} us)",
                cpu.other_bin_dir,
                crate::run::sharing_note(&slices(THIS_BUILD), self.settings.concurrency),
                (this / other.max(f64::EPSILON) - 1.0) * 100.0,
                percents(pairs.iter().map(|r| r - 1.0)),
                cpu.this_us_per_call,
                cpu.other_us_per_call,
                cpu.this_us_per_call - cpu.other_us_per_call
            );
        }
        let _ = writeln!(out, "\ntargets (ratios and figures from this run):");
        for t in &self.targets {
            let _ = writeln!(
                out,
                "  [{}] {}: {} (target {})",
                if t.met { "met" } else { "NOT MET" },
                t.name,
                t.measured,
                t.target
            );
        }
        out
    }
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
