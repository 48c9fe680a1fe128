//! Start N processes, join them, print each one's pid, parent pid and
//! node: the `os.getpid()` / `os.getppid()` lesson, distributed. On an
//! embedded cluster the parent of every executor is this program; on a CLI
//! cluster it is the worker daemon of the node.
//!
//!     cargo run --release --example process_join

use shoal::Process;

/// Reports where it runs, after a little work.
#[shoal::remote]
fn whoami(i: u32) -> (u32, u32, u32, String) {
    let ctx = shoal::context().expect("inside a task");
    let work: u64 = (0..2_000_000u64).map(|x| x % 7).sum();
    std::hint::black_box(work);
    (i, ctx.pid, ctx.parent_pid, ctx.node_id)
}

fn main() -> shoal::Result<()> {
    shoal::init_blocking()?;
    println!("driver: pid {}", std::process::id());
    let procs: Vec<_> = (0..4).map(|i| Process::spawn(whoami::func, (i,))).collect();
    for p in &procs {
        let (i, pid, ppid, node) = p.join()?;
        println!("process {i}: pid {pid}, parent pid {ppid}, node {}, exit code {:?}", &node[..8], p.exit_code());
        assert_ne!(pid, std::process::id(), "runs in its own process");
    }
    Ok(())
}
