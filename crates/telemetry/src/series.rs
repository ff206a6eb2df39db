//! Where observations are kept: one table of series per *shard*, each
//! thread recording into its own shard, merged only when scraped.
//!
//! Why not one shared series per label set (prometheus-client's `Family`
//! of histograms, each behind a lock): both worker threads record the same
//! series (the same method, status and component) on nearly every call, so
//! every observation's lock word, bucket counts and exemplar map moved
//! between the two cores. `tp-telemetry`'s `record_contention` benchmark
//! measures it: one series recorded from two threads at once cost several
//! times what it costs from one. Under callgrind telemetry was ~5 % of the
//! instructions of a SendMessage but ~10 % of its CPU time; cache lines
//! moving between cores are time that counts no instruction. With a shard
//! per thread, an observation writes only lines its own core holds; a
//! scrape (seconds apart) pays for the merge instead.
//!
//! Series are found by the labels' *identity* where that is cheap (see
//! [`Sharded::with`]); two identities for one text (the same name at two
//! addresses, static and owned) are two entries merged into one series by
//! their text when encoded.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry::trace::TraceId;

use crate::metrics::{Key, LabelSet, Value};

/// Aligned to two cache lines: a shard's lock and table header share no
/// line with another shard's (x86 prefetches lines in adjacent pairs).
#[repr(align(128))]
struct Padded<T>(T);

/// This thread's shard number, handed out in the order threads first
/// record. Tokio's workers live as long as the runtime, so each keeps one
/// shard; a thread beyond the shard count shares one, which is correct,
/// only slower.
fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        let mut n = shard.get();
        if n == usize::MAX {
            n = NEXT.fetch_add(1, Ordering::Relaxed);
            shard.set(n);
        }
        n
    })
}

/// Shards per table: twice the cores (the runtime's workers, its blocking
/// threads, the exporter), at least 4 and at most 64.
fn shard_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (cores * 2).clamp(4, 64)
}

/// A label set by its text: how series are merged and ordered.
pub(crate) type LabelText = Vec<(Key, String)>;

/// The text of `labels`.
pub(crate) fn label_text(labels: &[(Key, Value)]) -> LabelText {
    labels
        .iter()
        .map(|(k, v)| (*k, v.as_str().to_owned()))
        .collect()
}

/// One `T` per shard, each thread using its own (see [`this_thread`]).
pub(crate) struct PerThread<T> {
    shards: Box<[Padded<Mutex<T>>]>,
}

impl<T: Default> PerThread<T> {
    pub(crate) fn new() -> Self {
        Self::with_shards(shard_count())
    }

    fn with_shards(n: usize) -> Self {
        Self {
            shards: (0..n.max(1))
                .map(|_| Padded(Mutex::new(T::default())))
                .collect(),
        }
    }
}

impl<T> PerThread<T> {
    /// Runs `f` on this thread's `T`.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let shard = &self.shards[this_thread() % self.shards.len()].0;
        // A poisoned lock only means another thread panicked mid-update;
        // what it guards is still valid.
        f(&mut shard.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Runs `f` on every shard's `T` in turn.
    pub(crate) fn each(&self, mut f: impl FnMut(&T)) {
        self.each_mut(|t| f(t));
    }

    /// Runs `f` on every shard's `T` in turn, to change it.
    pub(crate) fn each_mut(&self, mut f: impl FnMut(&mut T)) {
        for shard in &self.shards {
            f(&mut shard.0.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// One metric's series, per shard.
pub(crate) struct Sharded<V> {
    shards: PerThread<hashbrown::HashTable<(LabelSet, V)>>,
}

impl<V> Sharded<V> {
    pub(crate) fn new() -> Self {
        Self {
            shards: PerThread::new(),
        }
    }

    #[cfg(test)]
    fn with_shards(n: usize) -> Self {
        Self {
            shards: PerThread::with_shards(n),
        }
    }

    /// Runs `update` on this thread's entry for `labels`, made by `make`
    /// the first time this shard sees them, so a label set already seen
    /// costs no allocation. Entries are found by the labels' identity
    /// (hashing and comparing every label's text was half of an
    /// observation's instructions: callgrind, 3.2k hashing and 1.1k
    /// comparing per SendMessage in `conversation`). Making an entry is
    /// out of line: each observation runs this code cold (callgrind's cache
    /// simulation put ~18 instruction-cache misses on each), so the path it
    /// takes is kept short.
    pub(crate) fn with(
        &self,
        labels: &[(Key, Value)],
        make: impl FnOnce(&LabelSet) -> V,
        update: impl FnOnce(&mut V),
    ) {
        let hash = identity_hash(labels);
        self.shards.with(|table| {
            match table.find_mut(hash, |entry| same_identity(&entry.0, labels)) {
                Some(entry) => update(&mut entry.1),
                None => update(&mut insert_new(table, hash, labels, make).1),
            }
        });
    }

    /// Every shard's entries merged by their labels' text, in the text's
    /// order (so the exposition is stable from scrape to scrape).
    pub(crate) fn merged<T: Default>(
        &self,
        mut merge: impl FnMut(&mut T, &V),
    ) -> BTreeMap<LabelText, T> {
        let mut merged: BTreeMap<LabelText, T> = BTreeMap::new();
        self.shards.each(|table| {
            for (labels, value) in table.iter() {
                merge(merged.entry(label_text(labels)).or_default(), value);
            }
        });
        merged
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        let mut entries = 0;
        self.shards.each(|table| entries += table.len());
        entries
    }
}

/// A label set's first entry in a shard's table.
#[cold]
#[inline(never)]
fn insert_new<'t, V>(
    table: &'t mut hashbrown::HashTable<(LabelSet, V)>,
    hash: u64,
    labels: &[(Key, Value)],
    make: impl FnOnce(&LabelSet) -> V,
) -> &'t mut (LabelSet, V) {
    let key = labels.to_vec();
    let value = make(&key);
    table
        .insert_unique(hash, (key, value), |entry| identity_hash(&entry.0))
        .into_mut()
}

/// A multiply-rotate fold of each key's and value's address and length:
/// cheaper than hashing their text (every value is static or interned, see
/// `crate::intern`). Addresses are not chosen by callers, so nothing can
/// flood the table.
fn identity_hash(labels: &[(Key, Value)]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, x: u64| (h ^ x).wrapping_mul(K).rotate_left(26);
    let identity = |s: &'static str| s.as_ptr() as u64 ^ ((s.len() as u64) << 48);
    let mut h = labels.len() as u64;
    for (key, value) in labels {
        h = mix(h, identity(key.0));
        h = mix(h, identity(value.0));
    }
    h ^ (h >> 32)
}

/// Whether two label sets are the same by [`Sharded`]'s identity: the
/// address and length of every key and value. The same text at two
/// addresses (a literal in two crates) is two entries, merged by text when
/// scraped.
fn same_identity(a: &[(Key, Value)], b: &[(Key, Value)]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| std::ptr::eq(ka.0, kb.0) && std::ptr::eq(va.0, vb.0))
}

/// A histogram series in one shard, or merged. `counts` are per bucket
/// (not cumulative), the last for values above every bound (`+Inf`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HistData {
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
    /// The least and greatest value observed (OTLP carries them); infinite
    /// while there is none.
    pub min: f64,
    pub max: f64,
    /// Per bucket, the trace of an observation that landed in it: the
    /// latest of its shard; merged, the latest of the first shard that
    /// has one.
    pub exemplars: Vec<Option<(TraceId, f64)>>,
}

impl Default for HistData {
    fn default() -> Self {
        Self::new(&[])
    }
}

impl HistData {
    pub(crate) fn new(bounds: &[f64]) -> Self {
        Self {
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            exemplars: vec![None; bounds.len() + 1],
        }
    }

    /// Counts `value` in the first bucket whose bound is at least it, as
    /// Prometheus buckets are (`le`); NaN is in none but `+Inf`.
    pub(crate) fn observe(&mut self, bounds: &[f64], value: f64, trace_id: TraceId) {
        let bucket = bounds.partition_point(|bound| *bound < value);
        let bucket = if value.is_nan() { bounds.len() } else { bucket };
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum += value;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if trace_id != TraceId::INVALID
            && let Some(slot) = self.exemplars.get_mut(bucket)
        {
            *slot = Some((trace_id, value));
        }
    }

    pub(crate) fn merge(&mut self, other: &HistData) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
            self.exemplars.resize(other.exemplars.len(), None);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        for (mine, theirs) in self.exemplars.iter_mut().zip(&other.exemplars) {
            if mine.is_none() {
                *mine = *theirs;
            }
        }
        self.sum += other.sum;
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

// ------------------------------------------------------------ exposition

/// Writes the OpenMetrics text of histograms and counters kept here, line
/// for line what prometheus-client writes for its own (a test holds the
/// two equal): it cannot encode exemplars of a histogram it does not own.
pub(crate) struct Text<'a, W: std::fmt::Write> {
    pub out: &'a mut W,
}

impl<W: std::fmt::Write> Text<'_, W> {
    /// `# HELP`, `# TYPE` and, with a unit, `# UNIT`.
    pub(crate) fn descriptor(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&str>,
        kind: &str,
    ) -> std::fmt::Result {
        let out = &mut *self.out;
        out.write_str("# HELP ")?;
        out.write_str(name)?;
        out.write_str(" ")?;
        out.write_str(help)?;
        // prometheus-client ends every help text with a full stop.
        out.write_str(".\n# TYPE ")?;
        out.write_str(name)?;
        out.write_str(" ")?;
        out.write_str(kind)?;
        out.write_str("\n")?;
        if let Some(unit) = unit {
            out.write_str("# UNIT ")?;
            out.write_str(name)?;
            out.write_str(" ")?;
            out.write_str(unit)?;
            out.write_str("\n")?;
        }
        Ok(())
    }

    /// `{le="…",key="value",…}`, or nothing when there are no labels.
    fn labels(&mut self, le: Option<&str>, labels: &[(Key, String)]) -> std::fmt::Result {
        let out = &mut *self.out;
        if le.is_none() && labels.is_empty() {
            return Ok(());
        }
        out.write_str("{")?;
        let mut first = true;
        if let Some(le) = le {
            out.write_str("le=\"")?;
            out.write_str(le)?;
            out.write_str("\"")?;
            first = false;
        }
        for (key, value) in labels {
            if !first {
                out.write_str(",")?;
            }
            first = false;
            for (i, part) in key.0.split('.').enumerate() {
                if i > 0 {
                    out.write_str("_")?;
                }
                out.write_str(part)?;
            }
            out.write_str("=\"")?;
            escape_label_value(value, out)?;
            out.write_str("\"")?;
        }
        out.write_str("}")
    }

    pub(crate) fn histogram(
        &mut self,
        name: &str,
        bounds: &[f64],
        labels: &[(Key, String)],
        data: &HistData,
    ) -> std::fmt::Result {
        let mut floats = dtoa::Buffer::new();
        let mut ints = itoa::Buffer::new();
        self.line(name, "_sum", labels, floats.format(data.sum))?;
        self.sample(name, "_count", labels, data.count)?;
        let mut cumulative = 0;
        for (i, count) in data.counts.iter().enumerate() {
            cumulative += count;
            self.out.write_str(name)?;
            self.out.write_str("_bucket")?;
            match bounds.get(i) {
                Some(bound) => {
                    let mut le = dtoa::Buffer::new();
                    self.labels(Some(le.format(*bound)), labels)?;
                }
                None => self.labels(Some("+Inf"), labels)?,
            }
            self.out.write_str(" ")?;
            self.out.write_str(ints.format(cumulative))?;
            if let Some(Some((trace_id, value))) = data.exemplars.get(i) {
                write!(self.out, " # {{trace_id=\"{trace_id}\"}} ")?;
                self.out.write_str(floats.format(*value))?;
            }
            self.out.write_str("\n")?;
        }
        Ok(())
    }

    /// One sample: `name` and `suffix` (`_total` for a counter), the
    /// labels, the value.
    pub(crate) fn sample(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(Key, String)],
        value: impl itoa::Integer,
    ) -> std::fmt::Result {
        self.line(name, suffix, labels, itoa::Buffer::new().format(value))
    }

    /// `name` and `suffix`, the labels and `value` as written.
    fn line(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(Key, String)],
        value: &str,
    ) -> std::fmt::Result {
        self.out.write_str(name)?;
        self.out.write_str(suffix)?;
        self.labels(None, labels)?;
        self.out.write_str(" ")?;
        self.out.write_str(value)?;
        self.out.write_str("\n")
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format
/// requires.
fn escape_label_value(value: &str, out: &mut impl std::fmt::Write) -> std::fmt::Result {
    let mut last = 0;
    for (index, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            b'\n' => "\\n",
            _ => continue,
        };
        out.write_str(&value[last..index])?;
        out.write_str(escaped)?;
        last = index + 1;
    }
    out.write_str(&value[last..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&'static str, Value)]) -> LabelSet {
        pairs.iter().map(|(k, v)| (Key(k), *v)).collect()
    }

    #[test]
    fn each_thread_records_into_its_own_shard_and_a_scrape_sees_the_sum() {
        let table: Sharded<u64> = Sharded::with_shards(4);
        let set = labels(&[("rpc.method", Value("A/B"))]);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        table.with(&set, |_| 0, |n| *n += 1);
                    }
                });
            }
        });
        // Three threads, three shards' entries, one series.
        assert_eq!(table.entries(), 3);
        let merged = table.merged(|total: &mut u64, n| *total += n);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged.values().copied().collect::<Vec<_>>(), vec![3000]);
    }

    #[test]
    fn entries_are_found_by_identity_and_merged_by_text() {
        let table: Sharded<u64> = Sharded::with_shards(1);
        let makes = std::cell::Cell::new(0);
        let observe = |labels: &LabelSet| {
            table.with(
                labels,
                |_| {
                    makes.set(makes.get() + 1);
                    0
                },
                |n| *n += 1,
            )
        };
        // The same static text at a second address is a second entry.
        let grpc = "grpc";
        let elsewhere: &'static str = Box::leak(String::from(grpc).into_boxed_str());
        observe(&labels(&[("rpc.system.name", Value(grpc))]));
        observe(&labels(&[("rpc.system.name", Value(grpc))]));
        observe(&labels(&[("rpc.system.name", Value(elsewhere))]));
        assert_eq!(makes.get(), 2);
        // Interned text is found by its one copy, however many times the
        // caller's text is built: the table stays as bounded as the values.
        for _ in 0..100 {
            let tenant = Value(crate::intern::interned(&String::from("t1")));
            observe(&labels(&[("tp.tenant.id", tenant)]));
        }
        assert_eq!(makes.get(), 3);
        assert_eq!(table.entries(), 3);
        let merged = table.merged(|total: &mut u64, n| *total += n);
        let counts: Vec<(String, u64)> = merged
            .iter()
            .map(|(labels, n)| (labels[0].1.clone(), *n))
            .collect();
        assert_eq!(counts, vec![("grpc".to_owned(), 3), ("t1".to_owned(), 100)]);
    }

    #[test]
    fn observations_land_in_prometheus_buckets() {
        let bounds = [0.1, 0.5, 1.0];
        let mut data = HistData::new(&bounds);
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        for value in [0.05, 0.1, 0.3, 2.0, f64::NAN] {
            data.observe(&bounds, value, TraceId::INVALID);
        }
        data.observe(&bounds, 0.7, trace);
        // `le` is inclusive: 0.1 is in the first bucket.
        assert_eq!(data.counts, vec![2, 1, 1, 2]);
        assert_eq!(data.count, 6);
        // NaN compares as neither least nor greatest.
        assert_eq!((data.min, data.max), (0.05, 2.0));
        assert_eq!(data.exemplars[2], Some((trace, 0.7)));
        assert!(data.exemplars[0].is_none());

        let mut merged = HistData::default();
        merged.merge(&data);
        merged.merge(&data);
        assert_eq!(merged.counts, vec![4, 2, 2, 4]);
        assert_eq!((merged.min, merged.max), (0.05, 2.0));
        assert_eq!(merged.count, 12);
        assert_eq!(merged.exemplars[2], Some((trace, 0.7)));
    }

    /// What prometheus-client writes for one histogram with an exemplar,
    /// one counter and one gauge, against what [`Text`] writes for the
    /// same.
    #[test]
    fn the_text_is_what_prometheus_client_writes() {
        use prometheus_client::metrics::counter::Counter;
        use prometheus_client::metrics::exemplar::HistogramWithExemplars;
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        use prometheus_client::registry::{Registry, Unit};

        let bounds = [0.005, 0.25, 1.0, 7.5];
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let series = vec![
            (
                Key("rpc.method"),
                "thoughtpartner.v1.ConversationService/SendMessage".to_owned(),
            ),
            (Key("tp.tenant.id"), "a \"quoted\" \\ tenant\nid".to_owned()),
        ];
        let observations = [(0.03, Some(trace)), (0.004, None), (9.0, Some(trace))];

        let mut registry = Registry::default();
        let histograms = Family::<
            Vec<(String, String)>,
            HistogramWithExemplars<Vec<(String, String)>>,
            _,
        >::new_with_constructor(move || {
            HistogramWithExemplars::new(bounds.iter().copied())
        });
        registry.register_with_unit(
            "rpc_server_call_duration",
            "Duration of served calls",
            Unit::Seconds,
            histograms.clone(),
        );
        let counters = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("tp_coach_replies", "Replies stored", counters.clone());
        let prometheus_labels: Vec<(String, String)> = series
            .iter()
            .map(|(k, v)| (k.0.replace('.', "_"), v.clone()))
            .collect();
        let mut ours = HistData::new(&bounds);
        for (value, trace) in observations {
            let exemplar = trace.map(|t| vec![("trace_id".to_owned(), t.to_string())]);
            histograms
                .get_or_create(&prometheus_labels)
                .observe(value, exemplar, None);
            ours.observe(&bounds, value, trace.unwrap_or(TraceId::INVALID));
        }
        counters.get_or_create(&prometheus_labels).inc_by(7);
        let gauges = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register("db_client_connection_max", "Pool size", gauges.clone());
        gauges.get_or_create(&prometheus_labels).set(-4);
        let mut theirs = String::new();
        prometheus_client::encoding::text::encode_registry(&mut theirs, &registry).unwrap();

        let mut text = String::new();
        let mut writer = Text { out: &mut text };
        let name = "rpc_server_call_duration_seconds";
        writer
            .descriptor(
                name,
                "Duration of served calls",
                Some("seconds"),
                "histogram",
            )
            .unwrap();
        writer.histogram(name, &bounds, &series, &ours).unwrap();
        writer
            .descriptor("tp_coach_replies", "Replies stored", None, "counter")
            .unwrap();
        writer
            .sample("tp_coach_replies", "_total", &series, 7)
            .unwrap();
        writer
            .descriptor("db_client_connection_max", "Pool size", None, "gauge")
            .unwrap();
        writer
            .sample("db_client_connection_max", "", &series, -4)
            .unwrap();
        assert_eq!(text, theirs);
    }

    #[test]
    fn a_series_without_labels_has_no_braces() {
        let mut text = String::new();
        Text { out: &mut text }
            .sample("runs", "_total", &[], 2)
            .unwrap();
        assert_eq!(text, "runs_total 2\n");
    }
}
