//! The canonical event's log line, and the batched writer every log line
//! goes through.
//!
//! tracing-subscriber's JSON formatter serialises each event through
//! serde with a visitor per field, formats the timestamp, looks up the
//! current span's stored fields, and writes the line to stdout with one
//! `write` system call. Measured with the load generator, the canonical
//! event's line cost ~33 µs of CPU per service per call, the largest part
//! of telemetry's cost on `SendMessage`. Its fields are few and known, so
//! it is encoded the line itself into a reused buffer, in the
//! same shape as every other log line ([`WithCanonical`] wraps the JSON
//! formatter; other events still go to it):
//!
//! ```json
//! {"timestamp":"…","level":"INFO","fields":{"message":"call",…},"target":"canonical","span":{"trace_id":"…"}}
//! ```
//!
//! and [`BatchedWriter`] appends lines to a buffer that a background thread
//! writes out every [`FLUSH_INTERVAL`] (or at once when it is full), so a
//! busy service makes a few `write` calls a second instead of one per line.
//! The price: a line reaches stdout up to [`FLUSH_INTERVAL`] late, and a
//! process killed with SIGKILL loses at most that much; the telemetry guard
//! flushes on a normal exit.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::CANONICAL_TARGET;
// Written under `span`, as the other log lines carry it.
use crate::log_fields::{TRACE_ID, add_trace_id};

/// How late a log line may reach stdout.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Past this many buffered bytes, the line's writer flushes at once
/// rather than let the buffer grow.
const FLUSH_AT_BYTES: usize = 256 * 1024;

/// The JSON formatter for log lines, with the canonical event encoded
/// here: events of the canonical target are written by [`encode_line`],
/// every other event by the wrapped format (tracing-subscriber's JSON).
pub struct WithCanonical<F>(pub F);

thread_local! {
    /// One line's buffer per thread, reused: no allocation per line once
    /// it has grown to the longest line.
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl<S, N, F> FormatEvent<S, N> for WithCanonical<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        if event.metadata().target() != CANONICAL_TARGET {
            let Some(trace_id) = crate::call_span::current_trace_id() else {
                return self.0.format_event(ctx, writer, event);
            };
            return LINE.with_borrow_mut(|line| {
                line.clear();
                self.0.format_event(ctx, Writer::new(line), event)?;
                add_trace_id(line, trace_id);
                writer.write_str(line)
            });
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            encode_line(
                line,
                event.metadata(),
                time::OffsetDateTime::now_utc(),
                |visitor| event.record(visitor),
            );
            writer.write_str(line)
        })
    }
}

/// Writes one JSON line for an event: `record` feeds the event's fields to
/// the visitor it is given.
pub(crate) fn encode_line(
    line: &mut String,
    metadata: &tracing::Metadata<'_>,
    now: time::OffsetDateTime,
    record: impl FnOnce(&mut dyn Visit),
) {
    line.push_str("{\"timestamp\":\"");
    write_timestamp(line, now);
    line.push_str("\",\"level\":\"");
    line.push_str(metadata.level().as_str());
    line.push_str("\",\"fields\":{");
    let mut fields = JsonFields {
        line,
        first: true,
        trace_id: None,
    };
    record(&mut fields);
    let trace_id = fields.trace_id.take();
    line.push_str("},\"target\":");
    push_json_str(line, metadata.target());
    if let Some(trace_id) = trace_id {
        line.push_str(",\"span\":{\"trace_id\":");
        push_json_str(line, trace_id.as_str());
        line.push('}');
    }
    line.push_str("}\n");
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber writes it.
/// Digits written by hand: seven padded `write!` arguments cost ~1.7k
/// instructions a line (session 29).
fn write_timestamp(line: &mut String, now: time::OffsetDateTime) {
    let year = now.year();
    let Ok(year) = u32::try_from(year) else {
        return write_timestamp_slowly(line, now);
    };
    if year > 9999 {
        return write_timestamp_slowly(line, now);
    }
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], u32::from(u8::from(now.month())));
    put_digits(&mut text[8..10], u32::from(now.day()));
    put_digits(&mut text[11..13], u32::from(now.hour()));
    put_digits(&mut text[14..16], u32::from(now.minute()));
    put_digits(&mut text[17..19], u32::from(now.second()));
    put_digits(&mut text[20..26], now.microsecond());
    // Only ASCII digits and separators were written.
    line.push_str(std::str::from_utf8(&text).unwrap_or_default());
}

/// Years before 0 or after 9999 (which `time` only makes with its
/// large-dates feature).
fn write_timestamp_slowly(line: &mut String, now: time::OffsetDateTime) {
    let _ = write!(
        line,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.microsecond()
    );
}

/// Writes `value`'s last `out.len()` decimal digits into `out`, zero-padded.
fn put_digits(out: &mut [u8], mut value: u32) {
    for digit in out.iter_mut().rev() {
        // `value % 10` is below 10.
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

struct JsonFields<'a> {
    line: &'a mut String,
    first: bool,
    trace_id: Option<HeldTraceId>,
}

/// An event's trace id, held until the end of its line: the 32 hex digits
/// the canonical event carries (as a `&str`) fit without an allocation.
enum HeldTraceId {
    Hex([u8; 32]),
    Other(String),
}

impl HeldTraceId {
    fn new(value: &str) -> Self {
        match value.as_bytes().first_chunk::<32>() {
            Some(hex) if value.len() == 32 => Self::Hex(*hex),
            _ => Self::Other(value.to_owned()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `&str`: valid UTF-8.
            Self::Hex(hex) => std::str::from_utf8(hex).unwrap_or_default(),
            Self::Other(text) => text,
        }
    }
}

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        if !self.first {
            self.line.push(',');
        }
        self.first = false;
        push_json_str(self.line, field.name());
        self.line.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == TRACE_ID {
            self.trace_id = Some(HeldTraceId::new(value));
            return;
        }
        self.key(field);
        push_json_str(self.line, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.line, "{value}");
        } else {
            // JSON has no NaN or infinity.
            self.line.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == TRACE_ID {
            self.trace_id = Some(HeldTraceId::Other(format!("{value:?}")));
            return;
        }
        self.key(field);
        // The message (`format_args!`) and `%`/`?` fields arrive here.
        self.line.push('"');
        let _ = write!(
            JsonEscaped {
                line: &mut *self.line
            },
            "{value:?}"
        );
        self.line.push('"');
    }
}

/// Escapes what is written through it as the inside of a JSON string.
struct JsonEscaped<'a> {
    line: &'a mut String,
}

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_escaped(self.line, s);
        Ok(())
    }
}

fn push_json_str(line: &mut String, value: &str) {
    line.push('"');
    push_escaped(line, value);
    line.push('"');
}

/// Appends `value` escaped as the inside of a JSON string.
///
/// Checked eight bytes at a time first and copied whole when nothing needs
/// escaping, as in almost every value (ids, method and field names): the
/// byte-at-a-time loop this replaced cost ~13 instructions a byte, 4.6k to
/// 7k a canonical line, the largest part of it (callgrind, unsampled calls;
/// session 29). A value that needs escaping still goes byte by byte.
fn push_escaped(line: &mut String, value: &str) {
    let bytes = value.as_bytes();
    if !any_byte_needs_escape(bytes) {
        line.push_str(value);
        return;
    }
    // Rare: byte by byte.
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if needs_escape(b) {
            // `b` is ASCII, so `i` is a char boundary.
            line.push_str(&value[start..i]);
            push_escape(line, b);
            start = i + 1;
        }
    }
    line.push_str(&value[start..]);
}

/// Whether any byte of `bytes` [`needs_escape`], a word at a time, the
/// last (short) word padded with a byte that needs none.
fn any_byte_needs_escape(bytes: &[u8]) -> bool {
    let (words, rest) = bytes.as_chunks::<8>();
    let mut last = [b'a'; 8];
    last[..rest.len()].copy_from_slice(rest);
    words
        .iter()
        .chain(std::iter::once(&last))
        .any(|word| any_needs_escape(u64::from_le_bytes(*word)))
}

/// JSON strings must escape `"`, `\` and the control characters below
/// 0x20.
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any of a word's eight bytes [`needs_escape`]: the classic
/// "has a byte less than n" and "has a zero byte" tests, exact for the
/// word as a whole (which byte is not needed: the caller then goes byte
/// by byte).
fn any_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let has_quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let has_backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | has_quote | has_backslash) & HIGH != 0
}

fn push_escape(line: &mut String, b: u8) {
    match b {
        b'"' => line.push_str("\\\""),
        b'\\' => line.push_str("\\\\"),
        b'\n' => line.push_str("\\n"),
        b'\r' => line.push_str("\\r"),
        b'\t' => line.push_str("\\t"),
        _ => {
            let _ = write!(line, "\\u{b:04x}");
        }
    }
}

/// A sink (stdout in the services) written in batches by a background
/// thread. Cloning shares the buffer; [`BatchedWriter::shutdown`] (called
/// by the telemetry guard) writes what is left and stops the thread.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

struct Shared {
    buffer: Mutex<Vec<u8>>,
    sink: Mutex<Box<dyn Write + Send>>,
    wake: Condvar,
    stopping: AtomicBool,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A writer that panicked mid-append leaves at worst a torn line;
        // the buffer is still usable.
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_out(&self, bytes: &[u8]) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let _ = sink.write_all(bytes);
        let _ = sink.flush();
    }

    /// Takes the buffered bytes and writes them, outside the lock so
    /// writers never wait on stdout.
    fn flush(&self, spare: &mut Vec<u8>) {
        {
            let mut buffer = self.lock();
            if buffer.is_empty() {
                return;
            }
            std::mem::swap(&mut *buffer, spare);
        }
        self.write_out(spare);
        spare.clear();
    }
}

impl BatchedWriter {
    /// Batches writes to stdout.
    pub fn stdout() -> io::Result<Self> {
        Self::start(Box::new(io::stdout()))
    }

    /// Starts the flushing thread for `sink`.
    pub fn start(sink: Box<dyn Write + Send>) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Vec::with_capacity(FLUSH_AT_BYTES)),
            sink: Mutex::new(sink),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            flusher: Mutex::new(None),
        });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                let shared = thread_shared;
                let mut spare = Vec::with_capacity(FLUSH_AT_BYTES);
                let stopping = || shared.stopping.load(Ordering::Acquire);
                loop {
                    {
                        // Idle, the thread sleeps until a line arrives (the
                        // first line into an empty buffer wakes it): no
                        // timer ticking while nothing is logged, as in a
                        // service whose exported spans are its canonical
                        // events. Then it gives later lines the interval to
                        // join that one in a single write.
                        let buffer = shared
                            .wake
                            .wait_while(shared.lock(), |buffer| buffer.is_empty() && !stopping())
                            .unwrap_or_else(|e| e.into_inner());
                        let _ = shared
                            .wake
                            .wait_timeout_while(buffer, FLUSH_INTERVAL, |_| !stopping())
                            .unwrap_or_else(|e| e.into_inner());
                    }
                    shared.flush(&mut spare);
                    if shared.stopping.load(Ordering::Acquire) {
                        shared.flush(&mut spare);
                        return;
                    }
                }
            })?;
        *shared.flusher.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(Self { shared })
    }

    /// Writes everything buffered and stops the flushing thread; lines
    /// written afterwards go straight to stdout.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        let handle = self
            .shared
            .flusher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    fn append(&self, bytes: &[u8]) {
        if self.shared.stopping.load(Ordering::Acquire) {
            self.shared.write_out(bytes);
            return;
        }
        let mut buffer = self.shared.lock();
        if buffer.is_empty() {
            // The flushing thread sleeps while the buffer is empty.
            self.shared.wake.notify_one();
        }
        buffer.extend_from_slice(bytes);
        if buffer.len() >= FLUSH_AT_BYTES {
            // Rare: a burst filled the buffer within one interval. Write
            // it here, holding the lock, so the buffer stays bounded.
            let out = std::mem::take(&mut *buffer);
            self.shared.write_out(&out);
        }
    }
}

/// One log line's writer: collects the formatter's pieces and appends the
/// line to the shared buffer in one go when dropped, so lines from
/// different threads never interleave.
pub struct LineWriter<'a> {
    target: &'a BatchedWriter,
    line: Vec<u8>,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.line.is_empty() && bytes.ends_with(b"\n") {
            // The formatters write each line whole: no copy needed.
            self.target.append(bytes);
        } else {
            self.line.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.target.append(&self.line);
        }
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            target: self,
            line: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(buffer: &Buffer) -> Vec<serde_json::Value> {
        String::from_utf8(buffer.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn the_line_is_json_with_every_field_typed_and_the_trace_id_under_span() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(WithCanonical(
                    tracing_subscriber::fmt::format().json().with_target(true),
                ))
                .with_writer(buffer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "elsewhere", answer = 42, "not canonical");
            let tenant: Option<&str> = Some("t-1 \"quoted\"\n\u{1}");
            let absent: Option<&str> = None;
            tracing::event!(
                target: "canonical",
                tracing::Level::INFO,
                tp.component = "gateway",
                tp.tenant.id = tenant,
                tp.member.id = absent,
                gen_ai.usage.input_tokens = 12u64,
                delta = -3i64,
                tp.reply.grounded = true,
                tp.call.duration_ms = 1.25f64,
                not_a_number = f64::NAN,
                trace_id = %"0af7651916cd43dd8448eb211c80319c",
                "call"
            );
            // As the server layer writes it: the trace id's hex as a `&str`.
            tracing::event!(
                target: "canonical",
                tracing::Level::INFO,
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                "call"
            );
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2]["span"]["trace_id"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(lines[2]["fields"]["message"], "call");
        // Other events: tracing-subscriber's JSON, as before.
        assert_eq!(lines[0]["target"], "elsewhere");
        assert_eq!(lines[0]["fields"]["answer"], 42);
        let line = &lines[1];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "canonical");
        assert_eq!(line["span"]["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        let fields = &line["fields"];
        assert_eq!(fields["message"], "call");
        assert_eq!(fields["tp.component"], "gateway");
        assert_eq!(fields["tp.tenant.id"], "t-1 \"quoted\"\n\u{1}");
        assert!(fields.get("tp.member.id").is_none(), "None is left out");
        assert_eq!(fields["gen_ai.usage.input_tokens"], 12);
        assert_eq!(fields["delta"], -3);
        assert_eq!(fields["tp.reply.grounded"], true);
        assert_eq!(fields["tp.call.duration_ms"], 1.25);
        assert!(fields["not_a_number"].is_null());
        assert!(
            fields.get("trace_id").is_none(),
            "the trace id is under span"
        );
        let timestamp = line["timestamp"].as_str().unwrap();
        assert!(
            time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{timestamp} is RFC 3339"
        );
    }

    #[test]
    fn the_timestamp_is_utc_with_microseconds() {
        let at = time::macros::datetime!(2026-03-04 05:06:07.000089 UTC);
        let mut line = String::new();
        write_timestamp(&mut line, at);
        assert_eq!(line, "2026-03-04T05:06:07.000089Z");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut line = String::new();
        push_json_str(&mut line, "a\u{7}b\\c\td");
        assert_eq!(line, "\"a\\u0007b\\\\c\\td\"");
        let parsed: String = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, "a\u{7}b\\c\td");
    }

    /// The escaper as it was: byte by byte.
    fn escaped_byte_by_byte(value: &str) -> String {
        let mut out = String::new();
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out
    }

    #[test]
    fn a_word_needs_escaping_exactly_when_one_of_its_bytes_does() {
        for b in 0..=u8::MAX {
            for fill in [b'a', b'~', 0x80, 0xff, b' ', b'#', b']'] {
                for at in 0..8 {
                    let mut word = [fill; 8];
                    word[at] = b;
                    let expected = word.iter().any(|&w| needs_escape(w));
                    assert_eq!(
                        any_needs_escape(u64::from_le_bytes(word)),
                        expected,
                        "{word:02x?}"
                    );
                }
            }
        }
    }

    #[test]
    fn escaping_matches_byte_by_byte_at_every_offset() {
        let specials = [
            "\"", "\\", "\n", "\r", "\t", "\u{1}", "\u{1f}", "\u{7f}", "é", "€", "😀",
        ];
        for len in 0..20 {
            let plain = "é-x".repeat(len);
            let mut line = String::new();
            push_escaped(&mut line, &plain);
            assert_eq!(line, plain, "nothing to escape");
            for at in 0..=len {
                for special in specials {
                    let mut value = "x".repeat(len);
                    value.insert_str(at, special);
                    let mut line = String::new();
                    push_escaped(&mut line, &value);
                    assert_eq!(line, escaped_byte_by_byte(&value), "{value:?}");
                    let parsed: String = serde_json::from_str(&format!("\"{line}\"")).unwrap();
                    assert_eq!(parsed, value);
                }
            }
        }
        let ids = "thoughtpartner.v1.ConversationService/SendMessage 3f2b6c1e-9d4a-4e8b-a1c2-0d9e8f7a6b5c";
        let mut line = String::new();
        push_escaped(&mut line, ids);
        assert_eq!(line, ids, "nothing to escape: copied as it is");
    }

    #[test]
    fn the_timestamp_digits_match_the_formatter() {
        for at in [
            time::macros::datetime!(0001-01-01 00:00:00 UTC),
            time::macros::datetime!(1999-12-31 23:59:59.999999 UTC),
            time::macros::datetime!(2026-12-03 23:48:27.899830 UTC),
            time::macros::datetime!(9999-12-31 23:59:59.000001 UTC),
        ] {
            let (mut fast, mut slow) = (String::new(), String::new());
            write_timestamp(&mut fast, at);
            write_timestamp_slowly(&mut slow, at);
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn a_line_after_an_idle_spell_is_written_without_a_shutdown() {
        let sink = Buffer::default();
        let out = BatchedWriter::start(Box::new(sink.clone())).unwrap();
        // Idle for longer than the interval: the thread is asleep.
        std::thread::sleep(FLUSH_INTERVAL * 3);
        writeln!(out.make_writer(), "{{\"n\":1}}").unwrap();
        // It wakes for the line; generous, so a slow machine still passes.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lines(&sink).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            lines(&sink).len(),
            1,
            "the line was written while the writer runs"
        );
        out.shutdown();
    }

    #[test]
    fn batched_lines_are_whole_and_none_is_lost_on_shutdown() {
        let sink = Buffer::default();
        let out = BatchedWriter::start(Box::new(sink.clone())).unwrap();
        // Many threads appending: each line arrives whole.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let out = out.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let mut writer = out.make_writer();
                        write!(writer, "{{\"t\":{t},").unwrap();
                        writeln!(writer, "\"i\":{i}}}").unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // What is still buffered is whole lines only.
        let buffered = String::from_utf8(out.shared.lock().clone()).unwrap();
        for line in buffered.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("torn line {line}: {e}"));
        }
        out.shutdown();
        assert!(out.shared.lock().is_empty(), "shutdown writes everything");
        let written = lines(&sink);
        assert_eq!(written.len(), 4000, "every line reaches the sink, whole");
        for t in 0..4 {
            let mine: Vec<_> = written
                .iter()
                .filter(|l| l["t"] == t)
                .map(|l| l["i"].as_u64().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..1000).collect::<Vec<_>>(),
                "thread {t}'s lines in order"
            );
        }
        assert!(
            out.shared.flusher.lock().unwrap().is_none(),
            "the thread is stopped"
        );
    }
}
