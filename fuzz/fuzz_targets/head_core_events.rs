#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal_scheduler::core::fuzz::events(data);
});
