//! Where a program finds its cluster. In order: explicit settings (flags,
//! [`InitConfig`](crate::InitConfig)), then `SHOAL_ADDRESS` / `SHOAL_TOKEN`
//! / `SHOAL_TOKEN_FILE`, then the session directory that `shoal start`
//! leaves on the head's machine (`$SHOAL_HOME`, default `~/.shoal`), so on
//! that machine nothing needs to be set.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Environment variable with the head address (`host:port`; `auto` = the
/// local session's head).
pub const ENV_ADDRESS: &str = "SHOAL_ADDRESS";
/// Environment variable with the cluster token.
pub const ENV_TOKEN: &str = "SHOAL_TOKEN";
/// Environment variable with a path to a file holding the cluster token.
pub const ENV_TOKEN_FILE: &str = "SHOAL_TOKEN_FILE";
/// Environment variable with the session directory.
pub const ENV_HOME: &str = "SHOAL_HOME";

/// The session directory: `$SHOAL_HOME`, else `~/.shoal`.
pub fn shoal_home() -> PathBuf {
    shoal_domain::paths::session_home()
}

/// Shared cache of program binaries under a session directory.
pub fn binary_cache(home: &Path) -> PathBuf {
    home.join("cache").join("binaries")
}

/// What `shoal start --head` records for local clients.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct HeadSession {
    /// Address local clients use (`127.0.0.1:port`).
    pub address: String,
    /// Token file path (absent for an insecure head).
    pub token_file: Option<PathBuf>,
    /// Head process id.
    pub pid: u32,
    /// The dashboard's base URL, when it serves one.
    #[serde(default)]
    pub dashboard: Option<String>,
}

/// Path of the head session record.
pub fn head_session_path(home: &Path) -> PathBuf {
    home.join("head.json")
}

/// Reads the head session record, if any.
pub fn read_head_session(home: &Path) -> Option<HeadSession> {
    std::fs::read(head_session_path(home)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// The head address from `SHOAL_ADDRESS` alone (`auto` = the local
/// session's); `None` when unset. Programs use this: without it they start
/// an embedded cluster rather than joining a daemon found on disk.
pub fn resolve_address_env_only() -> Option<String> {
    let a = std::env::var(ENV_ADDRESS).ok().filter(|a| !a.trim().is_empty())?;
    resolve_address(Some(&a))
}

/// The head address: `explicit`, else `SHOAL_ADDRESS`, else the local
/// session's. `None` when none is known.
pub fn resolve_address(explicit: Option<&str>) -> Option<String> {
    let from_env = std::env::var(ENV_ADDRESS).ok().filter(|a| !a.trim().is_empty());
    match explicit.map(str::to_string).or(from_env) {
        Some(a) if a.trim() == "auto" => read_head_session(&shoal_home()).map(|s| s.address),
        Some(a) => Some(a.trim().to_string()),
        None => read_head_session(&shoal_home()).map(|s| s.address),
    }
}

fn read_token_file(path: &Path) -> Result<String> {
    let t = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read token file {}: {e}", path.display())))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(Error::Config(format!("token file {} is empty", path.display())));
    }
    Ok(t)
}

/// The cluster token: `token`, else `token_file`, else `SHOAL_TOKEN`, else
/// `SHOAL_TOKEN_FILE`, else the local session's token file. `None` when no
/// token is known (the head will refuse unless it is insecure).
pub fn resolve_token(token: Option<&str>, token_file: Option<&Path>) -> Result<Option<String>> {
    if let Some(t) = token.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.trim().to_string()));
    }
    if let Some(p) = token_file {
        return read_token_file(p).map(Some);
    }
    if let Some(t) = std::env::var(ENV_TOKEN).ok().filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t.trim().to_string()));
    }
    if let Some(p) = std::env::var_os(ENV_TOKEN_FILE).filter(|p| !p.is_empty()) {
        return read_token_file(Path::new(&p)).map(Some);
    }
    let home = shoal_home();
    if let Some(p) = read_head_session(&home).and_then(|s| s.token_file)
        && p.is_file()
    {
        return read_token_file(&p).map(Some);
    }
    Ok(None)
}

/// Writes `token` to `path` with mode 0600 (created that way, never
/// readable by others even briefly).
pub fn write_token_file(path: &Path, token: &str) -> std::io::Result<()> {
    write_private_file(path, format!("{token}\n").as_bytes())
}

/// Writes `bytes` to `path` (replacing it) with mode 0600, created that
/// way: session records name the token file and the cluster's address.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Creates `dir` (and its parents) if missing and makes it private to
/// this user (0700): the session dir, the head's data dir, log dirs.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
