//! Closed-loop load: N workers call as fast as answers come back, for a
//! warm-up and then a measured window; latencies go into per-worker
//! histograms merged at the end (no lock on the hot path).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use tp_loadgen::procstat::{CostSampler, MachineShare, ProcessCost};

/// One call's result, as a worker saw it.
pub struct Outcome {
    /// Which operation (a scenario may mix several).
    pub op: &'static str,
    /// When the first streamed message arrived, for streaming calls.
    pub first_event: Option<Duration>,
    pub result: Result<(), tonic::Code>,
}

/// Something that makes one call at a time.
pub trait Worker: Send + 'static {
    fn call(&mut self) -> impl Future<Output = Outcome> + Send;
}

#[derive(Clone, Debug)]
pub struct Phase {
    pub name: String,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Paced: all workers together start about this many calls a second
    /// (each one call every `concurrency / rate` seconds, staggered),
    /// instead of each starting its next call as soon as the last ends.
    pub rate: Option<f64>,
    /// With `rate`: calls arrive on one schedule, `rate` a second, whether
    /// or not earlier ones have finished (an open loop: the load does not
    /// slow down when the service does), taken by whichever worker is
    /// free. A call's latency counts from when it was due, so a call that
    /// waited for a free worker shows the wait (no coordinated omission).
    pub open_loop: bool,
    /// The load is meant to exceed capacity: calls refused with
    /// `RESOURCE_EXHAUSTED` are the service shedding it, not failures.
    pub overload: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
            mean_ms: histogram.mean() / 1000.0,
        }
    }
}

/// One operation's figures over the measured window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpSummary {
    pub op: String,
    pub ok: u64,
    /// Failed calls by gRPC status code name.
    pub errors: BTreeMap<String, u64>,
    /// Successful calls per second.
    pub rate_per_sec: f64,
    pub latency: Percentiles,
    pub first_event: Option<Percentiles>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseResult {
    pub name: String,
    pub concurrency: usize,
    pub seconds: f64,
    /// Successful calls per second, all operations.
    pub rate_per_sec: f64,
    pub errors: u64,
    pub ops: Vec<OpSummary>,
    pub processes: Vec<ProcessCost>,
    /// See [`Phase::overload`].
    #[serde(default)]
    pub overload: bool,
    /// The whole machine's CPU over the measured window (steal included).
    #[serde(default)]
    pub machine: Option<MachineShare>,
    /// Autovacuum and autoanalyze runs on the run's database that finished
    /// during the phase, where the phase was watched for them.
    #[serde(default)]
    pub maintenance_runs: Option<u64>,
}

impl PhaseResult {
    pub fn op(&self, name: &str) -> Option<&OpSummary> {
        self.ops.iter().find(|o| o.op == name)
    }

    /// What else loaded the machine during the phase, for a check read
    /// from its tail: the hypervisor's steal and PostgreSQL's own
    /// maintenance (empty if neither was measured).
    pub fn machine_note(&self) -> String {
        let mut parts = Vec::new();
        if let Some(machine) = &self.machine {
            parts.push(format!(
                "machine busy {:.0} %, steal {:.0} %",
                machine.busy_pct, machine.steal_pct
            ));
        }
        if let Some(runs) = self.maintenance_runs {
            parts.push(format!("{runs} autovacuum/autoanalyze runs finished"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("; during it: {}", parts.join(", "))
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, three significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

struct OpTally {
    latency: Histogram<u64>,
    first_event: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl OpTally {
    fn new() -> Self {
        Self {
            latency: histogram(),
            first_event: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }

    fn merge(&mut self, other: &OpTally) {
        let _ = self.latency.add(&other.latency);
        let _ = self.first_event.add(&other.first_event);
        self.ok += other.ok;
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += n;
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

type Tally = BTreeMap<&'static str, OpTally>;

/// Runs `workers` (one task each) through the phase, sampling the cost of
/// `processes`, and prints a progress line every second.
pub async fn run<W: Worker>(
    phase: &Phase,
    workers: Vec<W>,
    processes: Vec<(String, u32)>,
) -> PhaseResult {
    let started = Instant::now();
    let measure_from = started + phase.warmup;
    let end = measure_from + phase.duration;
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));

    let progress = {
        let calls = calls.clone();
        let failures = failures.clone();
        let name = phase.name.clone();
        let total = (phase.warmup + phase.duration).as_secs_f64();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = calls.load(Ordering::Relaxed);
                eprintln!(
                    "[loadgen] {name}: {:>5.1}/{total:.1} s  {now:>8} calls  {:>7}/s  {} failed",
                    started.elapsed().as_secs_f64(),
                    now - last,
                    failures.load(Ordering::Relaxed),
                );
                last = now;
            }
        })
    };

    // Sampling starts with the measured window, so start-up and warm-up
    // CPU are not counted.
    let sampler = {
        let processes = processes.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            CostSampler::start(processes)
        })
    };

    let interval = phase
        .rate
        .filter(|r| *r > 0.0)
        .map(|rate| Duration::from_secs_f64(workers.len() as f64 / rate));
    let stagger = interval.map(|i| i / u32::try_from(workers.len().max(1)).unwrap_or(u32::MAX));
    // The open loop's schedule: call k is due at started + k / rate.
    let arrivals = phase
        .rate
        .filter(|r| phase.open_loop && *r > 0.0)
        .map(|rate| {
            (
                Arc::new(AtomicU64::new(0)),
                Duration::from_secs_f64(1.0 / rate),
            )
        });
    let mut tasks = Vec::with_capacity(workers.len());
    for (n, mut worker) in workers.into_iter().enumerate() {
        let calls = calls.clone();
        let failures = failures.clone();
        let mut next_start = stagger.map(|s| started + s * u32::try_from(n).unwrap_or(0));
        let arrivals = arrivals.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            loop {
                let due = arrivals.as_ref().map(|(next, every)| {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    started + every.mul_f64(k as f64)
                });
                if let Some(due) = due {
                    // Calls still due when the window closes (the workers
                    // fell behind) are not made.
                    if due >= end || Instant::now() >= end {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                } else if let (Some(at), Some(interval)) = (next_start, interval) {
                    tokio::time::sleep_until(at.into()).await;
                    // Late (the last call ran long): start now, and do not
                    // burst to catch up.
                    next_start = Some(at.max(Instant::now() - interval) + interval);
                }
                let call_start = due.unwrap_or_else(Instant::now);
                if call_start >= end {
                    break;
                }
                let outcome = worker.call().await;
                let latency = call_start.elapsed();
                calls.fetch_add(1, Ordering::Relaxed);
                if outcome.result.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                if call_start < measure_from {
                    continue;
                }
                let op = tally.entry(outcome.op).or_insert_with(OpTally::new);
                match outcome.result {
                    Ok(()) => {
                        op.ok += 1;
                        let _ = op.latency.record(micros(latency));
                        if let Some(first) = outcome.first_event {
                            let _ = op.first_event.record(micros(first));
                        }
                    }
                    Err(code) => {
                        *op.errors.entry(format!("{code:?}")).or_default() += 1;
                    }
                }
            }
            tally
        }));
    }
    let mut merged = Tally::new();
    for task in tasks {
        if let Ok(tally) = task.await {
            for (op, figures) in tally {
                merged
                    .entry(op)
                    .or_insert_with(OpTally::new)
                    .merge(&figures);
            }
        }
    }
    let measured = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    let (costs, machine) = match sampler.await {
        Ok(sampler) => sampler.finish().await,
        Err(_) => (Vec::new(), None),
    };
    progress.abort();

    let seconds = phase.duration.as_secs_f64().min(measured.max(f64::EPSILON));
    let ops: Vec<OpSummary> = merged
        .iter()
        .map(|(op, t)| OpSummary {
            op: (*op).to_owned(),
            ok: t.ok,
            errors: t.errors.clone(),
            rate_per_sec: t.ok as f64 / seconds,
            latency: Percentiles::of(&t.latency),
            first_event: (!t.first_event.is_empty()).then(|| Percentiles::of(&t.first_event)),
        })
        .collect();
    PhaseResult {
        name: phase.name.clone(),
        concurrency: phase.concurrency,
        seconds,
        rate_per_sec: ops.iter().map(|o| o.rate_per_sec).sum(),
        errors: ops.iter().map(|o| o.errors.values().sum::<u64>()).sum(),
        ops,
        processes: costs,
        overload: phase.overload,
        machine,
        maintenance_runs: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_paced_phase_keeps_to_its_rate() {
        let phase = Phase {
            name: "paced".into(),
            concurrency: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(1000),
            rate: Some(100.0),
            open_loop: false,
            overload: false,
        };
        let workers = (0..4)
            .map(|_| Sleeper {
                pause: Duration::from_millis(1),
                n: 1,
            })
            .collect();
        let result = run(&phase, workers, Vec::new()).await;
        let op = result.op("sleep").expect("the op was recorded");
        let total = op.ok + op.errors.values().sum::<u64>();
        // Closed loop these workers would make ~4,000 calls a second.
        // Paced, late calls are not made up, so a busy machine makes fewer;
        // closed loop these workers would make ~4,000.
        assert!(
            (50..=110).contains(&total),
            "calls in one second at 100/s: {total}"
        );
    }

    #[tokio::test]
    async fn an_open_loop_keeps_arriving_and_counts_the_wait_for_a_worker() {
        // 2 workers of 50 ms calls serve at most 40 a second; calls arrive
        // at 100 a second regardless.
        let phase = Phase {
            name: "open".into(),
            concurrency: 2,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(1000),
            rate: Some(100.0),
            open_loop: true,
            overload: false,
        };
        let workers = (0..2)
            .map(|_| Sleeper {
                pause: Duration::from_millis(50),
                n: 1,
            })
            .collect();
        let result = run(&phase, workers, Vec::new()).await;
        let op = result.op("sleep").expect("the op was recorded");
        let total = op.ok + op.errors.values().sum::<u64>();
        assert!(
            total <= 42,
            "two 50 ms workers make at most ~40 calls: {total}"
        );
        // Arrivals outran the workers: the later calls waited for one, and
        // their latency says so (a closed loop would report 50 ms).
        assert!(
            op.latency.max_ms > 200.0,
            "the wait for a free worker counts: max {} ms",
            op.latency.max_ms
        );
    }

    /// Answers after a fixed pause; every fifth call fails.
    struct Sleeper {
        pause: Duration,
        n: u64,
    }

    impl Worker for Sleeper {
        async fn call(&mut self) -> Outcome {
            tokio::time::sleep(self.pause).await;
            self.n += 1;
            Outcome {
                op: "sleep",
                first_event: Some(self.pause / 2),
                result: if self.n.is_multiple_of(5) {
                    Err(tonic::Code::Unavailable)
                } else {
                    Ok(())
                },
            }
        }
    }

    #[tokio::test]
    async fn measures_only_the_window_and_counts_failures_by_code() {
        let phase = Phase {
            name: "test".into(),
            concurrency: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
            rate: None,
            open_loop: false,
            overload: false,
        };
        let workers = (0..4)
            .map(|_| Sleeper {
                pause: Duration::from_millis(10),
                n: 0,
            })
            .collect();
        let result = run(&phase, workers, Vec::new()).await;
        let op = result.op("sleep").expect("the op was recorded");
        // 4 workers × ~50 calls in 500 ms, a fifth failing; sleeps only
        // ever run long, so at most 200 calls.
        let total = op.ok + op.errors.values().sum::<u64>();
        assert!((100..=204).contains(&total), "calls in the window: {total}");
        let failed = op.errors.get("Unavailable").copied().unwrap_or(0);
        // A fifth of each worker's calls, give or take one per worker (each
        // worker's count starts in the warm-up).
        let off_by = (i64::try_from(failed * 5).unwrap_or(i64::MAX)
            - i64::try_from(total).unwrap_or(0))
        .abs();
        assert!(off_by <= 4 * 5, "{failed} of {total}");
        assert!(op.latency.p50_ms >= 10.0, "p50 {}", op.latency.p50_ms);
        let first = op.first_event.as_ref().expect("first events recorded");
        assert!(
            first.p50_ms >= 4.9 && first.p50_ms <= 5.1,
            "first event p50 {}",
            first.p50_ms
        );
        assert!((op.rate_per_sec - op.ok as f64 / 0.5).abs() < 1.0);
    }
}
