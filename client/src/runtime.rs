//! Shoal's own tokio runtime, and blocking on a future from anywhere.

use std::sync::OnceLock;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Shoal's own runtime: the driver session, and the embedded head and
/// worker, run here, independent of whatever runtime (if any) the program
/// uses, so blocking `get()` works from anywhere. Two threads in a
/// program (an embedded head and worker may run here too); one in an
/// executor, whose only use for it is the session of the tasks its tasks
/// submit: the CPUs are the tasks', and one thread measured faster for
/// nested fan-outs and generators than two (fewer cross-thread wake-ups).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        let threads = if crate::executor::is_executor() { 1 } else { 2 };
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).thread_name("shoal").enable_all().build().expect("building the shoal runtime")
    })
}

/// Runs a future to completion on the calling thread and blocks for it,
/// from any thread, inside an async runtime or not, nested or not. The
/// future runs in the context of Shoal's runtime, whose threads drive its
/// timers and sockets; no thread is started per call.
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    let _context = runtime().enter();
    pollster::block_on(fut)
}

#[cfg(test)]
mod tests {
    use super::block_on;
    use std::time::Duration;

    #[test]
    fn block_on_works_nested_and_from_inside_another_runtime_without_a_thread_per_call() {
        let here = std::thread::current().id();
        // Timers work: Shoal's runtime drives them.
        let on = block_on(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            // Nested (a sync get inside an async path).
            block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
            std::thread::current().id()
        });
        assert_eq!(on, here, "the future runs on the calling thread");
        // From a task of the program's own single-threaded runtime.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let v = rt.block_on(async {
            block_on(async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                7
            })
        });
        assert_eq!(v, 7);
    }
}
