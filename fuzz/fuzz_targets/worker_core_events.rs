#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal_worker::core::schedules::fuzz_events(data);
});
