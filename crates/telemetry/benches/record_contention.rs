//! What one observation costs when both worker threads record the same
//! series at once, against one thread alone, measured in the same run for
//! our metrics (`tp_telemetry::Metrics`: a shard per thread, merged when
//! read) and, as the baseline, for what the services recorded into until
//! session 24: prometheus-client's `Family` of histograms with exemplars
//! and the OpenTelemetry SDK's bound histogram (its meter provider
//! installed, exporting into memory, as with OTLP configured).
//!
//! `cargo bench -p tp-telemetry --bench record_contention` (or
//! `deploy/local/bench`). A benchmark, not a test: it prints nanoseconds
//! per observation and the ratios. On a single core the two-thread rounds
//! only time-share and show no contention.

use std::time::{Duration, Instant};

use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;

/// Observations per thread per round, and rounds per side.
const OBSERVATIONS: u32 = 1_000_000;
const ROUNDS: usize = 3;

type Labels = Vec<(&'static str, &'static str)>;
/// The exemplar is the trace id as a number: a copy, as ours is (a label
/// set's type only matters when encoded).
type Baseline = Family<Labels, HistogramWithExemplars<u128>>;

/// Mean nanoseconds per observation when `threads` threads each make
/// `OBSERVATIONS` with `observe`, all at once.
fn per_observation(threads: usize, observe: &(dyn Fn(u32) + Sync)) -> f64 {
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for i in 0..OBSERVATIONS {
                    observe(i);
                }
            });
        }
    });
    started.elapsed().as_nanos() as f64 / f64::from(OBSERVATIONS)
}

/// The best of `ROUNDS` alternating rounds, one thread and two.
fn best(observe: &(dyn Fn(u32) + Sync)) -> (f64, f64) {
    let (mut one, mut two) = (f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        one = one.min(per_observation(1, observe));
        two = two.min(per_observation(2, observe));
    }
    (one, two)
}

fn main() {
    // Exported into memory, once a minute: the SDK aggregates as it does
    // before an OTLP export.
    let meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_periodic_exporter(opentelemetry_sdk::metrics::InMemoryMetricExporter::default())
        .build();
    opentelemetry::global::set_meter_provider(meters);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);

    let ours = tp_telemetry::Metrics::new("conversation");
    let (ours_one, ours_two) = best(&|i| {
        let duration = Duration::from_micros(u64::from(i % 5_000));
        ours.db_operation("complete_exchange", duration, None);
    });

    // The same labels and buckets, recorded as prometheus-client records
    // them (a family lookup under a shared lock, then a locked histogram),
    // and into the SDK through a bound instrument, as ours does.
    let otel = opentelemetry::global::meter("baseline")
        .f64_histogram("db.client.operation.duration")
        .with_boundaries(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0])
        .build()
        .bind(&[
            opentelemetry::KeyValue::new("db.system.name", "postgresql"),
            opentelemetry::KeyValue::new("db.operation.name", "complete_exchange"),
            opentelemetry::KeyValue::new("tp.component", "conversation"),
        ]);
    let baseline = Baseline::new_with_constructor(|| {
        HistogramWithExemplars::new(
            [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0].into_iter(),
        )
    });
    let labels: Labels = vec![
        ("db_system_name", "postgresql"),
        ("db_operation_name", "complete_exchange"),
        ("tp_component", "conversation"),
    ];
    let (base_one, base_two) = best(&|i| {
        let seconds = f64::from(i % 5_000) / 1e6;
        let trace = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128;
        baseline
            .get_or_create(&labels)
            .observe(seconds, Some(trace), None);
        otel.record(seconds);
    });

    println!(
        "one series recorded by one thread, then by two at once ({cores} cores), ns per observation:"
    );
    println!(
        "  tp-telemetry (a shard per thread):               {ours_one:7.1} alone, {ours_two:7.1} two at once: {:.2}x",
        ours_two / ours_one
    );
    println!(
        "  prometheus-client family + OTel SDK (baseline): {base_one:7.1} alone, {base_two:7.1} two at once: {:.2}x",
        base_two / base_one
    );
    println!(
        "  two at once, tp-telemetry against the baseline: {:.2}x",
        ours_two / base_two
    );
}
