//! Sizes as people type and read them, with `bytesize`: SI units are
//! powers of 1000 (`kB`, `MB`, `GB`), IEC units powers of 1024 (`KiB`,
//! `MiB`, `GiB`); a bare number is bytes; `25%` is a share of a total.

use bytesize::ByteSize;

/// A size that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a size (examples: 2GiB, 512MiB, 1.5GB, 1073741824, 25%){}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
pub struct SizeError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses `1073741824`, `512MiB`, `2 GiB`, `1.5GB`, or `10%` (of `total`).
pub fn parse_size(input: &str, total: u64) -> Result<u64, SizeError> {
    let t = input.trim();
    let err = |reason: &str| SizeError { input: input.to_string(), reason: reason.to_string() };
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| err("the share is not a number"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(err("a share must be between 0% and 100%"));
        }
        return Ok((total as f64 * p / 100.0) as u64);
    }
    t.parse::<ByteSize>().map(|b| b.as_u64()).map_err(|e| err(&e))
}

/// `1.5 GiB`-style text for a size (IEC units).
pub fn format_size(bytes: u64) -> String {
    ByteSize::b(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_si_and_iec_units_and_shares() {
        assert_eq!(parse_size("1024", 0), Ok(1024));
        assert_eq!(parse_size("512MiB", 0), Ok(512 << 20));
        assert_eq!(parse_size("1.5 GiB", 0), Ok(3 << 29));
        assert_eq!(parse_size("2GB", 0), Ok(2_000_000_000), "SI: powers of 1000");
        assert_eq!(parse_size("4 KiB", 0), Ok(4096));
        assert_eq!(parse_size("4kB", 0), Ok(4000));
        assert_eq!(parse_size("25%", 1000), Ok(250));
        for bad in ["lots", "5 parsecs", "150%", "-3MiB", ""] {
            assert!(parse_size(bad, 10).is_err(), "{bad}");
        }
        assert!(parse_size("5 parsecs", 0).unwrap_err().to_string().contains("2GiB"));
    }

    #[test]
    fn sizes_format_in_iec_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(512 << 20), "512.0 MiB");
    }
}
