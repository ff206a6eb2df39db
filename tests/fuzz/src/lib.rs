//! The fuzz targets' bodies: each takes arbitrary bytes and panics when a
//! promise breaks. libFuzzer drives them through `targets/` (nightly,
//! `deploy/local/fuzz`); `tests/regressions.rs` replays every input kept
//! under `regressions/` through them on stable, in the test suite.
//!
//! Beyond "does not crash", each checks what the code promises:
//! - `token`: no byte string is a valid token without the secret;
//! - `stripe_webhook`: no delivery verifies without the secret, and a
//!   correctly signed one of any body is read or refused, never a crash;
//! - `document_split`: passages are non-empty and within the size cap;
//! - `context_extractor`: the offline coach asks at most two questions and
//!   keeps within its word cap, whatever the user wrote.

use std::task::{Context, Poll, Waker};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tp_auth::{ByAlgorithm, Hs256Verifier, TokenVerifier};

const SECRET: &str = "fuzz-secret-at-least-16-bytes";
/// A fixed "now" for webhook timestamps (2027-01-15).
const NOW: i64 = 1_800_000_000;
const WORD_CAP: usize = 180;

pub fn token(data: &[u8]) {
    let token = String::from_utf8_lossy(data);
    let verifier = ByAlgorithm {
        hs256: Some(Hs256Verifier::new(SECRET.as_bytes())),
        jwks: None,
    };
    let mut verifying = verifier.verify(&token);
    // HS256 verification is synchronous: the future is ready at once.
    match verifying
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(Ok(principal)) => {
            panic!("a token forged without the secret verified: {principal:?}")
        }
        Poll::Ready(Err(_)) => {}
        Poll::Pending => panic!("HS256 verification waited on something"),
    }
}

pub fn stripe_webhook(data: &[u8]) {
    // The first line is the Stripe-Signature header, the rest the body.
    let (header, payload) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let header = String::from_utf8_lossy(header);
    if let Ok(event) = tp_stripe::verify_event(payload, &header, SECRET, NOW) {
        panic!("a delivery verified without the secret: {event:?}");
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{NOW}.").as_bytes());
    mac.update(payload);
    let signed = format!("t={NOW},v1={}", hex::encode(mac.finalize().into_bytes()));
    match tp_stripe::verify_event(payload, &signed, SECRET, NOW) {
        Ok(_) | Err(tp_stripe::WebhookError::MalformedPayload(_)) => {}
        Err(other) => panic!("a correctly signed delivery was refused as {other:?}"),
    }
}

pub fn document_split(data: &[u8]) {
    let Some((&kind, content)) = data.split_first() else {
        return;
    };
    let content = String::from_utf8_lossy(content);
    for passage in tp_knowledge::passages::split(&content, kind % 2 == 0) {
        assert!(!passage.text.trim().is_empty(), "an empty passage");
        assert!(
            passage.text.chars().count() <= tp_knowledge::passages::MAX_PASSAGE_CHARS,
            "a passage of {} characters",
            passage.text.chars().count()
        );
    }
}

pub fn context_extractor(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let turns: Vec<&str> = text.split('\n').collect();
    let profile = tp_coach::ContextProfile::from_turns(turns.iter().copied());
    let _ = profile.summary();
    let _ = profile.situation();
    let _ = profile.missing_context();
    let _ = profile.durable();
    let message = turns.last().copied().unwrap_or_default();
    let reply = tp_coach::reply(&tp_coach::CoachInput {
        message,
        profile: &profile,
        frameworks: &[],
        word_cap: WORD_CAP,
        // A first reply, or one asked for again.
        attempt: u32::try_from(data.len() % 3).unwrap_or(0),
        previous_citations: &[],
        earlier_turns: turns.len().saturating_sub(1),
        previous_turn: turns.iter().rev().nth(1).copied(),
        // Any text may be the reply before: only what it contains is read.
        previous_reply: turns.iter().rev().nth(2).copied(),
    });
    assert!(
        reply.questions_asked <= tp_coach::MAX_QUESTIONS,
        "{} questions",
        reply.questions_asked
    );
    let words = tp_coach::rules::word_count(&reply.text);
    assert!(words <= WORD_CAP, "{words} words: {}", reply.text);
}
