//! The per-call record behind the canonical event: one structured event per
//! served call, emitted by [`crate::ServerTelemetryLayer`] when the call
//! ends, carrying what layers and handlers learnt along the way (who called,
//! which conversation, which responder, how many tokens). Never content.

use std::sync::{Arc, Mutex, MutexGuard};

use opentelemetry::trace::SpanContext;

/// What is known about one call, filled as it proceeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallFields {
    /// Shared, not copied, by the call's span and its canonical event.
    pub tenant_id: Option<Arc<str>>,
    pub member_id: Option<Arc<str>>,
    pub conversation_id: Option<String>,
    pub responder: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Whether the reply was grounded in retrieved knowledge.
    pub grounded: Option<bool>,
    /// How many persona rules the reply broke.
    pub policy_violations: Option<u64>,
}

/// A shared handle on one served call: its trace context and its
/// [`CallFields`], in one allocation. The server layer makes it when the
/// call arrives and keeps it current (a task-local) while the call's work
/// is polled; layers and handlers find it with [`CallRecord::current`].
/// Clones share the record.
///
/// Why not the request's extensions, as at first: a served call then made
/// three allocations for its context, its record and the extension's box,
/// and grew the extensions' map (callgrind: ~0.5k instructions a served
/// call, in every service). The task-local was there already, for the
/// trace context.
#[derive(Clone, Debug)]
pub struct CallRecord(Arc<CallState>);

#[derive(Debug)]
struct CallState {
    context: SpanContext,
    fields: Mutex<CallFields>,
}

impl Default for CallRecord {
    fn default() -> Self {
        Self::for_call(SpanContext::empty_context())
    }
}

impl CallRecord {
    /// A record of no call (kept by nobody unless the caller keeps it).
    pub fn new() -> Self {
        Self::default()
    }

    /// The record of the served call whose work is being polled, if any:
    /// inside [`crate::ServerTelemetryLayer`] with telemetry on.
    pub fn current() -> Option<CallRecord> {
        crate::call_span::current_record()
    }

    /// The record of a served call with this trace context.
    pub(crate) fn for_call(context: SpanContext) -> Self {
        Self(Arc::new(CallState {
            context,
            fields: Mutex::new(CallFields::default()),
        }))
    }

    /// The call's trace context.
    pub(crate) fn context(&self) -> &SpanContext {
        &self.0.context
    }

    fn fields(&self) -> MutexGuard<'_, CallFields> {
        // The fields are plain values: one half-written by a thread that
        // panicked is still worth reporting.
        self.0.fields.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant and member the call acts for.
    pub fn set_caller(&self, tenant_id: impl std::fmt::Display, member_id: &str) {
        let tenant_id = shared_text(tenant_id);
        let mut fields = self.fields();
        fields.tenant_id = Some(tenant_id);
        fields.member_id = Some(Arc::from(member_id));
    }

    pub fn set_conversation(&self, conversation_id: impl ToString) {
        self.fields().conversation_id = Some(conversation_id.to_string());
    }

    pub fn set_responder(&self, responder: &str) {
        self.fields().responder = Some(responder.to_owned());
    }

    /// Tokens a generation used; added up over the call.
    pub fn add_tokens(&self, input: u64, output: u64) {
        let mut fields = self.fields();
        fields.input_tokens = Some(fields.input_tokens.unwrap_or(0).saturating_add(input));
        fields.output_tokens = Some(fields.output_tokens.unwrap_or(0).saturating_add(output));
    }

    /// How the reply came out: grounded or not, and how many persona rules
    /// it broke (which ones are counted by rule in the metrics).
    pub fn set_reply_quality(&self, grounded: bool, policy_violations: usize) {
        let mut fields = self.fields();
        fields.grounded = Some(grounded);
        fields.policy_violations = Some(u64::try_from(policy_violations).unwrap_or(u64::MAX));
    }

    /// A copy of what is known so far.
    pub fn snapshot(&self) -> CallFields {
        self.fields().clone()
    }

    /// The tenant the call acts for, if known yet.
    pub fn tenant_id(&self) -> Option<Arc<str>> {
        self.fields().tenant_id.clone()
    }

    /// What is known, taken out once the call is over (the record is left
    /// empty): nothing is copied.
    pub(crate) fn take(&self) -> CallFields {
        std::mem::take(&mut *self.fields())
    }
}

/// `value`'s text, shared: formatted on the stack first, so a tenant id
/// costs one allocation (the `Arc`'s), not a `String`'s as well. Every
/// served call records its caller's.
fn shared_text(value: impl std::fmt::Display) -> Arc<str> {
    let mut text = StackText {
        bytes: [0; STACK_TEXT],
        len: 0,
    };
    if std::fmt::write(&mut text, format_args!("{value}")).is_ok()
        && let Ok(text) = std::str::from_utf8(&text.bytes[..text.len])
    {
        return Arc::from(text);
    }
    // Longer than the buffer: through a `String`.
    Arc::from(value.to_string())
}

/// Room for any id this code records (a UUID is 36 characters).
const STACK_TEXT: usize = 64;

struct StackText {
    bytes: [u8; STACK_TEXT],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_record() {
        let record = CallRecord::new();
        let handler_copy = record.clone();
        handler_copy.set_caller("t-1", "alice");
        handler_copy.set_conversation("c-1");
        handler_copy.add_tokens(10, 20);
        handler_copy.add_tokens(1, 2);
        let fields = record.snapshot();
        assert_eq!(fields.tenant_id.as_deref(), Some("t-1"));
        assert_eq!(fields.member_id.as_deref(), Some("alice"));
        assert_eq!(fields.conversation_id.as_deref(), Some("c-1"));
        assert_eq!(fields.input_tokens, Some(11));
        assert_eq!(fields.output_tokens, Some(22));
        assert_eq!(fields.responder, None);
    }

    #[test]
    fn ids_of_any_length_are_recorded_whole() {
        for id in [
            String::new(),
            "3f6c2a".to_owned(),
            "0198c4d2-6f1e-7a3b-9c2d-5e8f7a6b4c3d".to_owned(),
            "x".repeat(STACK_TEXT),
            "é".repeat(STACK_TEXT),
        ] {
            let record = CallRecord::new();
            record.set_caller(&id, "alice");
            assert_eq!(record.snapshot().tenant_id.as_deref(), Some(id.as_str()));
        }
    }

    #[test]
    fn a_call_finds_its_record_and_only_inside_the_call() {
        assert!(CallRecord::current().is_none());
        let record = CallRecord::for_call(SpanContext::empty_context());
        crate::call_span::with_record(record.clone(), || {
            CallRecord::current()
                .expect("inside the call")
                .set_responder("offline");
        });
        assert_eq!(record.snapshot().responder.as_deref(), Some("offline"));
        assert!(CallRecord::current().is_none());
    }
}
