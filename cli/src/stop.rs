//! `shoal stop`: SIGTERM every daemon recorded in this session dir, wait
//! for a graceful exit, SIGKILL what is left.

use crate::StopArgs;
use crate::session::{self, is_shoal_process};
use shoal::config;
use std::time::{Duration, Instant};

pub fn run(args: StopArgs) -> anyhow::Result<()> {
    let home = config::shoal_home();
    let dir = session::run_dir(&home);
    let mut daemons = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".pid") else { continue };
            let Some((role, pid)) = stem.rsplit_once('-') else { continue };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            daemons.push((role.to_string(), pid, e.path()));
        }
    }
    if daemons.is_empty() {
        println!("No shoal daemons recorded in {}.", dir.display());
    }
    // Workers first, so they leave before their head.
    daemons.sort_by_key(|(role, _, _)| role == "head");
    for (role, pid, file) in daemons {
        if !is_shoal_process(pid) {
            let _ = std::fs::remove_file(&file);
            continue;
        }
        // SAFETY: plain signal to a process we verified runs shoal.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs_f64(args.grace.max(0.0));
        while is_shoal_process(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if is_shoal_process(pid) {
            // SAFETY: as above.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            println!("Killed {role} (pid {pid}) after {:.0}s.", args.grace);
        } else {
            println!("Stopped {role} (pid {pid}).");
        }
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(session::ready_file(&home, pid));
    }
    if let Some(s) = config::read_head_session(&home)
        && !is_shoal_process(s.pid)
    {
        let _ = std::fs::remove_file(config::head_session_path(&home));
    }
    Ok(())
}
