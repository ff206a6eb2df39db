//! W3C Trace Context (`traceparent`, `tracestate`) read from and written to
//! a call's headers, as OpenTelemetry's `TraceContextPropagator` does it,
//! without its per-call costs.
//!
//! Measured with the load generator (both stacks at once, session 14),
//! propagation through the global propagator cost ~3.5 % of SendMessage's
//! throughput, more than any other part of telemetry: a lock on the
//! global propagator, `format!` and header validation on every injection,
//! a split and hex parse (and a parse of an absent `tracestate`) on every
//! extraction, and, in h2, a new `traceparent` value added to both ends'
//! HPACK tables on every call, evicting the headers that repeat. Here the
//! header is written from a fixed-size buffer, read by position, and sent
//! never-indexed (HPACK's literal without indexing: a value used once has
//! no place in the table). `tracestate`, rare here, still goes through the
//! SDK's `TraceState`. The unit tests hold both directions to the SDK's
//! propagator.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use std::str::FromStr;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `version-traceid-parentid-flags`: 2 + 1 + 32 + 1 + 16 + 1 + 2.
const TRACEPARENT_LEN: usize = 55;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// `id` as the 32 lowercase hex digits W3C trace context writes, on the
/// stack (`TraceId`'s `Display` goes through `u128`'s formatter).
pub(crate) fn trace_id_hex(id: TraceId) -> [u8; 32] {
    let mut out = [0; 32];
    put_hex(&mut out, &id.to_bytes());
    out
}

/// Writes `context` as `traceparent` (and `tracestate` when it has one);
/// writes nothing for an invalid context.
pub(crate) fn inject(context: &SpanContext, headers: &mut HeaderMap) {
    if !context.is_valid() {
        return;
    }
    let mut value = [0u8; TRACEPARENT_LEN];
    value[..3].copy_from_slice(b"00-");
    put_hex(&mut value[3..35], &context.trace_id().to_bytes());
    value[35] = b'-';
    put_hex(&mut value[36..52], &context.span_id().to_bytes());
    value[52] = b'-';
    put_hex(
        &mut value[53..55],
        &[(context.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    if let Ok(mut value) = HeaderValue::from_bytes(&value) {
        value.set_sensitive(true);
        headers.insert(TRACEPARENT, value);
    }
    let state = context.trace_state().header();
    if !state.is_empty()
        && let Ok(mut value) = HeaderValue::from_str(&state)
    {
        value.set_sensitive(true);
        headers.insert(TRACESTATE, value);
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex only, as the specification requires.
fn parse_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

/// The caller's context from `traceparent` (and `tracestate`), marked
/// remote; `None` when there is none or it is malformed (the call then
/// starts a new trace).
pub(crate) fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    let header = headers.get(TRACEPARENT)?.as_bytes();
    if header.len() < TRACEPARENT_LEN
        || header[2] != b'-'
        || header[35] != b'-'
        || header[52] != b'-'
    {
        return None;
    }
    let [version] = parse_hex::<1>(&header[..2])?;
    // Version 255 is invalid; version 0 has exactly four fields; a later
    // version may add fields after a dash, and is read as version 0.
    if version == 0xff
        || (version == 0 && header.len() != TRACEPARENT_LEN)
        || (header.len() > TRACEPARENT_LEN && header[TRACEPARENT_LEN] != b'-')
    {
        return None;
    }
    let trace_id = TraceId::from_bytes(parse_hex::<16>(&header[3..35])?);
    let span_id = SpanId::from_bytes(parse_hex::<8>(&header[36..52])?);
    let [flags] = parse_hex::<1>(&header[53..55])?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = match headers.get(TRACESTATE) {
        None => TraceState::default(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| TraceState::from_str(text).ok())
            .unwrap_or_default(),
    };
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

#[cfg(test)]
mod tests {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_http::{HeaderExtractor, HeaderInjector};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    fn sdk_extract(headers: &HeaderMap) -> SpanContext {
        TraceContextPropagator::new()
            .extract(&HeaderExtractor(headers))
            .span()
            .span_context()
            .clone()
    }

    fn sdk_inject(context: &SpanContext) -> HeaderMap {
        let mut headers = HeaderMap::new();
        TraceContextPropagator::new().inject_context(
            &opentelemetry::Context::new().with_remote_span_context(context.clone()),
            &mut HeaderInjector(&mut headers),
        );
        headers
    }

    fn with(traceparent: &str, tracestate: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(traceparent) {
            headers.insert(TRACEPARENT, value);
        }
        if let Some(state) = tracestate.and_then(|s| HeaderValue::from_str(s).ok()) {
            headers.insert(TRACESTATE, state);
        }
        headers
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_what_the_sdk_reads_valid_or_not() {
        let cases = [
            VALID,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
            // Invalid ids, versions, lengths, cases and separators.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
            "garbage",
            // A later version: more fields allowed after a dash.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01future",
        ];
        for case in cases {
            for state in [
                None,
                Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
                Some("bad state"),
            ] {
                let headers = with(case, state);
                let ours = extract(&headers).unwrap_or_else(SpanContext::empty_context);
                assert_eq!(ours, sdk_extract(&headers), "{case:?} with {state:?}");
            }
        }
    }

    #[test]
    fn rejects_what_the_specification_rejects_where_the_sdk_is_lenient() {
        // The SDK parses each field as a number, so it takes short fields
        // and surrounding blanks; the specification wants exactly 55
        // characters of fixed-width lowercase hex for version 00.
        for case in [
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(sdk_extract(&with(case, None)).is_valid(), "{case:?}");
            assert_eq!(extract(&with(case, None)), None, "{case:?}");
        }
    }

    #[test]
    fn writes_what_the_sdk_writes_and_never_indexed() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex");
        let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("hex");
        for flags in [
            TraceFlags::SAMPLED,
            TraceFlags::default(),
            TraceFlags::new(0x03),
        ] {
            for state in ["", "rojo=00f067aa0ba902b7"] {
                let context = SpanContext::new(
                    trace_id,
                    span_id,
                    flags,
                    true,
                    TraceState::from_str(state).expect("a valid state"),
                );
                let mut ours = HeaderMap::new();
                inject(&context, &mut ours);
                let sdk = sdk_inject(&context);
                assert_eq!(ours.get(TRACEPARENT), sdk.get(TRACEPARENT), "{flags:?}");
                // The SDK writes an empty `tracestate`; an empty one is left out.
                let sdk_state = sdk.get(TRACESTATE).filter(|v| !v.is_empty());
                assert_eq!(ours.get(TRACESTATE), sdk_state, "{state:?}");
                assert!(ours.get(TRACEPARENT).is_some_and(HeaderValue::is_sensitive));
                // And it reads back as it went out.
                assert_eq!(
                    extract(&ours).map(|c| (c.trace_id(), c.span_id())),
                    Some((trace_id, span_id))
                );
            }
        }
        let mut none = HeaderMap::new();
        inject(&SpanContext::empty_context(), &mut none);
        assert!(none.is_empty());
        assert!(sdk_inject(&SpanContext::empty_context()).is_empty());
    }

    #[test]
    fn a_trace_id_in_hex_is_what_its_display_writes() {
        for id in [
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            TraceId::from_bytes([0; 16]),
            TraceId::from_bytes([0xff; 16]),
            TraceId::from_bytes(
                *b"\x01\x23\x45\x67\x89\xab\xcd\xef\x00\x10\x20\x30\x40\x50\x60\x70",
            ),
        ] {
            assert_eq!(
                std::str::from_utf8(&trace_id_hex(id)).unwrap(),
                id.to_string()
            );
        }
    }

    #[test]
    fn the_valid_example_reads_as_sampled_and_remote() {
        let context = extract(&with(VALID, None)).expect("valid");
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(
            context.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
        );
    }
}
