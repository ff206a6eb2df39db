//! Every metric in `schema.toml`, recorded twice: into per-thread tables of
//! series (`series`: histograms keep trace-id exemplars) that the ops port
//! writes as OpenMetrics text, always scrapeable, and into OpenTelemetry
//! instruments from the global meter provider, which exports over OTLP when
//! `init` configured an exporter and is a no-op otherwise. Gauges, sampled
//! on a scrape rather than on a call's path, are `prometheus-client`'s.
//!
//! A [`Metrics`] handle is made once per service, not once per process: the
//! end-to-end tests run all three services in one process and each must
//! expose its own registry.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::intern::interned;
use crate::series::{self, HistData, LabelText, PerThread, Sharded, Text};
use opentelemetry::trace::TraceId;

/// What the ops port answers `/metrics` with: OpenMetrics, the text format
/// that carries exemplars.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Distinct tenants one process labels its metrics with before folding the
/// rest into [`OTHER_TENANT`].
pub const DEFAULT_TENANT_CAP: usize = 1000;

/// The `tp.tenant.id` of every tenant beyond the cap.
pub const OTHER_TENANT: &str = "_other";

/// The `rpc.method` of a path the server does not serve.
pub const OTHER_METHOD: &str = "_OTHER";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("could not encode the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

// ------------------------------------------------------------ gRPC codes

/// The name of a gRPC status code, as `rpc.status_code` carries it. A
/// number outside the protocol's codes is `UNKNOWN`, as gRPC itself treats it.
pub fn status_code_name(code: i64) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// `error.type` of a served call: the code's name for the codes the
/// semantic conventions call server errors, `None` otherwise, so a
/// client's mistakes (bad input, no permission, over its limit) never spend
/// the service's error budget.
pub fn server_error_type(code: i64) -> Option<&'static str> {
    match code {
        4 | 12 | 13 | 14 | 15 => Some(status_code_name(code)),
        0 | 1 | 3 | 5..=11 | 16 => None,
        // UNKNOWN, and anything that is no gRPC code at all.
        _ => Some("UNKNOWN"),
    }
}

/// `error.type` of a call this service made: any code but `OK`.
pub fn client_error_type(code: i64) -> Option<&'static str> {
    (code != 0).then(|| status_code_name(code))
}

// -------------------------------------------------------- the definitions

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Histogram,
    Counter,
    Gauge,
}

/// One metric of `schema.toml` (a unit test holds the two equal).
#[derive(Debug)]
pub(crate) struct Def {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: &'static str,
    pub buckets: &'static [f64],
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl Def {
    /// The Prometheus name by the OpenTelemetry rules (without the `_total`
    /// of counters, which the encoder adds).
    pub(crate) fn prometheus_base(&self) -> String {
        let base = self.name.replace('.', "_");
        match self.unit {
            "s" => format!("{base}_seconds"),
            _ => base,
        }
    }
}

const RPC_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const GEN_AI_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
const DB_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
const AUTH_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0];

pub(crate) const RPC_SERVER_CALL_DURATION: Def = Def {
    name: "rpc.server.call.duration",
    kind: Kind::Histogram,
    unit: "s",
    buckets: RPC_BUCKETS,
    labels: &[
        "rpc.system.name",
        "rpc.method",
        "rpc.status_code",
        "error.type",
        "tp.component",
        "tp.tenant.id",
    ],
    help: "Duration of served gRPC calls, to the end of the response stream",
};
pub(crate) const RPC_CLIENT_CALL_DURATION: Def = Def {
    name: "rpc.client.call.duration",
    kind: Kind::Histogram,
    unit: "s",
    buckets: RPC_BUCKETS,
    labels: &[
        "rpc.system.name",
        "rpc.method",
        "rpc.status_code",
        "error.type",
        "tp.component",
    ],
    help: "Duration of gRPC calls this service made to another of our services",
};
pub(crate) const RPC_TIME_TO_FIRST_MESSAGE: Def = Def {
    name: "tp.rpc.server.time_to_first_message",
    kind: Kind::Histogram,
    unit: "s",
    buckets: RPC_BUCKETS,
    labels: &[
        "rpc.system.name",
        "rpc.method",
        "tp.component",
        "tp.tenant.id",
    ],
    help: "Time from a server-streaming call's arrival to its first response message (SendMessage: the first reply event)",
};
pub(crate) const GEN_AI_OPERATION_DURATION: Def = Def {
    name: "gen_ai.client.operation.duration",
    kind: Kind::Histogram,
    unit: "s",
    buckets: GEN_AI_DURATION_BUCKETS,
    labels: &[
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "error.type",
    ],
    help: "Duration of a responder's reply generation (an LLM call, or the offline coach)",
};
pub(crate) const GEN_AI_TIME_TO_FIRST_CHUNK: Def = Def {
    name: "gen_ai.client.operation.time_to_first_chunk",
    kind: Kind::Histogram,
    unit: "s",
    buckets: GEN_AI_DURATION_BUCKETS,
    labels: &[
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
    ],
    help: "Time from issuing a streamed generation request to its first chunk",
};
pub(crate) const GEN_AI_TOKEN_USAGE: Def = Def {
    name: "gen_ai.client.token.usage",
    kind: Kind::Histogram,
    unit: "{token}",
    buckets: TOKEN_BUCKETS,
    labels: &[
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.token.type",
    ],
    help: "Input and output tokens per generation",
};
pub(crate) const DB_OPERATION_DURATION: Def = Def {
    name: "db.client.operation.duration",
    kind: Kind::Histogram,
    unit: "s",
    buckets: DB_BUCKETS,
    labels: &[
        "db.system.name",
        "db.operation.name",
        "tp.component",
        "error.type",
    ],
    help: "Duration of database transactions, by the operation they serve",
};
pub(crate) const DB_CONNECTION_COUNT: Def = Def {
    name: "db.client.connection.count",
    kind: Kind::Gauge,
    unit: "{connection}",
    buckets: &[],
    labels: &[
        "db.client.connection.pool.name",
        "db.client.connection.state",
    ],
    help: "Open connections in the pool, by state (idle or used)",
};
pub(crate) const DB_CONNECTION_MAX: Def = Def {
    name: "db.client.connection.max",
    kind: Kind::Gauge,
    unit: "{connection}",
    buckets: &[],
    labels: &["db.client.connection.pool.name"],
    help: "The most connections the pool may open",
};
pub(crate) const COACH_REPLIES: Def = Def {
    name: "tp.coach.replies",
    kind: Kind::Counter,
    unit: "{reply}",
    buckets: &[],
    labels: &["tp.responder", "tp.coach.compliant"],
    help: "Stored coach replies, by responder and whether the persona rule checker found no violation",
};
pub(crate) const COACH_POLICY_VIOLATIONS: Def = Def {
    name: "tp.coach.policy_violations",
    kind: Kind::Counter,
    unit: "{violation}",
    buckets: &[],
    labels: &["tp.responder", "tp.coach.rule"],
    help: "Persona rule violations found in replies, by rule",
};
pub(crate) const AUTH_DURATION: Def = Def {
    name: "tp.auth.duration",
    kind: Kind::Histogram,
    unit: "s",
    buckets: AUTH_BUCKETS,
    labels: &["tp.auth.mode", "tp.auth.outcome"],
    help: "Time to authenticate a call; outcome accepted, rejected (the caller's fault) or error (ours: the IdP unreachable)",
};
pub(crate) const RATE_LIMIT_REJECTIONS: Def = Def {
    name: "tp.rate_limit.rejections",
    kind: Kind::Counter,
    unit: "{call}",
    buckets: &[],
    labels: &["tp.limit.scope", "tp.tenant.id"],
    help: "Calls refused by the limits, by scope (tenant, user, streams; capacity: the gateway's cap on calls in flight)",
};
pub(crate) const RETENTION_DELETED: Def = Def {
    name: "tp.retention.deleted",
    kind: Kind::Counter,
    unit: "{row}",
    buckets: &[],
    labels: &["tp.retention.kind"],
    help: "Rows the retention job deleted for good, by kind (conversation, message)",
};
pub(crate) const RETENTION_RUN_DURATION: Def = Def {
    name: "tp.retention.run.duration",
    kind: Kind::Histogram,
    unit: "s",
    buckets: DB_BUCKETS,
    labels: &["tp.retention.outcome"],
    help: "One pass of the retention job over every organisation with a retention, by outcome (ok, error)",
};

/// Every metric this crate registers, in `schema.toml`'s order (the schema
/// test compares the two).
#[cfg(test)]
pub(crate) const ALL: [&Def; 15] = [
    &RPC_SERVER_CALL_DURATION,
    &RPC_CLIENT_CALL_DURATION,
    &RPC_TIME_TO_FIRST_MESSAGE,
    &GEN_AI_OPERATION_DURATION,
    &GEN_AI_TIME_TO_FIRST_CHUNK,
    &GEN_AI_TOKEN_USAGE,
    &DB_OPERATION_DURATION,
    &DB_CONNECTION_COUNT,
    &DB_CONNECTION_MAX,
    &COACH_REPLIES,
    &COACH_POLICY_VIOLATIONS,
    &AUTH_DURATION,
    &RATE_LIMIT_REJECTIONS,
    &RETENTION_DELETED,
    &RETENTION_RUN_DURATION,
];

// ----------------------------------------------------------------- labels

/// A label key, kept as its OpenTelemetry name and written to Prometheus
/// with dots as underscores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key(pub(crate) &'static str);

/// A metric's labels; an absent label (no tenant, no error) is left out
/// rather than written empty.
pub(crate) type LabelSet = Vec<(Key, Value)>;

/// A label value: a static name, or a tenant id or model interned for the
/// life of the process (`crate::intern`), so a value is a copied pointer.
/// Compared and hashed by its text; the series tables find entries by the
/// pointer's identity and merge them by text (`series::Sharded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Value(pub(crate) &'static str);

impl Value {
    pub(crate) fn as_str(&self) -> &'static str {
        self.0
    }
}

/// The most labels any metric has (`rpc.server.call.duration`: system,
/// method, status code, error type, component, tenant).
const MAX_LABELS: usize = 6;

/// Builds a metric's labels in its declared order, on the stack: an
/// observation finds its handles by these labels as a slice, so only the
/// first observation of a label set allocates (the map's key). The builder
/// takes and returns it by value, so its methods are `#[inline]`: called,
/// each one copied all six slots (callgrind: 33 calls and ~1.5k
/// instructions per SendMessage in `conversation`). Every value is a
/// static or interned string: no drop glue, no reference counts.
#[derive(Clone, Copy)]
pub(crate) struct Labels {
    items: [(Key, Value); MAX_LABELS],
    len: usize,
}

impl Labels {
    #[inline]
    pub(crate) fn new() -> Self {
        Self {
            items: [(Key(""), Value("")); MAX_LABELS],
            len: 0,
        }
    }

    #[inline]
    fn push(mut self, key: &'static str, value: Value) -> Self {
        // A metric with more labels than MAX_LABELS is a programming error
        // a unit test catches (every metric's declared labels fit); in
        // release the extra label is dropped rather than panic on a
        // caller's request.
        debug_assert!(
            self.len < MAX_LABELS,
            "{key}: more than {MAX_LABELS} labels"
        );
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (Key(key), value);
            self.len += 1;
        }
        self
    }

    #[inline]
    pub(crate) fn with(self, key: &'static str, value: &'static str) -> Self {
        self.push(key, Value(value))
    }

    #[inline]
    pub(crate) fn with_opt(self, key: &'static str, value: Option<&'static str>) -> Self {
        match value {
            Some(value) => self.with(key, value),
            None => self,
        }
    }

    #[inline]
    fn as_slice(&self) -> &[(Key, Value)] {
        &self.items[..self.len]
    }
}

// ------------------------------------------------------------ instruments

/// One metric's series merged across shards, by their labels' text.
pub(crate) enum Points {
    Histogram(BTreeMap<LabelText, HistData>),
    Counter(BTreeMap<LabelText, u64>),
    Gauge(BTreeMap<LabelText, i64>),
}

impl Points {
    /// Adds `other`'s series (of the same metric) to these: counts add up,
    /// a gauge takes `other`'s value.
    pub(crate) fn merge(&mut self, other: Points) {
        match (self, other) {
            (Points::Histogram(mine), Points::Histogram(theirs)) => {
                for (labels, data) in theirs {
                    mine.entry(labels)
                        .or_insert_with(HistData::default)
                        .merge(&data);
                }
            }
            (Points::Counter(mine), Points::Counter(theirs)) => {
                for (labels, value) in theirs {
                    *mine.entry(labels).or_default() += value;
                }
            }
            (Points::Gauge(mine), Points::Gauge(theirs)) => mine.extend(theirs),
            // One name is one kind of metric (schema.toml).
            _ => {}
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Points::Histogram(points) => points.is_empty(),
            Points::Counter(points) => points.is_empty(),
            Points::Gauge(points) => points.is_empty(),
        }
    }
}

/// Every [`Metrics`] made with telemetry on in this process (each lives as
/// long as the process), for the OTLP exporter: one per service; the
/// end-to-end tests, which run the services in one process, make three per
/// test app, and the exporter counts those of one component together.
pub(crate) mod live {
    use std::sync::Mutex;

    use super::{Inner, Metrics};

    static LIVE: Mutex<Vec<&'static Inner>> = Mutex::new(Vec::new());

    pub(super) fn add(inner: &'static Inner) {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(inner);
    }

    /// Every [`Metrics`] made with telemetry on, oldest first.
    pub(crate) fn all() -> Vec<Metrics> {
        let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.iter().map(|inner| Metrics { inner }).collect()
    }
}

/// One metric's descriptor and a line (or lines) per series, by `line`;
/// nothing for a metric without a series yet, as prometheus-client leaves
/// out its own.
fn encode_family<W: std::fmt::Write, T>(
    out: &mut W,
    def: &Def,
    unit: Option<&str>,
    kind: &str,
    series: &BTreeMap<LabelText, T>,
    mut line: impl FnMut(&mut Text<'_, W>, &str, &LabelText, &T) -> std::fmt::Result,
) -> std::fmt::Result {
    if series.is_empty() {
        return Ok(());
    }
    let name = def.prometheus_base();
    let mut text = Text { out };
    text.descriptor(&name, def.help, unit, kind)?;
    for (labels, value) in series {
        line(&mut text, &name, labels, value)?;
    }
    Ok(())
}

struct Hist {
    /// False with telemetry off: nothing is recorded (see [`crate::enabled`]).
    on: bool,
    def: &'static Def,
    series: Sharded<HistData>,
}

impl Hist {
    fn new(def: &'static Def, on: bool) -> Self {
        debug_assert_eq!(def.kind, Kind::Histogram, "{}", def.name);
        Self {
            on,
            def,
            series: Sharded::new(),
        }
    }

    /// Takes the labels by reference: moved, all six slots were copied.
    fn record(&self, value: f64, labels: &Labels, trace_id: TraceId) {
        if !self.on {
            return;
        }
        let labels = labels.as_slice();
        debug_assert!(
            labels.iter().all(|(k, _)| self.def.labels.contains(&k.0)),
            "{}: a label not in schema.toml",
            self.def.name
        );
        let bounds = self.def.buckets;
        self.series.with(
            labels,
            |_| HistData::new(bounds),
            |data| data.observe(bounds, value, trace_id),
        );
    }

    fn merged(&self) -> BTreeMap<LabelText, HistData> {
        self.series
            .merged(|total: &mut HistData, shard| total.merge(shard))
    }

    fn encode(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        // Annotations such as `{token}` are dropped by the OpenTelemetry
        // to Prometheus rules: only seconds have a `# UNIT`.
        let unit = (self.def.unit == "s").then_some("seconds");
        let bounds = self.def.buckets;
        encode_family(
            out,
            self.def,
            unit,
            "histogram",
            &self.merged(),
            |text, name, labels, data| text.histogram(name, bounds, labels, data),
        )
    }
}

struct Count {
    on: bool,
    def: &'static Def,
    series: Sharded<u64>,
}

impl Count {
    fn new(def: &'static Def, on: bool) -> Self {
        debug_assert_eq!(def.kind, Kind::Counter, "{}", def.name);
        Self {
            on,
            def,
            series: Sharded::new(),
        }
    }

    fn add(&self, n: u64, labels: &Labels) {
        if !self.on {
            return;
        }
        let labels = labels.as_slice();
        debug_assert!(
            labels.iter().all(|(k, _)| self.def.labels.contains(&k.0)),
            "{}: a label not in schema.toml",
            self.def.name
        );
        self.series.with(labels, |_| 0, |value| *value += n);
    }

    fn merged(&self) -> BTreeMap<LabelText, u64> {
        self.series.merged(|total: &mut u64, shard| *total += shard)
    }

    fn encode(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        encode_family(
            out,
            self.def,
            None,
            "counter",
            &self.merged(),
            |text, name, labels, value| text.sample(name, "_total", labels, *value),
        )
    }
}

/// A gauge: set when sampled (on a scrape), never on a call's path, so one
/// lock for all its series is enough.
struct Level {
    on: bool,
    def: &'static Def,
    values: Mutex<BTreeMap<LabelText, i64>>,
}

impl Level {
    fn new(def: &'static Def, on: bool) -> Self {
        debug_assert_eq!(def.kind, Kind::Gauge, "{}", def.name);
        Self {
            on,
            def,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    fn set(&self, value: i64, labels: Labels) {
        if !self.on {
            return;
        }
        let text = series::label_text(labels.as_slice());
        // A poisoned lock only means another thread panicked mid-insert;
        // the map is still a valid map.
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.insert(text, value);
    }

    fn merged(&self) -> BTreeMap<LabelText, i64> {
        self.values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn encode(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        encode_family(
            out,
            self.def,
            None,
            "gauge",
            &self.merged(),
            |text, name, labels, value| text.sample(name, "", labels, *value),
        )
    }
}

/// The tenants one process has labelled metrics with, up to a cap.
struct TenantCap {
    cap: usize,
    /// Every tenant labelled so far: the one count the cap is held to.
    seen: RwLock<HashSet<&'static str>>,
    /// Each thread's own record of the labels it has handed out, so a
    /// call's lookup takes no lock that the other worker writes.
    handed_out: PerThread<HashSet<&'static str, foldhash::fast::RandomState>>,
}

impl TenantCap {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: RwLock::new(HashSet::new()),
            handed_out: PerThread::new(),
        }
    }

    /// `tenant`'s label, interned: only admitted tenants are, so what is
    /// kept is as bounded as the cap.
    fn label(&self, tenant: &str) -> &'static str {
        self.handed_out.with(|known| {
            if let Some(label) = known.get(tenant) {
                return *label;
            }
            match self.admit(tenant) {
                Some(label) => {
                    known.insert(label);
                    label
                }
                None => OTHER_TENANT,
            }
        })
    }

    /// `tenant`'s label if it has one already, or the cap leaves room and it
    /// gets one now.
    fn admit(&self, tenant: &str) -> Option<&'static str> {
        // A poisoned lock only means another thread panicked mid-insert; the
        // set is still a valid set.
        {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            if let Some(label) = seen.get(tenant) {
                return Some(*label);
            }
            if seen.len() >= self.cap {
                return None;
            }
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if let Some(label) = seen.get(tenant) {
            return Some(*label);
        }
        if seen.len() >= self.cap {
            return None;
        }
        let label = interned(tenant);
        seen.insert(label);
        Some(label)
    }
}

// ------------------------------------------------- deferred observations

/// Observations a thread buffers before it applies them to their series.
const PENDING_BATCH: usize = 64;

/// One observation made and not yet applied to its series.
#[derive(Clone, Copy)]
struct Observation {
    labels: Labels,
    to: Target,
}

/// The series an [`Observation`] goes to.
#[derive(Clone, Copy)]
enum Target {
    Hist {
        hist: &'static Hist,
        value: f64,
        trace_id: TraceId,
    },
    Count {
        count: &'static Count,
        n: u64,
    },
}

impl Observation {
    fn apply(&self) {
        match self.to {
            Target::Hist {
                hist,
                value,
                trace_id,
            } => hist.record(value, &self.labels, trace_id),
            Target::Count { count, n } => count.add(n, &self.labels),
        }
    }
}

/// Each thread's observations not yet applied, applied in batches: when a
/// thread has [`PENDING_BATCH`] of them, and by every reader (a scrape,
/// an OTLP export) before it reads, so nothing recorded before a read is
/// missing from it.
///
/// Why not apply each at once: a SendMessage makes ~17 observations across
/// the three services, each in a different series, between which its
/// call runs h2, tonic, sqlx and the coach. Applied one at a time, every
/// observation ran cold: metrics cost ~23 µs of CPU per SendMessage
/// (session 26, a build with them off) for ~6k instructions, where the
/// rest of a call runs ~1 µs per 1.5k instructions. Buffered, a call only
/// copies each observation into a line its thread just wrote, and a batch
/// applies 64 with the code and series warm from the one before. Measured
/// against the build before (`tp-loadgen run --phases builds`, three
/// runs): 6, 12 and 20 µs less CPU per SendMessage and 0.8 to 2.8 % more
/// of them, though callgrind counts ~3.9k more instructions (the copies).
struct Pending {
    queues: PerThread<Vec<Observation>>,
}

impl Pending {
    fn new() -> Self {
        Self {
            queues: PerThread::new(),
        }
    }

    #[inline]
    fn push(&self, observation: Observation) {
        self.queues.with(|queue| {
            queue.push(observation);
            if queue.len() >= PENDING_BATCH {
                apply(queue);
            }
        });
    }

    /// Applies every thread's pending observations.
    fn apply_all(&self) {
        self.queues.each_mut(apply);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let mut len = 0;
        self.queues.each(|queue| len += queue.len());
        len
    }
}

/// Out of line, so a push stays a few instructions.
#[inline(never)]
fn apply(queue: &mut Vec<Observation>) {
    for observation in queue.iter() {
        observation.apply();
    }
    queue.clear();
}

struct Inner {
    component: &'static str,
    started: SystemTime,
    tenants: TenantCap,
    pending: Pending,
    rpc_server: Hist,
    rpc_client: Hist,
    rpc_first_message: Hist,
    gen_ai_duration: Hist,
    gen_ai_first_chunk: Hist,
    gen_ai_tokens: Hist,
    db_duration: Hist,
    db_connections: Level,
    db_connections_max: Level,
    coach_replies: Count,
    coach_violations: Count,
    auth_duration: Hist,
    rate_limit_rejections: Count,
    retention_deleted: Count,
    retention_runs: Hist,
}

/// One service's metrics: a reference, copied into its layers and
/// handlers, encoded by its ops port. Made once per service and kept for
/// the life of the process: every served and every outgoing call takes a
/// copy, and as an `Arc` each copy and drop updated a reference count
/// that both worker threads wrote, so its cache line moved between the
/// cores on every call.
#[derive(Clone, Copy)]
pub struct Metrics {
    inner: &'static Inner,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("component", &self.inner.component)
            .finish_non_exhaustive()
    }
}

/// Which limit refused a call (`tp.limit.scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitScope {
    Tenant,
    User,
    Streams,
    /// The gateway's cap on calls in flight from everyone (no tenant).
    Capacity,
}

impl LimitScope {
    pub fn as_str(&self) -> &'static str {
        match self {
            LimitScope::Tenant => "tenant",
            LimitScope::User => "user",
            LimitScope::Streams => "streams",
            LimitScope::Capacity => "capacity",
        }
    }
}

/// How a call was authenticated (`tp.auth.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Hs256,
    Jwks,
}

/// How authentication ended (`tp.auth.outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Accepted,
    /// The caller's fault: a bad or expired token.
    Rejected,
    /// Ours: the identity provider could not be reached.
    Error,
}

/// Input or output tokens (`gen_ai.token.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Input,
    Output,
}

/// Who generated a reply (`gen_ai.provider.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenAiProvider {
    OpenAi,
    Anthropic,
    /// The deterministic offline coach.
    Offline,
}

impl GenAiProvider {
    pub fn as_str(&self) -> &'static str {
        match self {
            GenAiProvider::OpenAi => "openai",
            GenAiProvider::Anthropic => "anthropic",
            GenAiProvider::Offline => "thoughtpartner.offline",
        }
    }
}

/// Database pool occupancy, sampled when scraped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSample {
    pub used: u64,
    pub idle: u64,
    pub max: u64,
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn trace() -> TraceId {
    crate::exemplar_trace_id()
}

impl Metrics {
    /// The metrics of one service (`tp.component`), with the default cap on
    /// distinct tenants.
    pub fn new(component: &'static str) -> Self {
        Self::with_tenant_cap(component, DEFAULT_TENANT_CAP)
    }

    /// Like [`Metrics::new`], labelling at most `tenant_cap` distinct
    /// tenants; calls of any other tenant are labelled [`OTHER_TENANT`].
    pub fn with_tenant_cap(component: &'static str, tenant_cap: usize) -> Self {
        Self::build(component, tenant_cap, crate::enabled())
    }

    /// With `on` false (telemetry off, the load generator's baseline of what
    /// telemetry costs), every metric is registered and nothing is recorded:
    /// the handlers' own metrics (GenAI, coaching, authentication) cost
    /// nothing either, so that "off" leaves no telemetry to compare with.
    fn build(component: &'static str, tenant_cap: usize, on: bool) -> Self {
        let inner = Inner {
            component,
            started: SystemTime::now(),
            tenants: TenantCap::new(tenant_cap),
            pending: Pending::new(),
            rpc_server: Hist::new(&RPC_SERVER_CALL_DURATION, on),
            rpc_client: Hist::new(&RPC_CLIENT_CALL_DURATION, on),
            rpc_first_message: Hist::new(&RPC_TIME_TO_FIRST_MESSAGE, on),
            gen_ai_duration: Hist::new(&GEN_AI_OPERATION_DURATION, on),
            gen_ai_first_chunk: Hist::new(&GEN_AI_TIME_TO_FIRST_CHUNK, on),
            gen_ai_tokens: Hist::new(&GEN_AI_TOKEN_USAGE, on),
            db_duration: Hist::new(&DB_OPERATION_DURATION, on),
            db_connections: Level::new(&DB_CONNECTION_COUNT, on),
            db_connections_max: Level::new(&DB_CONNECTION_MAX, on),
            coach_replies: Count::new(&COACH_REPLIES, on),
            coach_violations: Count::new(&COACH_POLICY_VIOLATIONS, on),
            auth_duration: Hist::new(&AUTH_DURATION, on),
            rate_limit_rejections: Count::new(&RATE_LIMIT_REJECTIONS, on),
            retention_deleted: Count::new(&RETENTION_DELETED, on),
            retention_runs: Hist::new(&RETENTION_RUN_DURATION, on),
        };
        // Leaked: see `Metrics`. A process makes one per service (the tests
        // a few hundred, some kilobytes each).
        let inner: &'static Inner = Box::leak(Box::new(inner));
        if on {
            live::add(inner);
        }
        Self { inner }
    }

    fn histograms(&self) -> [&Hist; 9] {
        let inner = self.inner;
        [
            &inner.rpc_server,
            &inner.rpc_client,
            &inner.rpc_first_message,
            &inner.gen_ai_duration,
            &inner.gen_ai_first_chunk,
            &inner.gen_ai_tokens,
            &inner.db_duration,
            &inner.auth_duration,
            &inner.retention_runs,
        ]
    }

    fn counters(&self) -> [&Count; 4] {
        let inner = self.inner;
        [
            &inner.coach_replies,
            &inner.coach_violations,
            &inner.rate_limit_rejections,
            &inner.retention_deleted,
        ]
    }

    fn gauges(&self) -> [&Level; 2] {
        [&self.inner.db_connections, &self.inner.db_connections_max]
    }

    /// Defers an observation of `hist` (see [`Pending`]).
    #[inline]
    fn observe(&self, hist: &'static Hist, value: f64, labels: &Labels, trace_id: TraceId) {
        if hist.on {
            self.inner.pending.push(Observation {
                labels: *labels,
                to: Target::Hist {
                    hist,
                    value,
                    trace_id,
                },
            });
        }
    }

    /// Defers adding `n` to `count` (see [`Pending`]).
    #[inline]
    fn count(&self, count: &'static Count, n: u64, labels: &Labels) {
        if count.on {
            self.inner.pending.push(Observation {
                labels: *labels,
                to: Target::Count { count, n },
            });
        }
    }

    /// Every metric with a series, merged across shards, for OTLP.
    pub(crate) fn snapshot(&self) -> Vec<(&'static Def, Points)> {
        self.inner.pending.apply_all();
        let histograms = self
            .histograms()
            .map(|h| (h.def, Points::Histogram(h.merged())));
        let counters = self
            .counters()
            .map(|c| (c.def, Points::Counter(c.merged())));
        let gauges = self.gauges().map(|g| (g.def, Points::Gauge(g.merged())));
        histograms
            .into_iter()
            .chain(counters)
            .chain(gauges)
            .filter(|(_, points)| !points.is_empty())
            .collect()
    }

    /// When these metrics started counting: the start of every cumulative
    /// series.
    pub(crate) fn started(&self) -> SystemTime {
        self.inner.started
    }

    /// The service these metrics are of (`tp.component`).
    pub fn component(&self) -> &'static str {
        self.inner.component
    }

    /// The exposition, in the OpenMetrics text format
    /// ([`OPENMETRICS_CONTENT_TYPE`]), exemplars included.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut text = String::new();
        self.encode_to(&mut text)?;
        Ok(text)
    }

    /// The exposition written piece by piece to `out`, for a reader that
    /// consumes it line by line instead of holding it whole (with 1,000
    /// tenants it is tens of MB).
    pub fn encode_to(&self, out: &mut impl std::fmt::Write) -> Result<(), MetricsError> {
        self.inner.pending.apply_all();
        for histogram in self.histograms() {
            histogram.encode(out)?;
        }
        for counter in self.counters() {
            counter.encode(out)?;
        }
        for gauge in self.gauges() {
            gauge.encode(out)?;
        }
        out.write_str("# EOF\n")?;
        Ok(())
    }

    /// The `tp.tenant.id` label for `tenant`: itself while fewer than the
    /// cap have been seen, [`OTHER_TENANT`] after.
    pub fn tenant_label(&self, tenant: &str) -> &'static str {
        self.inner.tenants.label(tenant)
    }

    /// A served call, to the end of its response stream.
    pub(crate) fn rpc_server_call(
        &self,
        method: &'static str,
        code: i64,
        tenant: Option<&'static str>,
        duration: Duration,
        trace_id: TraceId,
    ) {
        let labels = Labels::new()
            .with("rpc.system.name", "grpc")
            .with("rpc.method", method)
            .with("rpc.status_code", status_code_name(code))
            .with_opt("error.type", server_error_type(code))
            .with("tp.component", self.inner.component)
            .with_opt("tp.tenant.id", tenant);
        self.observe(&self.inner.rpc_server, secs(duration), &labels, trace_id);
    }

    /// A server-streaming call's first response message.
    pub(crate) fn rpc_first_message(
        &self,
        method: &'static str,
        tenant: Option<&'static str>,
        elapsed: Duration,
        trace_id: TraceId,
    ) {
        let labels = Labels::new()
            .with("rpc.system.name", "grpc")
            .with("rpc.method", method)
            .with("tp.component", self.inner.component)
            .with_opt("tp.tenant.id", tenant);
        self.observe(
            &self.inner.rpc_first_message,
            secs(elapsed),
            &labels,
            trace_id,
        );
    }

    /// A call this service made to another of ours.
    pub(crate) fn rpc_client_call(
        &self,
        method: &'static str,
        code: i64,
        duration: Duration,
        trace_id: TraceId,
    ) {
        let labels = Labels::new()
            .with("rpc.system.name", "grpc")
            .with("rpc.method", method)
            .with("rpc.status_code", status_code_name(code))
            .with_opt("error.type", client_error_type(code))
            .with("tp.component", self.inner.component);
        self.observe(&self.inner.rpc_client, secs(duration), &labels, trace_id);
    }

    /// One reply generation (`gen_ai.client.operation.duration`), with the
    /// current span's trace as the exemplar. `error_type` names the failure
    /// (e.g. `timeout`, `rate_limited`, or a provider's error kind).
    pub fn gen_ai_operation(
        &self,
        provider: GenAiProvider,
        model: &str,
        duration: Duration,
        error_type: Option<&'static str>,
    ) {
        let labels = Labels::new()
            .with("gen_ai.operation.name", "chat")
            .with("gen_ai.provider.name", provider.as_str())
            .with("gen_ai.request.model", interned(model))
            .with_opt("error.type", error_type);
        self.observe(
            &self.inner.gen_ai_duration,
            secs(duration),
            &labels,
            trace(),
        );
    }

    /// Time from a streamed generation's request to its first chunk.
    pub fn gen_ai_first_chunk(&self, provider: GenAiProvider, model: &str, elapsed: Duration) {
        let labels = Labels::new()
            .with("gen_ai.operation.name", "chat")
            .with("gen_ai.provider.name", provider.as_str())
            .with("gen_ai.request.model", interned(model));
        self.observe(
            &self.inner.gen_ai_first_chunk,
            secs(elapsed),
            &labels,
            trace(),
        );
    }

    /// Tokens one generation used, of one type.
    pub fn gen_ai_tokens(
        &self,
        provider: GenAiProvider,
        model: &str,
        token_type: TokenType,
        tokens: u64,
    ) {
        let labels = Labels::new()
            .with("gen_ai.operation.name", "chat")
            .with("gen_ai.provider.name", provider.as_str())
            .with("gen_ai.request.model", interned(model))
            .with(
                "gen_ai.token.type",
                match token_type {
                    TokenType::Input => "input",
                    TokenType::Output => "output",
                },
            );
        // Token counts are far below 2^53: exact as f64.
        self.observe(&self.inner.gen_ai_tokens, tokens as f64, &labels, trace());
    }

    /// One database transaction, named by the operation it serves (a
    /// bounded, code-chosen name such as `complete_exchange`).
    pub fn db_operation(
        &self,
        operation: &'static str,
        duration: Duration,
        error_type: Option<&'static str>,
    ) {
        let labels = Labels::new()
            .with("db.system.name", "postgresql")
            .with("db.operation.name", operation)
            .with("tp.component", self.inner.component)
            .with_opt("error.type", error_type);
        self.observe(&self.inner.db_duration, secs(duration), &labels, trace());
    }

    /// A pool's occupancy, as sampled now (the ops port samples its pools
    /// on every scrape).
    pub fn db_pool(&self, pool: &'static str, sample: PoolSample) {
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (state, count) in [("idle", sample.idle), ("used", sample.used)] {
            self.inner.db_connections.set(
                as_i64(count),
                Labels::new()
                    .with("db.client.connection.pool.name", pool)
                    .with("db.client.connection.state", state),
            );
        }
        self.inner.db_connections_max.set(
            as_i64(sample.max),
            Labels::new().with("db.client.connection.pool.name", pool),
        );
    }

    /// A stored coach reply; `responder` is one of a few code-chosen names.
    pub fn coach_reply(&self, responder: &'static str, compliant: bool) {
        self.count(
            &self.inner.coach_replies,
            1,
            &Labels::new().with("tp.responder", responder).with(
                "tp.coach.compliant",
                if compliant { "true" } else { "false" },
            ),
        );
    }

    /// One persona rule a reply broke.
    pub fn coach_policy_violation(&self, responder: &'static str, rule: &'static str) {
        self.count(
            &self.inner.coach_violations,
            1,
            &Labels::new()
                .with("tp.responder", responder)
                .with("tp.coach.rule", rule),
        );
    }

    /// One authentication, with the current span's trace as the exemplar.
    pub fn auth(&self, mode: AuthMode, outcome: AuthOutcome, duration: Duration) {
        let labels = Labels::new()
            .with(
                "tp.auth.mode",
                match mode {
                    AuthMode::Hs256 => "hs256",
                    AuthMode::Jwks => "jwks",
                },
            )
            .with(
                "tp.auth.outcome",
                match outcome {
                    AuthOutcome::Accepted => "accepted",
                    AuthOutcome::Rejected => "rejected",
                    AuthOutcome::Error => "error",
                },
            );
        self.observe(&self.inner.auth_duration, secs(duration), &labels, trace());
    }

    /// A call refused by a limit; `tenant` is bounded by the cap.
    pub fn rate_limit_rejection(&self, scope: LimitScope, tenant: Option<&str>) {
        let labels = Labels::new()
            .with("tp.limit.scope", scope.as_str())
            .with_opt("tp.tenant.id", tenant.map(|t| self.tenant_label(t)));
        self.count(&self.inner.rate_limit_rejections, 1, &labels);
    }

    /// Rows one organisation's retention pass deleted.
    pub fn retention_deleted(&self, conversations: u64, messages: u64) {
        for (kind, rows) in [("conversation", conversations), ("message", messages)] {
            if rows > 0 {
                self.count(
                    &self.inner.retention_deleted,
                    rows,
                    &Labels::new().with("tp.retention.kind", kind),
                );
            }
        }
    }

    /// One pass of the retention job over every organisation.
    pub fn retention_run(&self, ok: bool, duration: Duration) {
        self.observe(
            &self.inner.retention_runs,
            secs(duration),
            &Labels::new().with("tp.retention.outcome", if ok { "ok" } else { "error" }),
            trace(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_have_their_protocol_names() {
        assert_eq!(status_code_name(0), "OK");
        assert_eq!(status_code_name(3), "INVALID_ARGUMENT");
        assert_eq!(status_code_name(8), "RESOURCE_EXHAUSTED");
        assert_eq!(status_code_name(16), "UNAUTHENTICATED");
        assert_eq!(status_code_name(2), "UNKNOWN");
        assert_eq!(status_code_name(99), "UNKNOWN");
        assert_eq!(status_code_name(-1), "UNKNOWN");
        // Each code's name matches tonic's own.
        for n in 0..=16 {
            let code = tonic::Code::from_i32(n);
            let expected = format!("{code:?}");
            let ours = status_code_name(i64::from(n))
                .replace('_', "")
                .to_lowercase();
            assert_eq!(ours, expected.to_lowercase(), "code {n}");
        }
    }

    #[test]
    fn the_tenant_cap_holds_across_threads() {
        let metrics = Metrics::with_tenant_cap("gateway", 2);
        let label = |tenant: &'static str| {
            std::thread::scope(|s| s.spawn(move || metrics.tenant_label(tenant)).join())
                .map(|label| label.to_string())
                .unwrap_or_default()
        };
        // Each label from a thread of its own: one count for all of them.
        assert_eq!(label("a"), "a");
        assert_eq!(label("b"), "b");
        assert_eq!(label("c"), OTHER_TENANT);
        assert_eq!(metrics.tenant_label("b"), "b");
        assert_eq!(metrics.tenant_label("c"), OTHER_TENANT);
        assert_eq!(label("a"), "a");
    }

    #[test]
    fn only_server_errors_have_an_error_type_on_the_server() {
        let server: Vec<i64> = (0..=16)
            .filter(|c| server_error_type(*c).is_some())
            .collect();
        assert_eq!(server, vec![2, 4, 12, 13, 14, 15]);
        assert_eq!(server_error_type(13), Some("INTERNAL"));
        assert_eq!(server_error_type(3), None);
        assert_eq!(server_error_type(16), None);
        assert_eq!(server_error_type(1), None);
        assert_eq!(server_error_type(42), Some("UNKNOWN"));
        // On the client, every non-OK code is an error.
        assert_eq!(client_error_type(0), None);
        assert_eq!(client_error_type(3), Some("INVALID_ARGUMENT"));
        assert_eq!(client_error_type(14), Some("UNAVAILABLE"));
    }

    #[test]
    fn tenants_beyond_the_cap_are_folded() {
        let metrics = Metrics::with_tenant_cap("gateway", 2);
        assert_eq!(metrics.tenant_label("a"), "a");
        assert_eq!(metrics.tenant_label("b"), "b");
        assert_eq!(metrics.tenant_label("c"), OTHER_TENANT);
        // Tenants seen before the cap keep their own label.
        assert_eq!(metrics.tenant_label("a"), "a");
        assert_eq!(metrics.tenant_label("d"), OTHER_TENANT);

        metrics.rate_limit_rejection(LimitScope::Tenant, Some("x"));
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                r#"tp_rate_limit_rejections_total{tp_limit_scope="tenant",tp_tenant_id="_other"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn observations_through_bound_handles_add_up_per_label_set() {
        let metrics = Metrics::new("knowledge");
        let method = || "thoughtpartner.internal.knowledge.v1.RetrievalService/Retrieve";
        for (code, tenant, millis) in [
            (0, "t1", 10),
            (0, "t1", 20),
            (0, "t2", 40),
            (5, "t1", 80),
            (0, "t1", 30),
        ] {
            metrics.rpc_server_call(
                method(),
                code,
                Some(tenant),
                Duration::from_millis(millis),
                TraceId::INVALID,
            );
        }
        let text = metrics.encode().unwrap();
        let series = |status: &str, tenant: &str, field: &str| {
            let prefix = format!(
                "rpc_server_call_duration_seconds_{field}{{rpc_system_name=\"grpc\",rpc_method=\"thoughtpartner.internal.knowledge.v1.RetrievalService/Retrieve\",rpc_status_code=\"{status}\",tp_component=\"knowledge\",tp_tenant_id=\"{tenant}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map(str::to_owned)
        };
        assert_eq!(series("OK", "t1", "count").as_deref(), Some("3"), "{text}");
        let sum: f64 = series("OK", "t1", "sum").unwrap().parse().unwrap();
        assert!((sum - 0.06).abs() < 1e-9, "{sum}");
        assert_eq!(series("OK", "t2", "count").as_deref(), Some("1"), "{text}");
        assert_eq!(
            series("NOT_FOUND", "t1", "count").as_deref(),
            Some("1"),
            "{text}"
        );

        for _ in 0..3 {
            metrics.coach_policy_violation("offline", "advice_before_question");
        }
        metrics.coach_policy_violation("offline", "too_many_questions");
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(r#"tp_coach_policy_violations_total{tp_responder="offline",tp_coach_rule="advice_before_question"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tp_coach_policy_violations_total{tp_responder="offline",tp_coach_rule="too_many_questions"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn every_metrics_labels_fit_on_the_stack() {
        for def in ALL {
            assert!(
                def.labels.len() <= MAX_LABELS,
                "{}: {} labels, Labels holds {MAX_LABELS}",
                def.name,
                def.labels.len()
            );
        }
    }

    #[test]
    fn a_label_built_from_a_callers_text_is_one_series() {
        // The model label is interned from the caller's text, a new String
        // on every observation here: one series, counting both, held by one
        // interned copy.
        let metrics = Metrics::new("conversation");
        for _ in 0..2 {
            let model = String::from("offline-coach");
            metrics.gen_ai_tokens(GenAiProvider::Offline, &model, TokenType::Input, 7);
        }
        assert_one_series_counting(&metrics, "gen_ai_client_token_usage_count{", 2);
        assert!(std::ptr::eq(
            interned(&String::from("offline-coach")),
            interned("offline-coach")
        ));
    }

    /// The exposition has exactly one series whose line starts with
    /// `prefix`, and it has counted `count` observations.
    fn replies(metrics: &Metrics) -> Option<u64> {
        let text = metrics.encode().ok()?;
        text.lines()
            .find(|l| l.starts_with("tp_coach_replies_total{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
    }

    #[test]
    fn observations_wait_for_a_batch_or_a_reader() {
        let metrics = Metrics::build("conversation", 10, true);
        for _ in 0..3 {
            metrics.coach_reply("offline", true);
        }
        // Buffered, not yet in a series...
        assert_eq!(metrics.inner.pending.len(), 3);
        assert!(metrics.inner.coach_replies.merged().is_empty());
        // ...until a reader applies them before reading.
        assert_eq!(replies(&metrics), Some(3));
        assert_eq!(metrics.inner.pending.len(), 0);

        // A thread applies its own once it has a batch: what waits stays
        // under one batch, read or not.
        for _ in 0..PENDING_BATCH + 5 {
            metrics.coach_reply("offline", true);
        }
        assert_eq!(metrics.inner.pending.len(), 5);
        let applied: u64 = metrics.inner.coach_replies.merged().values().sum();
        assert_eq!(applied, 3 + PENDING_BATCH as u64);
        assert_eq!(replies(&metrics), Some(3 + PENDING_BATCH as u64 + 5));
    }

    #[test]
    fn a_reader_applies_what_other_threads_left_pending() {
        let metrics = Metrics::build("conversation", 10, true);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..7 {
                        metrics.coach_reply("offline", true);
                    }
                });
            }
        });
        assert_eq!(replies(&metrics), Some(21));
        // And the OTLP export's reader too.
        metrics.coach_reply("offline", true);
        let exported: u64 = metrics
            .snapshot()
            .into_iter()
            .filter_map(|(def, points)| match points {
                Points::Counter(series) if def.name == COACH_REPLIES.name => {
                    Some(series.values().sum::<u64>())
                }
                _ => None,
            })
            .sum();
        assert_eq!(exported, 22);
    }

    fn metrics_pending_is_empty(metrics: &Metrics) {
        metrics.coach_reply("offline", true);
        assert_eq!(metrics.inner.pending.len(), 0);
    }

    fn assert_one_series_counting(metrics: &Metrics, prefix: &str, count: u64) {
        let text = metrics.encode().unwrap();
        let counts: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
        assert_eq!(counts.len(), 1, "{text}");
        assert!(counts[0].ends_with(&format!(" {count}")), "{text}");
    }

    #[test]
    fn two_identities_of_one_text_record_into_one_series() {
        // (How entries are found by identity is `series`'s own test.)
        // Both entries for one text record into its one series.
        let metrics = Metrics::new("knowledge");
        let copy: &'static str = Box::leak(
            String::from("thoughtpartner.internal.knowledge.v1.RetrievalService/Retrieve")
                .into_boxed_str(),
        );
        for method in [
            "thoughtpartner.internal.knowledge.v1.RetrievalService/Retrieve",
            copy,
        ] {
            metrics.rpc_server_call(method, 0, None, Duration::from_millis(5), TraceId::INVALID);
        }
        assert_one_series_counting(&metrics, "rpc_server_call_duration_seconds_count{", 2);
    }

    #[test]
    fn with_telemetry_off_nothing_is_recorded() {
        let record = |metrics: &Metrics| {
            metrics.rpc_server_call(
                "thoughtpartner.v1.ConversationService/SendMessage",
                0,
                None,
                Duration::from_millis(30),
                TraceId::INVALID,
            );
            metrics.coach_reply("offline", true);
            metrics.db_pool(
                "app",
                PoolSample {
                    idle: 1,
                    used: 2,
                    max: 4,
                },
            );
            metrics.encode().expect("encodes")
        };
        let on = record(&Metrics::build("conversation", 10, true));
        assert!(
            on.contains("rpc_server_call_duration_seconds_count{"),
            "{on}"
        );
        assert!(on.contains("tp_coach_replies_total{"), "{on}");
        let quiet = Metrics::build("conversation", 10, false);
        let off = record(&quiet);
        // Not a sample of any metric, nor anything kept to apply later.
        assert!(off.lines().all(|line| line.starts_with('#')), "{off}");
        metrics_pending_is_empty(&quiet);
    }

    #[test]
    fn exposition_carries_trace_exemplars_and_prometheus_names() {
        let metrics = Metrics::new("conversation");
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        metrics.rpc_server_call(
            "thoughtpartner.v1.ConversationService/SendMessage",
            0,
            None,
            Duration::from_millis(30),
            trace,
        );
        metrics.rpc_server_call(
            "thoughtpartner.v1.ConversationService/SendMessage",
            13,
            Some("t1"),
            Duration::from_millis(30),
            TraceId::INVALID,
        );
        let text = metrics.encode().unwrap();
        let ok_bucket = r#"rpc_server_call_duration_seconds_bucket{le="0.05",rpc_system_name="grpc",rpc_method="thoughtpartner.v1.ConversationService/SendMessage",rpc_status_code="OK",tp_component="conversation"} 1 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.03"#;
        assert!(text.contains(ok_bucket), "{text}");
        assert!(
            text.contains(r#"rpc_status_code="INTERNAL",error_type="INTERNAL",tp_component="conversation",tp_tenant_id="t1""#),
            "{text}"
        );
        assert!(text.contains("# TYPE rpc_server_call_duration_seconds histogram"));
        assert!(text.contains("# UNIT rpc_server_call_duration_seconds seconds"));
        assert!(text.ends_with("# EOF\n"));
        // No exemplar without a trace.
        let internal_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("INTERNAL") && l.contains("_bucket"))
            .collect();
        assert!(!internal_lines.is_empty());
        assert!(internal_lines.iter().all(|l| !l.contains("trace_id")));

        metrics.coach_reply("offline", true);
        metrics.gen_ai_tokens(GenAiProvider::Offline, "coach", TokenType::Output, 12);
        metrics.db_pool(
            "conversation",
            PoolSample {
                used: 1,
                idle: 2,
                max: 4,
            },
        );
        let text = metrics.encode().unwrap();
        assert!(
            text.contains(
                r#"tp_coach_replies_total{tp_responder="offline",tp_coach_compliant="true"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("gen_ai_client_token_usage_bucket{"), "{text}");
        assert!(text.contains(r#"db_client_connection_count{db_client_connection_pool_name="conversation",db_client_connection_state="idle"} 2"#), "{text}");
        assert!(
            text.contains(
                r#"db_client_connection_max{db_client_connection_pool_name="conversation"} 4"#
            ),
            "{text}"
        );
    }
}
