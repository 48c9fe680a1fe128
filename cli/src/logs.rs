//! `shoal logs`: the tail of the daemons' log files in the session dir
//! (daemons started without `--block` log there; with `--block` they log to
//! their stdout/stderr, e.g. journald or `docker logs`).

use crate::LogsArgs;
use crate::session;
use anyhow::bail;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

/// `shoal logs --job ID`: the lines the job's tasks printed.
fn job(args: &LogsArgs, job: u32) -> anyhow::Result<()> {
    let (address, token) = args.head.resolve()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let logs = rt.block_on(shoal::status::job_logs(&address, token.as_deref(), job)).map_err(crate::status::explain)?;
    if logs.dropped > 0 {
        println!("[{} older lines dropped: the head keeps the latest {} per job]", logs.dropped, logs.lines.len());
    }
    let skip = logs.lines.len().saturating_sub(if args.lines == 0 { usize::MAX } else { args.lines });
    for l in logs.lines.iter().skip(skip) {
        let function = l.function.rsplit("::").next().unwrap_or(&l.function);
        let node = l.node.map(|n| n.to_string()).unwrap_or_default();
        let stream = if l.stderr { " stderr" } else { "" };
        println!("({function} task={} node={node} pid={}{stream}) {}", l.task, l.pid, l.line);
    }
    Ok(())
}

pub fn run(args: LogsArgs) -> anyhow::Result<()> {
    if let Some(j) = args.job {
        return job(&args, j);
    }
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
