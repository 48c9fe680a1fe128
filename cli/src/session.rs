//! The session directory (`$SHOAL_HOME`, default `~/.shoal`) that `shoal
//! start` leaves for `status` and `stop`: pid files, logs, the head record
//! and its token file.

use std::path::{Path, PathBuf};

pub fn run_dir(home: &Path) -> PathBuf {
    home.join("run")
}

pub fn log_dir(home: &Path) -> PathBuf {
    home.join("logs")
}

pub fn token_path(home: &Path) -> PathBuf {
    home.join("token")
}

/// `run/<role>-<pid>.pid`
pub fn pid_file(home: &Path, role: &str, pid: u32) -> PathBuf {
    run_dir(home).join(format!("{role}-{pid}.pid"))
}

/// `run/worker-<pid>.ready`, written once a worker has registered.
pub fn ready_file(home: &Path, pid: u32) -> PathBuf {
    run_dir(home).join(format!("worker-{pid}.ready"))
}

pub fn write_pid_file(home: &Path, role: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(run_dir(home))?;
    let p = pid_file(home, role, std::process::id());
    std::fs::write(&p, format!("{}\n", std::process::id()))?;
    Ok(p)
}

/// Is `pid` a live process running this program?
pub fn is_shoal_process(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmd) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie has exited already.
            let zombie = stat.rsplit(')').next().map(|rest| rest.trim_start().starts_with('Z')).unwrap_or(false);
            !zombie && cmd.split(|b| *b == 0).any(|arg| arg.ends_with(b"shoal") || arg.windows(5).any(|w| w == b"shoal"))
        }
        Err(_) => false,
    }
}
