#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tp_fuzz::stripe_webhook(data));
