//! Where a node keeps its records.

/// The session directory: `$SHOAL_HOME`, else `~/.shoal` (else a temp
/// dir). `shoal start` leaves its records there; clients read them.
pub fn session_home() -> std::path::PathBuf {
    if let Some(h) = std::env::var_os("SHOAL_HOME").filter(|h| !h.is_empty()) {
        return h.into();
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => std::path::PathBuf::from(home).join(".shoal"),
        None => std::env::temp_dir().join("shoal"),
    }
}
