//! `shoal logs`: the tail of the daemons' log files in the session dir
//! (daemons started without `--block` log there; with `--block` they log to
//! their stdout/stderr, e.g. journald or `docker logs`).

use crate::LogsArgs;
use crate::session;
use anyhow::bail;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

pub fn run(args: LogsArgs) -> anyhow::Result<()> {
    if let Some(r) = &args.role
        && r != "head"
        && r != "worker"
    {
        bail!("--role is head or worker, not {r:?}");
    }
    let dir = session::log_dir(&shoal::config::shoal_home());
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    logs.retain(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.ends_with(".log") && args.role.as_ref().is_none_or(|r| name.starts_with(&format!("{r}-")))
    });
    logs.sort();
    if logs.is_empty() {
        bail!("no daemon logs in {} (daemons started with --block log to their own output)", dir.display());
    }
    let mut offsets = Vec::new();
    for p in &logs {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        println!("==> {} <==", p.display());
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(args.lines)..] {
            println!("{l}");
        }
        offsets.push(text.len() as u64);
    }
    if !args.follow {
        return Ok(());
    }
    // Until interrupted.
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for (p, off) in logs.iter().zip(offsets.iter_mut()) {
            let Ok(mut f) = std::fs::File::open(p) else { continue };
            if f.seek(SeekFrom::Start(*off)).is_err() {
                continue;
            }
            let mut more = String::new();
            if f.read_to_string(&mut more).is_ok() && !more.is_empty() {
                print!("{more}");
                *off += more.len() as u64;
            }
        }
    }
}
