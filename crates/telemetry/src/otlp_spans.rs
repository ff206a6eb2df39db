//! Spans exported over OTLP/gRPC, each encoded to its protobuf bytes on the
//! thread that ends it.
//!
//! The SDK's batch processor hands every finished `SpanData` to an export
//! thread, where `opentelemetry-otlp` converts it into the generated protobuf
//! structs (a `String` or `Vec` for every id, name, attribute key and value:
//! ~30 allocations a span), encodes them, and frees both there, on another
//! thread than the one that allocated them. Measured with the load
//! generator (BENCHMARKS, session 19): that conversion alone, done on the
//! worker and the bytes dropped, cost as much as the whole export; spans
//! made and not exported cost about half as much. Here `on_end` writes the
//! span's protobuf encoding straight from `SpanData` into a reused
//! per-thread buffer (no allocation for the span), appends it to the
//! pending batch, and drops the `SpanData` where it was made. A thread of
//! its own wraps a batch in its resource and scope and sends it as one
//! `Export` call. The served calls' spans (`call_span`) skip `SpanData`:
//! each ends as its fields, kept in its thread's list and encoded in
//! batches (see [`SpanQueue::defer`]). Spans this encoder does not write
//! itself (with events, links, or array-valued attributes: none of ours)
//! go through the official conversion, so every span is exported as the
//! SDK would.
//!
//! Settings are the SDK's: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4317`),
//! `OTEL_EXPORTER_OTLP_TRACES_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT`
//! (ms, default 10 s), `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048),
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512), `OTEL_BSP_SCHEDULED_DELAY` (ms,
//! 5000). A batch leaves when that many spans wait or the delay has passed;
//! unlike the SDK's processor, what piled up during a slow send leaves in
//! the next request whole (up to the queue's size), not in batch-sized
//! pieces. Spans past the queue's size are dropped and counted in a
//! warning.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf as _, BufMut as _, Bytes};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use prost::Message as _;
use prost::encoding::{WireType, encoded_len_varint};

use crate::call_span::EndedSpan;
use crate::series::PerThread;

/// Where and how to export, read from the SDK's environment variables.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ExportSettings {
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
}

impl ExportSettings {
    /// The settings `var` gives (`std::env::var` in the services).
    pub(crate) fn from_env(var: impl Fn(&str) -> Option<String>) -> Self {
        Self::for_signal("TRACES", var)
    }

    /// The settings of one signal (`TRACES`, `METRICS`): its own
    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_*` variables win over the general ones.
    pub(crate) fn for_signal(signal: &str, var: impl Fn(&str) -> Option<String>) -> Self {
        let set = |key: &str| var(key).filter(|v| !v.trim().is_empty());
        let own = |key: &str| set(&format!("OTEL_EXPORTER_OTLP_{signal}_{key}"));
        let number = |key: &str, default: u64| {
            set(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        let endpoint = own("ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_else(|| "http://localhost:4317".to_owned());
        let headers = own("HEADERS")
            .or_else(|| set("OTEL_EXPORTER_OTLP_HEADERS"))
            .map(|h| parse_headers(&h))
            .unwrap_or_default();
        let timeout_ms = own("TIMEOUT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_TIMEOUT"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(10_000);
        let max_queue = usize::try_from(number("OTEL_BSP_MAX_QUEUE_SIZE", 2048))
            .unwrap_or(2048)
            .max(1);
        let max_batch = usize::try_from(number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
            .unwrap_or(512)
            .clamp(1, max_queue);
        Self {
            endpoint,
            headers,
            timeout: Duration::from_millis(timeout_ms),
            max_queue,
            max_batch,
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULED_DELAY", 5000)),
        }
    }
}

/// `key1=value1,key2=value2`, values percent-decoded where they can be (as
/// the OTLP exporter specification says); pairs without `=` are skipped.
fn parse_headers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then(|| (key.to_ascii_lowercase(), percent_decode(value.trim())))
        })
        .collect()
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| value.to_owned())
}

// ---------------------------------------------------------------- encoding

/// A varint, as prost writes it. prost's `encode_varint` is an out-of-line
/// loop a byte at a time, called ~60 times a span (callgrind: ~30% of a
/// span's encoding); nearly every key and length here fits one or two
/// bytes, written inline (`always`: plain `#[inline]` was not taken).
#[inline(always)]
fn encode_varint(value: u64, out: &mut Vec<u8>) {
    if value < 0x80 {
        out.push(value as u8);
    } else if value < 0x4000 {
        out.extend_from_slice(&[(value as u8) | 0x80, (value >> 7) as u8]);
    } else {
        prost::encoding::encode_varint(value, out);
    }
}

/// A field's key (tag and wire type), as prost writes it.
#[inline(always)]
fn encode_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire_type as u32), out);
}

fn len_field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_len_field(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn put_nonempty(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    if !bytes.is_empty() {
        put_len_field(tag, bytes, out);
    }
}

fn put_fixed64(tag: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.put_u64_le(value);
    }
}

fn put_varint(tag: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An attribute's value as this encoder writes it: the scalar kinds
/// (arrays go through the official conversion, see `encodable`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum AttributeValue<'a> {
    Str(&'a str),
    Bool(bool),
    I64(i64),
    F64(f64),
}

impl<'a> AttributeValue<'a> {
    /// As the SDK's attribute value (the tests' SDK-made spans).
    pub(crate) fn to_value(self) -> Value {
        match self {
            Self::Str(s) => Value::from(s.to_owned()),
            Self::Bool(b) => Value::Bool(b),
            Self::I64(v) => Value::I64(v),
            Self::F64(v) => Value::F64(v),
        }
    }

    fn of(value: &'a Value) -> Option<Self> {
        match value {
            Value::String(s) => Some(Self::Str(s.as_str())),
            Value::Bool(b) => Some(Self::Bool(*b)),
            Value::I64(v) => Some(Self::I64(*v)),
            Value::F64(v) => Some(Self::F64(*v)),
            _ => None,
        }
    }

    /// The `AnyValue` message's encoded length.
    fn encoded_len(self) -> usize {
        match self {
            Self::Str(s) => len_field_len(1, s.len()),
            Self::Bool(_) => prost::encoding::key_len(2) + 1,
            Self::I64(v) => prost::encoding::key_len(3) + encoded_len_varint(v as u64),
            Self::F64(_) => prost::encoding::key_len(4) + 8,
        }
    }

    fn put(self, out: &mut Vec<u8>) {
        match self {
            Self::Str(s) => put_len_field(1, s.as_bytes(), out),
            Self::Bool(b) => {
                encode_key(2, WireType::Varint, out);
                encode_varint(u64::from(b), out);
            }
            Self::I64(v) => {
                encode_key(3, WireType::Varint, out);
                encode_varint(v as u64, out);
            }
            Self::F64(v) => {
                encode_key(4, WireType::SixtyFourBit, out);
                out.put_f64_le(v);
            }
        }
    }
}

/// Appends `KeyValue` messages as field `tag` of the enclosing message.
fn put_attributes<'k, 'v>(
    tag: u32,
    attributes: impl Iterator<Item = (&'k str, AttributeValue<'v>)>,
    out: &mut Vec<u8>,
) {
    for (key, value) in attributes {
        let value_len = value.encoded_len();
        let pair_len = len_field_len(1, key.len()) + len_field_len(2, value_len);
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(pair_len as u64, out);
        put_len_field(1, key.as_bytes(), out);
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(value_len as u64, out);
        value.put(out);
    }
}

/// The `Span` message's field of attributes.
const SPAN_ATTRIBUTES: u32 = 9;

/// `attributes` as a span's encoded attribute fields, for
/// [`SpanParts::encoded_attributes`]: made once for attributes that many
/// spans share.
pub(crate) fn encode_attributes<'k, 'v>(
    attributes: impl Iterator<Item = (&'k str, AttributeValue<'v>)>,
) -> Box<[u8]> {
    let mut out = Vec::new();
    put_attributes(SPAN_ATTRIBUTES, attributes, &mut out);
    out.into_boxed_slice()
}

/// The scalar attributes of `attributes`, as [`put_attributes`] takes them.
fn scalar_attributes(attributes: &[KeyValue]) -> impl Iterator<Item = (&str, AttributeValue<'_>)> {
    attributes
        .iter()
        .filter_map(|kv| AttributeValue::of(&kv.value).map(|value| (kv.key.as_str(), value)))
}

/// Whether this encoder writes `span` itself: no events, no links, nothing
/// dropped by the span limits, no array-valued attributes (none of this
/// service's spans have any).
fn encodable(span: &SpanData) -> bool {
    span.events.is_empty()
        && span.links.is_empty()
        && span.dropped_attributes_count == 0
        && span.events.dropped_count == 0
        && span.links.dropped_count == 0
        && !span
            .attributes
            .iter()
            .any(|kv| matches!(kv.value, Value::Array(_)))
}

/// What an exported span is made of, read from the SDK's `SpanData` or,
/// for the served call's span, from `call_span` without one.
pub(crate) struct SpanParts<'a, A> {
    pub context: &'a SpanContext,
    /// `SpanId::INVALID` for a root span.
    pub parent_span_id: SpanId,
    pub parent_is_remote: bool,
    pub name: &'a str,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    /// Attributes already encoded (by [`encode_attributes`]), written
    /// before `attributes`.
    pub encoded_attributes: &'a [u8],
    pub attributes: A,
    pub status: &'a Status,
}

/// The OTLP `Span` message for `span`, appended to `out`.
pub(crate) fn encode_span(span: &SpanData, out: &mut Vec<u8>) {
    if !encodable(span) {
        let official: opentelemetry_proto::tonic::trace::v1::Span = span.clone().into();
        // Encoding into a Vec cannot run out of room.
        let _ = official.encode(out);
        return;
    }
    put_span(
        SpanParts {
            context: &span.span_context,
            parent_span_id: span.parent_span_id,
            parent_is_remote: span.parent_span_is_remote,
            name: &span.name,
            kind: span.span_kind.clone(),
            start: span.start_time,
            end: span.end_time,
            encoded_attributes: &[],
            attributes: scalar_attributes(&span.attributes),
            status: &span.status,
        },
        out,
    );
}

/// The OTLP `Span` message made of `span`, appended to `out`, byte for byte
/// as `opentelemetry-proto`'s conversion and prost would write it.
pub(crate) fn put_span<'a, 'k, 'v>(
    span: SpanParts<'a, impl Iterator<Item = (&'k str, AttributeValue<'v>)>>,
    out: &mut Vec<u8>,
) {
    let context = span.context;
    put_len_field(1, &context.trace_id().to_bytes(), out);
    put_len_field(2, &context.span_id().to_bytes(), out);
    if *context.trace_state() != TraceState::NONE {
        put_nonempty(3, context.trace_state().header().as_bytes(), out);
    }
    if span.parent_span_id != SpanId::INVALID {
        put_len_field(4, &span.parent_span_id.to_bytes(), out);
    }
    put_nonempty(5, span.name.as_bytes(), out);
    let kind: i32 = match span.kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    put_varint(6, kind as u64, out);
    put_fixed64(7, nanos(span.start), out);
    put_fixed64(8, nanos(span.end), out);
    out.extend_from_slice(span.encoded_attributes);
    put_attributes(SPAN_ATTRIBUTES, span.attributes, out);
    // Status is always present, as the official conversion makes it.
    let (code, message): (u64, &str) = match span.status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    };
    let message_len = if message.is_empty() {
        0
    } else {
        len_field_len(2, message.len())
    };
    let code_len = if code == 0 {
        0
    } else {
        prost::encoding::key_len(3) + encoded_len_varint(code)
    };
    encode_key(15, WireType::LengthDelimited, out);
    encode_varint((message_len + code_len) as u64, out);
    put_nonempty(2, message.as_bytes(), out);
    put_varint(3, code, out);
    // Flags as the official conversion sets them: the W3C flags, and that
    // whether the parent is remote is known.
    let mut flags = u32::from(context.trace_flags().to_u8()) | 0x100;
    if span.parent_is_remote {
        flags |= 0x200;
    }
    encode_key(16, WireType::ThirtyTwoBit, out);
    out.put_u32_le(flags);
}

/// The encoded `Resource` message.
pub(crate) fn encode_resource(resource: &Resource) -> Vec<u8> {
    let attributes: Vec<KeyValue> = resource
        .iter()
        .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
        .collect();
    let mut out = Vec::new();
    put_attributes(1, scalar_attributes(&attributes), &mut out);
    out
}

fn encode_scope(scope: &InstrumentationScope) -> Vec<u8> {
    let official: opentelemetry_proto::tonic::common::v1::InstrumentationScope =
        (scope, None).into();
    official.encode_to_vec()
}

/// Spans of one instrumentation scope waiting for export: each a
/// `ScopeSpans.spans` field (tag, length, message).
struct ScopeBatch {
    scope: InstrumentationScope,
    spans: Vec<u8>,
}

#[derive(Default)]
struct Pending {
    scopes: Vec<ScopeBatch>,
    count: usize,
    /// Incremented by `force_flush`; the thread answers with `flushed`.
    flush_requests: u64,
    flushed: u64,
    /// Set by the export thread as it ends.
    exited: bool,
    /// The largest batch of one scope sent so far, in bytes: a new batch's
    /// buffer starts that large, so it is not reallocated (and copied) as
    /// it fills.
    batch_capacity: usize,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Each thread's ended call spans, not yet encoded (see
    /// [`SpanQueue::defer`]).
    ended: PerThread<Vec<EndedSpan>>,
    /// Wakes the export thread (a full batch, a flush, shutdown) and those
    /// waiting for a flush.
    wake: Condvar,
    stopping: AtomicBool,
    dropped: AtomicU64,
    settings: ExportSettings,
}

impl Shared {
    /// Waits on `wake` until `done` holds (`Some`) or `timeout` has passed
    /// (`None`).
    fn wait_for(
        &self,
        pending: MutexGuard<'_, Pending>,
        timeout: Duration,
        done: impl Fn(&Pending) -> bool,
    ) -> Option<()> {
        let (pending, _) = self
            .wake
            .wait_timeout_while(pending, timeout, |p| !done(p))
            .unwrap_or_else(|e| e.into_inner());
        done(&pending).then_some(())
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A thread that panicked mid-append leaves whole spans only (each
        // is appended in one `extend_from_slice`).
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The most a new batch's buffer starts with (see `Pending::batch_capacity`).
const MAX_BATCH_CAPACITY: usize = 1 << 20;

thread_local! {
    /// One span's encoding, reused: no allocation per span once warm.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
    /// A batch of deferred spans' encodings, each a `ScopeSpans.spans`
    /// field, and where each ends.
    static ENCODED: RefCell<(Vec<u8>, Vec<usize>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Ended call spans a thread keeps before it encodes them (see
/// [`SpanQueue::defer`]).
const ENCODE_BATCH: usize = 32;

/// The span processor: see the module's documentation.
pub(crate) struct OtlpSpanProcessor {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for OtlpSpanProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSpanProcessor")
            .field("endpoint", &self.shared.settings.endpoint)
            .finish_non_exhaustive()
    }
}

/// Sends one encoded `ExportTraceServiceRequest`.
pub(crate) trait SendBatch: Send + 'static {
    fn send(&mut self, request: Bytes) -> Result<(), String>;
}

impl OtlpSpanProcessor {
    /// Starts the export thread, which sends through `sender`.
    pub(crate) fn start(
        settings: ExportSettings,
        resource: &Resource,
        mut sender: impl SendBatch,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            ended: PerThread::new(),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            settings,
        });
        let resource = encode_resource(resource);
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-spans".into())
            .spawn(move || export_loop(&thread_shared, &resource, &mut sender))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl OtlpSpanProcessor {
    /// A handle that appends spans encoded elsewhere (the served call's
    /// span, made without the SDK: see `call_span`) to this processor's
    /// batches.
    pub(crate) fn queue(&self) -> SpanQueue {
        SpanQueue {
            shared: self.shared.clone(),
        }
    }
}

/// Appends encoded spans to an [`OtlpSpanProcessor`]'s pending batch; they
/// leave with its next export, and its flush and shutdown cover them.
#[derive(Clone)]
pub(crate) struct SpanQueue {
    shared: Arc<Shared>,
}

impl SpanQueue {
    /// Keeps an ended call span in this thread's list, and when the list
    /// holds [`ENCODE_BATCH`], encodes them all and appends them under one
    /// lock. The export thread encodes what the lists hold whenever it
    /// wakes (a full batch, the delay, a flush, shutdown), so a span waits
    /// no longer than it did encoded.
    ///
    /// Why not encode each as it ends: between two of a thread's spans run
    /// a whole call's h2, tonic, sqlx and coach, and the encoder ran cold
    /// every time, as metric observations did (see `metrics::Pending`).
    /// Measured against encoding each as it ended (`tp-loadgen run
    /// --phases builds`, three runs): 5, 12 and 12 µs less CPU per
    /// SendMessage.
    pub(crate) fn defer(&self, span: EndedSpan) {
        let shared = &*self.shared;
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let full = shared.ended.with(|mine| {
            mine.push(span);
            (mine.len() >= ENCODE_BATCH)
                .then(|| std::mem::replace(mine, Vec::with_capacity(ENCODE_BATCH)))
        });
        if let Some(batch) = full {
            shared.append_ended(batch);
        }
    }

    /// Appends the span `encode` writes (an OTLP `Span` message) under
    /// `scope`, unless the queue is full (the span is dropped and counted)
    /// or the processor is shutting down.
    pub(crate) fn push(&self, scope: &InstrumentationScope, encode: impl FnOnce(&mut Vec<u8>)) {
        let shared = &*self.shared;
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            encode(&mut scratch);
            let full = {
                let mut pending = shared.lock();
                if pending.count >= shared.settings.max_queue {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let index = pending.scope_index(scope);
                put_len_field(2, &scratch, &mut pending.scopes[index].spans);
                pending.count += 1;
                pending.count == shared.settings.max_batch
            };
            if full {
                shared.wake.notify_all();
            }
        });
    }
}

impl Shared {
    /// Encodes `spans` and appends them to the pending batch, up to the
    /// queue's size (the rest are dropped and counted).
    fn append_ended(&self, spans: Vec<EndedSpan>) {
        ENCODED.with(|encoded| {
            let (bytes, ends) = &mut *encoded.borrow_mut();
            bytes.clear();
            ends.clear();
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                for span in &spans {
                    scratch.clear();
                    span.encode(&mut scratch);
                    put_len_field(2, &scratch, bytes);
                    ends.push(bytes.len());
                }
            });
            let full = {
                let mut pending = self.lock();
                let before = pending.count;
                let mut start = 0;
                for (span, &end) in spans.iter().zip(ends.iter()) {
                    let encoded = &bytes[start..end];
                    start = end;
                    if pending.count >= self.settings.max_queue {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let index = pending.scope_index(span.scope);
                    pending.scopes[index].spans.extend_from_slice(encoded);
                    pending.count += 1;
                }
                before < self.settings.max_batch && pending.count >= self.settings.max_batch
            };
            if full {
                self.wake.notify_all();
            }
        });
        // The spans' fields are freed here, mostly on the thread that
        // made them.
        drop(spans);
    }

    fn ended_is_empty(&self) -> bool {
        let mut empty = true;
        self.ended.each(|mine| empty &= mine.is_empty());
        empty
    }

    /// Every thread's deferred spans, encoded and appended.
    fn append_all_ended(&self) {
        let mut spans = Vec::new();
        self.ended.each_mut(|mine| spans.append(mine));
        if !spans.is_empty() {
            self.append_ended(spans);
        }
    }
}

impl Pending {
    /// The index of `scope`'s batch, made if it has none yet.
    fn scope_index(&mut self, scope: &InstrumentationScope) -> usize {
        match self.scopes.iter().position(|b| b.scope == *scope) {
            Some(index) => index,
            None => {
                let capacity = self.batch_capacity.max(64 * 1024);
                self.scopes.push(ScopeBatch {
                    scope: scope.clone(),
                    spans: Vec::with_capacity(capacity),
                });
                self.scopes.len() - 1
            }
        }
    }
}

/// The export thread: waits for a full batch, the delay, a flush or
/// shutdown, then sends what is pending, deferred spans included.
fn export_loop(shared: &Shared, resource: &[u8], sender: &mut impl SendBatch) {
    let settings = &shared.settings;
    loop {
        let flush_request = {
            let pending = shared.lock();
            let (pending, _) = shared
                .wake
                .wait_timeout_while(pending, settings.delay, |p| {
                    p.count < settings.max_batch
                        && p.flush_requests == p.flushed
                        && !shared.stopping.load(Ordering::Acquire)
                })
                .unwrap_or_else(|e| e.into_inner());
            pending.flush_requests
        };
        // Read before the deferred spans are taken: a flush answered
        // covers every span deferred before it was asked for.
        shared.append_all_ended();
        let (scopes, count) = {
            let mut pending = shared.lock();
            let count = std::mem::take(&mut pending.count);
            let largest = pending.scopes.iter().map(|b| b.spans.len()).max();
            // Capped: a backlog's batch (up to the queue's size) should not
            // make every later batch's buffer that large.
            pending.batch_capacity = pending
                .batch_capacity
                .max(largest.unwrap_or(0))
                .min(MAX_BATCH_CAPACITY);
            (std::mem::take(&mut pending.scopes), count)
        };
        if count > 0 {
            let request = wrap(resource, &scopes);
            if let Err(error) = sender.send(request) {
                tracing::warn!(spans = count, %error, "could not export spans");
            }
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "spans dropped: more finished than the export queue holds (OTEL_BSP_MAX_QUEUE_SIZE)"
            );
        }
        {
            let mut pending = shared.lock();
            pending.flushed = flush_request;
        }
        shared.wake.notify_all();
        if shared.stopping.load(Ordering::Acquire) {
            let mut pending = shared.lock();
            if pending.count == 0 && shared.ended_is_empty() {
                pending.exited = true;
                drop(pending);
                shared.wake.notify_all();
                return;
            }
        }
    }
}

/// The `ExportTraceServiceRequest`: one `ResourceSpans` with a
/// `ScopeSpans` per scope. Sized first and written into one buffer, so
/// each span's bytes are copied once here (building the `ScopeSpans` apart
/// and then the request copied every span twice more, with the
/// reallocations of a growing buffer: callgrind put it at ~1.6k
/// instructions per span).
fn wrap(resource: &[u8], scopes: &[ScopeBatch]) -> Bytes {
    let parts: Vec<(Vec<u8>, &str, usize)> = scopes
        .iter()
        .map(|batch| {
            let scope = encode_scope(&batch.scope);
            let schema_url = batch.scope.schema_url().unwrap_or_default();
            let len = len_field_len(1, scope.len())
                + batch.spans.len()
                + if schema_url.is_empty() {
                    0
                } else {
                    len_field_len(3, schema_url.len())
                };
            (scope, schema_url, len)
        })
        .collect();
    let resource_spans_len = len_field_len(1, resource.len())
        + parts
            .iter()
            .map(|(_, _, len)| len_field_len(2, *len))
            .sum::<usize>();
    let mut request = Vec::with_capacity(len_field_len(1, resource_spans_len));
    encode_key(1, WireType::LengthDelimited, &mut request);
    encode_varint(resource_spans_len as u64, &mut request);
    put_len_field(1, resource, &mut request);
    for (batch, (scope, schema_url, len)) in scopes.iter().zip(&parts) {
        encode_key(2, WireType::LengthDelimited, &mut request);
        encode_varint(*len as u64, &mut request);
        put_len_field(1, scope, &mut request);
        request.extend_from_slice(&batch.spans);
        put_nonempty(3, schema_url.as_bytes(), &mut request);
    }
    debug_assert_eq!(request.len(), len_field_len(1, resource_spans_len));
    Bytes::from(request)
}

impl SpanProcessor for OtlpSpanProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.queue()
                .push(&span.instrumentation_scope, |out| encode_span(&span, out));
        }
        // `span` is dropped here, on the thread that made it.
    }

    fn force_flush(&self) -> OTelSdkResult {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let mut pending = self.shared.lock();
        pending.flush_requests += 1;
        let wanted = pending.flush_requests;
        self.shared.wake.notify_all();
        let timeout = self.shared.settings.timeout;
        self.shared
            .wait_for(pending, timeout, |p| p.flushed >= wanted)
            .ok_or(OTelSdkError::Timeout(timeout))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        // Bounded: the last export needs the runtime's I/O, and a process
        // ending must not hang on a collector that does not answer.
        let bound = timeout.min(self.shared.settings.timeout);
        self.shared
            .wait_for(self.shared.lock(), bound, |p| p.exited)
            .ok_or(OTelSdkError::Timeout(bound))?;
        thread
            .join()
            .map_err(|_| OTelSdkError::InternalFailure("the export thread panicked".into()))
    }
}

// ------------------------------------------------------------- transport

/// Sends batches with one gRPC `Export` call each, from the export thread,
/// on a single-threaded runtime of its own that only that thread drives.
///
/// On the services' runtime (as at first), every batch handed its request
/// to tonic's buffer task and the connection's task on the worker threads
/// that serve calls, and each hand-off and each flow-control round trip
/// woke a worker: measured with the load generator, sending cost the
/// services' CPU 9-18 us per SendMessage (three spans) against encoding the
/// same spans and not sending them. Here the connection is polled only
/// while a batch is being sent, by the thread that sends it; nothing needs
/// it in between (no keep-alive pings are configured).
pub(crate) struct GrpcSender {
    /// `Some` until dropped: a runtime may not be dropped where blocking
    /// is not allowed (a sender that never reached its thread is dropped
    /// in the async code that made it), so it is shut down in the
    /// background instead.
    runtime: Option<tokio::runtime::Runtime>,
    client: tonic::client::Grpc<tonic::transport::Channel>,
    headers: tonic::metadata::MetadataMap,
    timeout: Duration,
    /// The collector's method (traces or metrics `Export`).
    path: &'static str,
}

impl Drop for GrpcSender {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl GrpcSender {
    /// A lazily connecting sender of spans to `settings.endpoint`.
    pub(crate) fn new(settings: &ExportSettings) -> Result<Self, String> {
        Self::to(
            settings,
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        )
    }

    /// A lazily connecting sender to the collector's method `path`.
    pub(crate) fn to(settings: &ExportSettings, path: &'static str) -> Result<Self, String> {
        // Everything that can fail before the runtime exists: a runtime
        // dropped on an error path here would be dropped in async code.
        let endpoint = tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|e| format!("OTLP endpoint `{}`: {e}", settings.endpoint))?;
        let mut headers = tonic::metadata::MetadataMap::new();
        for (key, value) in &settings.headers {
            match (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                value.parse(),
            ) {
                (Ok(key), Ok(value)) => {
                    headers.insert(key, value);
                }
                _ => return Err(format!("OTLP header `{key}` is not a valid header")),
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("could not start the OTLP exporter's runtime: {e}"))?;
        // The channel's tasks belong to the runtime current when it is made.
        let channel = {
            let _entered = runtime.enter();
            endpoint.connect_lazy()
        };
        Ok(Self {
            runtime: Some(runtime),
            client: tonic::client::Grpc::new(channel),
            headers,
            timeout: settings.timeout,
            path,
        })
    }
}

impl SendBatch for GrpcSender {
    fn send(&mut self, request: Bytes) -> Result<(), String> {
        let mut call = tonic::Request::new(request);
        *call.metadata_mut() = self.headers.clone();
        let client = &mut self.client;
        let timeout = self.timeout;
        let path = http::uri::PathAndQuery::from_static(self.path);
        let Some(runtime) = &self.runtime else {
            return Err("the exporter is shutting down".to_owned());
        };
        runtime.block_on(async move {
            let export = async {
                client
                    .ready()
                    .await
                    .map_err(|e| format!("collector unreachable: {e}"))?;
                client
                    .unary(call, path, RawCodec)
                    .await
                    .map(|_| ())
                    .map_err(|status| format!("{}: {}", status.code(), status.message()))
            };
            tokio::time::timeout(timeout, export)
                .await
                .map_err(|_| format!("no answer in {timeout:?}"))?
        })
    }
}

/// Sends a request's bytes as they are; reads the answer's bytes and
/// ignores them (a partial success only says what was rejected).
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

#[derive(Clone, Copy, Debug, Default)]
struct RawEncoder;

#[derive(Clone, Copy, Debug, Default)]
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, Self::Error> {
        let remaining = src.remaining();
        src.advance(remaining);
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::Array;
    use opentelemetry::trace::{SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use std::borrow::Cow;

    fn span(attributes: Vec<KeyValue>, status: Status, remote_parent: bool) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([7; 16]),
                SpanId::from_bytes([3; 8]),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: if remote_parent {
                SpanId::from_bytes([9; 8])
            } else {
                SpanId::INVALID
            },
            parent_span_is_remote: remote_parent,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("thoughtpartner.v1.ConversationService/SendMessage"),
            start_time: UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789),
            end_time: UNIX_EPOCH + Duration::from_nanos(1_764_000_000_987_654_321),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: InstrumentationScope::builder("gateway").build(),
        }
    }

    fn attributes() -> Vec<KeyValue> {
        vec![
            KeyValue::new("rpc.system.name", "grpc"),
            KeyValue::new(
                "rpc.method",
                "thoughtpartner.v1.ConversationService/SendMessage",
            ),
            KeyValue::new(
                "tp.tenant.id",
                opentelemetry::StringValue::from(Arc::<str>::from("3f6c")),
            ),
            KeyValue::new("gen_ai.usage.input_tokens", 120_i64),
            KeyValue::new("gen_ai.usage.output_tokens", -1_i64),
            KeyValue::new("tp.reply.grounded", true),
            KeyValue::new("tp.reply.ratio", 0.25_f64),
            KeyValue::new("tp.empty", ""),
        ]
    }

    fn decoded(span: &SpanData) -> ProtoSpan {
        let mut out = Vec::new();
        encode_span(span, &mut out);
        ProtoSpan::decode(out.as_slice()).expect("our bytes decode as an OTLP span")
    }

    #[test]
    fn a_span_encodes_as_the_official_conversion_makes_it() {
        for (status, remote) in [
            (Status::Unset, false),
            (Status::Ok, true),
            (Status::error("UNAVAILABLE"), true),
            (Status::error(""), false),
        ] {
            let span = span(attributes(), status, remote);
            let official: ProtoSpan = span.clone().into();
            assert_eq!(decoded(&span), official);
        }
    }

    #[test]
    fn varints_and_keys_are_written_as_prost_writes_them() {
        for value in [0, 1, 127, 128, 300, 16_383, 16_384, 1 << 40, u64::MAX] {
            let (mut ours, mut prosts) = (Vec::new(), Vec::new());
            encode_varint(value, &mut ours);
            prost::encoding::encode_varint(value, &mut prosts);
            assert_eq!(ours, prosts, "{value}");
        }
        for (tag, wire_type) in [
            (1, WireType::LengthDelimited),
            (15, WireType::LengthDelimited),
            (16, WireType::ThirtyTwoBit),
            (2047, WireType::Varint),
        ] {
            let (mut ours, mut prosts) = (Vec::new(), Vec::new());
            encode_key(tag, wire_type, &mut ours);
            prost::encoding::encode_key(tag, wire_type, &mut prosts);
            assert_eq!(ours, prosts, "{tag}");
        }
    }

    #[test]
    fn a_request_of_several_scopes_encodes_as_prost_writes_it() {
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
        let resource = Resource::builder().with_service_name("knowledge").build();
        let scopes = [
            InstrumentationScope::builder("knowledge").build(),
            InstrumentationScope::builder("sqlx")
                .with_version("0.9")
                .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
                .build(),
        ];
        let batches: Vec<ScopeBatch> = scopes
            .iter()
            .enumerate()
            .map(|(i, scope)| {
                let mut spans = Vec::new();
                for _ in 0..=i {
                    let mut one = Vec::new();
                    encode_span(&span(attributes(), Status::Ok, true), &mut one);
                    put_len_field(2, &one, &mut spans);
                }
                ScopeBatch {
                    scope: scope.clone(),
                    spans,
                }
            })
            .collect();
        let ours = wrap(&encode_resource(&resource), &batches);

        let official_resource =
            opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema::from(
                &resource,
            );
        let official = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: official_resource.attributes.0,
                    dropped_attributes_count: 0,
                    entity_refs: Vec::new(),
                }),
                scope_spans: scopes
                    .iter()
                    .enumerate()
                    .map(|(i, scope)| ScopeSpans {
                        scope: Some((scope, None).into()),
                        spans: (0..=i)
                            .map(|_| span(attributes(), Status::Ok, true).into())
                            .collect(),
                        schema_url: scope.schema_url().unwrap_or_default().to_owned(),
                    })
                    .collect(),
                schema_url: String::new(),
            }],
        };
        assert_eq!(ours.as_ref(), official.encode_to_vec().as_slice());
    }

    #[test]
    fn spans_with_events_or_arrays_fall_back_to_the_official_conversion() {
        let mut with_array = span(attributes(), Status::Unset, false);
        with_array.attributes.push(KeyValue::new(
            "tp.list",
            Value::Array(Array::from(vec![1_i64, 2, 3])),
        ));
        assert!(!encodable(&with_array));
        let official: ProtoSpan = with_array.clone().into();
        assert_eq!(decoded(&with_array), official);

        let mut with_event = span(attributes(), Status::Unset, false);
        with_event
            .events
            .events
            .push(opentelemetry::trace::Event::new(
                "retry",
                UNIX_EPOCH + Duration::from_secs(5),
                vec![KeyValue::new("attempt", 2_i64)],
                0,
            ));
        assert!(!encodable(&with_event));
        let official: ProtoSpan = with_event.clone().into();
        assert_eq!(decoded(&with_event), official);
    }

    /// Made and dropped in async code, as `init` does (in the services'
    /// runtime) when a later step of the set-up fails: a runtime dropped
    /// there panics.
    #[tokio::test]
    async fn a_sender_is_made_and_dropped_in_async_code_without_a_panic() {
        let mut good = settings(8, 4, Duration::from_secs(1));
        good.endpoint = "http://127.0.0.1:4317".to_owned();
        drop(GrpcSender::new(&good).expect("a sender"));
        let mut bad_endpoint = good.clone();
        bad_endpoint.endpoint = "not a url".to_owned();
        assert!(GrpcSender::new(&bad_endpoint).is_err());
        let mut bad_header = good;
        bad_header.headers = vec![("bad key".to_owned(), "v".to_owned())];
        assert!(GrpcSender::new(&bad_header).is_err());
    }

    #[test]
    fn headers_are_parsed_as_the_otlp_exporter_reads_them() {
        assert_eq!(
            parse_headers("api-key=secret%20one, X-Tenant = a=b ,broken,=novalue"),
            vec![
                ("api-key".to_owned(), "secret one".to_owned()),
                ("x-tenant".to_owned(), "a=b".to_owned()),
            ]
        );
    }

    #[test]
    fn settings_follow_the_sdk_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let defaults = ExportSettings::from_env(env(&[]));
        assert_eq!(defaults.endpoint, "http://localhost:4317");
        assert_eq!((defaults.max_queue, defaults.max_batch), (2048, 512));
        assert_eq!(defaults.delay, Duration::from_secs(5));
        assert_eq!(defaults.timeout, Duration::from_secs(10));
        let set = ExportSettings::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "500"),
            ("OTEL_BSP_SCHEDULED_DELAY", "200"),
        ]));
        assert_eq!(set.endpoint, "http://traces:4317");
        assert_eq!(set.timeout, Duration::from_millis(2500));
        assert_eq!(
            (set.max_queue, set.max_batch),
            (100, 100),
            "a batch is at most the queue"
        );
        assert_eq!(set.delay, Duration::from_millis(200));
    }

    /// Records each request it is given.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<Vec<Bytes>>>);

    impl SendBatch for Collected {
        fn send(&mut self, request: Bytes) -> Result<(), String> {
            self.0.lock().unwrap().push(request);
            Ok(())
        }
    }

    fn settings(max_queue: usize, max_batch: usize, delay: Duration) -> ExportSettings {
        ExportSettings {
            endpoint: String::new(),
            headers: vec![],
            timeout: Duration::from_secs(10),
            max_queue,
            max_batch,
            delay,
        }
    }

    /// A processor for `service` with an hour's delay (a batch goes when
    /// full, flushed or shut down), sending through `sender`.
    fn processor(
        max_queue: usize,
        max_batch: usize,
        service: &'static str,
        sender: impl SendBatch,
    ) -> OtlpSpanProcessor {
        let resource = Resource::builder().with_service_name(service).build();
        OtlpSpanProcessor::start(
            settings(max_queue, max_batch, Duration::from_secs(3600)),
            &resource,
            sender,
        )
        .unwrap()
    }

    fn requests(collected: &Collected) -> Vec<ExportTraceServiceRequest> {
        collected
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|bytes| ExportTraceServiceRequest::decode(bytes.clone()).expect("decodes"))
            .collect()
    }

    #[test]
    fn a_full_batch_is_sent_as_one_request_with_its_resource_and_scope() {
        let collected = Collected::default();
        let processor = processor(100, 3, "gateway", collected.clone());
        for _ in 0..3 {
            processor.on_end(span(attributes(), Status::Ok, true));
        }
        // The third span filled the batch: it goes without waiting for the
        // (hour-long) delay. Generous, so a slow machine still passes.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while collected.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let sent = requests(&collected);
        assert_eq!(sent.len(), 1);
        let resource_spans = &sent[0].resource_spans;
        assert_eq!(resource_spans.len(), 1);
        let service = resource_spans[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.clone());
        assert_eq!(
            service,
            Some(opentelemetry_proto::tonic::common::v1::AnyValue::from(
                Value::from("gateway")
            ))
        );
        let scopes = &resource_spans[0].scope_spans;
        assert_eq!(scopes.len(), 1);
        assert_eq!(scopes[0].scope.as_ref().unwrap().name, "gateway");
        assert_eq!(scopes[0].spans.len(), 3);
        let official: ProtoSpan = span(attributes(), Status::Ok, true).into();
        assert_eq!(scopes[0].spans[0], official);
        processor
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
    }

    fn example_scope() -> &'static InstrumentationScope {
        static SCOPE: std::sync::OnceLock<InstrumentationScope> = std::sync::OnceLock::new();
        SCOPE.get_or_init(|| InstrumentationScope::builder("conversation").build())
    }

    fn exported_spans(collected: &Collected) -> usize {
        requests(collected)
            .iter()
            .flat_map(|r| &r.resource_spans[0].scope_spans)
            .map(|s| s.spans.len())
            .sum()
    }

    #[test]
    fn deferred_spans_are_encoded_in_batches_and_by_every_flush() {
        let collected = Collected::default();
        let processor = processor(1000, 1000, "conversation", collected.clone());
        let queue = processor.queue();
        for _ in 0..5 {
            queue.defer(EndedSpan::example(example_scope()));
        }
        // Kept, not yet encoded...
        assert_eq!(processor.shared.lock().count, 0);
        // ...until a flush, which covers them.
        processor.force_flush().unwrap();
        assert_eq!(exported_spans(&collected), 5);
        let sent = requests(&collected);
        let span = &sent[0].resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            span.name,
            "thoughtpartner.v1.ConversationService/SendMessage"
        );
        assert_eq!(
            sent[0].resource_spans[0].scope_spans[0]
                .scope
                .as_ref()
                .map(|s| s.name.as_str()),
            Some("conversation")
        );

        // A thread's full list is encoded at once, under one lock.
        for _ in 0..ENCODE_BATCH {
            queue.defer(EndedSpan::example(example_scope()));
        }
        assert_eq!(processor.shared.lock().count, ENCODE_BATCH);
        // Other threads' lists are the export thread's to encode.
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..3 {
                        queue.defer(EndedSpan::example(example_scope()));
                    }
                });
            }
        });
        processor
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
        assert_eq!(exported_spans(&collected), 5 + ENCODE_BATCH + 9);
        // After shutdown nothing more is kept.
        queue.defer(EndedSpan::example(example_scope()));
        assert!(processor.shared.ended_is_empty());
    }

    #[test]
    fn deferred_spans_past_the_queue_are_dropped() {
        let collected = Collected::default();
        let processor = processor(4, 1000, "conversation", collected.clone());
        let queue = processor.queue();
        for _ in 0..ENCODE_BATCH {
            queue.defer(EndedSpan::example(example_scope()));
        }
        assert_eq!(processor.shared.lock().count, 4);
        assert_eq!(
            processor.shared.dropped.load(Ordering::Relaxed),
            (ENCODE_BATCH - 4) as u64
        );
        processor
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
        assert_eq!(exported_spans(&collected), 4);
    }

    #[test]
    fn flush_and_shutdown_send_what_is_pending_and_the_queue_is_bounded() {
        let collected = Collected::default();
        let processor = processor(4, 4, "knowledge", collected.clone());
        processor.on_end(span(attributes(), Status::Unset, false));
        processor.force_flush().unwrap();
        let sent = requests(&collected);
        assert_eq!(sent.len(), 1, "flush sends the one pending span");
        assert_eq!(sent[0].resource_spans[0].scope_spans[0].spans.len(), 1);

        // An unsampled span is not exported.
        let mut unsampled = span(attributes(), Status::Unset, false);
        unsampled.span_context = SpanContext::new(
            TraceId::from_bytes([1; 16]),
            SpanId::from_bytes([1; 8]),
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        processor.on_end(unsampled);
        processor.on_end(span(attributes(), Status::Unset, false));
        processor
            .shutdown_with_timeout(Duration::from_secs(5))
            .unwrap();
        let sent = requests(&collected);
        assert_eq!(sent.len(), 2, "shutdown sends the rest");
        assert_eq!(sent[1].resource_spans[0].scope_spans[0].spans.len(), 1);
        // After shutdown nothing more is taken.
        processor.on_end(span(attributes(), Status::Unset, false));
        assert_eq!(requests(&collected).len(), 2);
    }

    /// Holds every send until opened.
    #[derive(Clone, Default)]
    struct Gated {
        sent: Collected,
        open: Arc<(Mutex<bool>, Condvar)>,
    }

    impl SendBatch for Gated {
        fn send(&mut self, request: Bytes) -> Result<(), String> {
            let (open, wake) = &*self.open;
            let mut open = open.lock().unwrap();
            while !*open {
                open = wake.wait(open).unwrap();
            }
            self.sent.send(request)
        }
    }

    #[test]
    fn spans_past_the_queue_are_dropped_not_held() {
        let gated = Gated::default();
        let processor = processor(2, 2, "knowledge", gated.clone());
        // A full batch: the thread takes it and waits in the closed send.
        processor.on_end(span(attributes(), Status::Unset, false));
        processor.on_end(span(attributes(), Status::Unset, false));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while processor.shared.lock().count != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            processor.shared.lock().count,
            0,
            "the thread took the batch"
        );
        // The queue (2) fills again while the export is stuck; the next is
        // dropped, not held.
        for _ in 0..3 {
            processor.on_end(span(attributes(), Status::Unset, false));
        }
        assert_eq!(processor.shared.lock().count, 2);
        assert_eq!(processor.shared.dropped.load(Ordering::Relaxed), 1);
        {
            let (open, wake) = &*gated.open;
            *open.lock().unwrap() = true;
            wake.notify_all();
        }
        processor
            .shutdown_with_timeout(Duration::from_secs(10))
            .unwrap();
        let exported: usize = requests(&gated.sent)
            .iter()
            .map(|r| r.resource_spans[0].scope_spans[0].spans.len())
            .sum();
        assert_eq!(exported, 4, "every span the queue held is exported");
    }
}
