#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    shoal::__private::fuzz_values(data);
});
