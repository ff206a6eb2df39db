//! Every input kept under `regressions/<target>/` (crashes the fuzzers
//! found, then fixed, and seeds worth keeping) replayed through its
//! target's checks, on stable, in the test suite.

/// This package's directory, read when the test runs (cargo sets it for
/// the test process): a test binary built in another checkout that shares
/// the target directory is reused as fresh, and the compile-time value
/// would point it at that checkout's files.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Into::into)
}

fn replay(target: &str, check: fn(&[u8])) {
    let dir = manifest_dir().join("regressions").join(target);
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check(&data);
        replayed += 1;
    }
    assert!(replayed > 0, "no inputs kept for {target}");
}

#[test]
fn token_regressions() {
    replay("token", tp_fuzz::token);
}

#[test]
fn stripe_webhook_regressions() {
    replay("stripe_webhook", tp_fuzz::stripe_webhook);
}

#[test]
fn document_split_regressions() {
    replay("document_split", tp_fuzz::document_split);
}

#[test]
fn context_extractor_regressions() {
    replay("context_extractor", tp_fuzz::context_extractor);
}
