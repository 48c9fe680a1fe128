//! The embedded local cluster that `shoal::init()` starts when no address
//! is given: the real head and worker, in this process.

#[shoal::remote]
fn whereami() -> (String, u32) {
    let ctx = shoal::context().expect("inside a task");
    (ctx.node_id, ctx.pid)
}

#[test]
fn init_without_address_starts_a_one_node_cluster_that_runs_tasks() {
    // SAFETY: single-threaded at this point of the test process.
    unsafe { std::env::remove_var("SHOAL_ADDRESS") };
    let home = tempfile::tempdir().unwrap();
    unsafe { std::env::set_var("SHOAL_HOME", home.path()) };
    shoal::init_blocking().expect("embedded cluster");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let st = rt.block_on(shoal::cluster_status()).unwrap();
    assert_eq!(st.nodes.len(), 1);
    assert!(st.nodes[0].alive);
    assert_eq!(st.nodes[0].resources["cpus"], std::thread::available_parallelism().unwrap().get() as f64);
    assert!(shoal::context().is_none(), "the driver is not a task");
    let (node, pid) = whereami::remote().get().unwrap();
    assert_eq!(node, st.nodes[0].id);
    assert_ne!(pid, std::process::id(), "tasks run in executor processes");
}
