//! The per-call record behind the canonical event: one structured event per
//! served call, emitted by [`crate::ServerTelemetryLayer`] when the call
//! ends, carrying what layers and handlers learnt along the way (who called,
//! which conversation, which responder, how many tokens). Never content.

use std::sync::{Arc, Mutex, MutexGuard};

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

/// A shared handle on one call's [`CallFields`]. The server layer puts it in
/// the request's http extensions, which tonic hands to handlers in
/// `tonic::Request::extensions()`; clones share the record.
#[derive(Clone, Debug, Default)]
pub struct CallRecord(Arc<Mutex<CallFields>>);

impl CallRecord {
    pub fn new() -> Self {
        Self::default()
    }

    /// The record of an incoming http request, if the layer is installed.
    pub fn of_http<B>(request: &http::Request<B>) -> Option<&CallRecord> {
        request.extensions().get::<CallRecord>()
    }

    /// The record of a call, in a handler.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<CallRecord> {
        request.extensions().get::<CallRecord>().cloned()
    }

    fn fields(&self) -> MutexGuard<'_, CallFields> {
        // The fields are plain values: one half-written by a thread that
        // panicked is still worth reporting.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant and member the call acts for.
    pub fn set_caller(&self, tenant_id: impl ToString, member_id: &str) {
        let mut fields = self.fields();
        fields.tenant_id = Some(Arc::from(tenant_id.to_string()));
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
    fn handlers_find_the_record_tonic_copied_from_http() {
        let record = CallRecord::new();
        let mut http = http::Request::new(());
        http.extensions_mut().insert(record.clone());
        assert!(CallRecord::of_http(&http).is_some());
        let request = tonic::Request::from_http(http);
        CallRecord::of(&request)
            .expect("tonic keeps http extensions")
            .set_responder("offline");
        assert_eq!(record.snapshot().responder.as_deref(), Some("offline"));
    }
}
