//! The embedded local cluster that `shoal::init()` starts when no address
//! is given: the real head and worker, in this process.

mod common;

#[shoal::remote]
fn whereami() -> (String, u32) {
    let ctx = shoal::context().expect("inside a task");
    (ctx.node_id, ctx.pid)
}

#[shoal::remote]
fn sum_of_squares(n: u64) -> u64 {
    // A task submitting tasks, on the embedded cluster too.
    let refs: Vec<_> = (1..=n).map(square::remote).collect();
    shoal::get_all_blocking(&refs).unwrap().into_iter().sum()
}

#[shoal::remote]
fn square(x: u64) -> u64 {
    x * x
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
    assert_eq!(st.nodes[0].resources.cpus, std::thread::available_parallelism().unwrap().get() as f64);
    assert!(shoal::context().is_none(), "the driver is not a task");
    let (node, pid) = whereami::remote().get().unwrap();
    assert_eq!(node, format!("{:#}", st.nodes[0].id), "a task sees the full id of its node");
    assert_ne!(pid, std::process::id(), "tasks run in executor processes");
    assert_eq!(sum_of_squares::remote(4).get().unwrap(), 30, "tasks submit tasks on an embedded cluster");
}

// Strings, not Vec<u8>: serde moves a Vec<u8> element by element, which
// is slow in a debug build; a String is copied in bulk. The limits are the
// same for any type.
#[shoal::remote]
fn filled(n: usize) -> String {
    "x".repeat(n)
}

#[shoal::remote]
fn len_of(v: String) -> usize {
    v.len()
}

#[test]
fn values_over_the_message_limit_travel_through_the_object_store() {
    let home = tempfile::tempdir().unwrap();
    // SAFETY: single-threaded at this point of the test process.
    unsafe { std::env::set_var("SHOAL_HOME", home.path()) };
    shoal::init_blocking_with(shoal::InitConfig::default().local()).unwrap();
    // Larger than any gRPC message Shoal accepts: only the store can carry it.
    let over = shoal_domain::limits::MAX_MESSAGE_BYTES + 1;
    let big = filled::remote(over);
    assert_eq!(big.get().unwrap().len(), over, "a result over the message limit arrives whole");
    assert_eq!(len_of::remote(&big).get().unwrap(), over, "and is passed on to another task");
    // Several large results at once.
    let refs: Vec<_> = (0..6).map(|_| filled::remote(40 << 20)).collect();
    for r in &refs {
        assert_eq!(r.get().unwrap().len(), 40 << 20);
    }
    drop(refs);
    // A large argument passed by value is stored, not sent inline.
    assert_eq!(len_of::remote("y".repeat(over)).get().unwrap(), over);
    assert_eq!(len_of::remote("abc".to_string()).get().unwrap(), 3, "still serving");
}

#[test]
fn the_embedded_cluster_serves_a_dashboard_that_shows_this_programs_tasks() {
    use common::http::*;
    let home = tempfile::tempdir().unwrap();
    // SAFETY: single-threaded at this point of the test process.
    unsafe { std::env::set_var("SHOAL_HOME", home.path()) };
    unsafe { std::env::remove_var(shoal::ENV_DASHBOARD) };
    shoal::init_blocking_with(shoal::InitConfig::default().local().num_cpus(2.0)).unwrap();
    let refs: Vec<_> = (0..7).map(square::remote).collect();
    assert_eq!(shoal::get_all_blocking(&refs).unwrap().iter().sum::<u64>(), 91);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // A one-time link on loopback; it logs a browser in with a cookie.
    let link = rt.block_on(shoal::dashboard_url()).expect("the embedded cluster serves a dashboard");
    assert!(link.starts_with("http://127.0.0.1:") && link.contains("/login?code="), "{link}");
    let base = link.split("/login").next().unwrap().to_string();
    assert_eq!(http_get(&format!("{base}/api/overview"), &[]).0, 401, "not without the link");
    let (status, head, _) = http_get_full(&link, &[]);
    assert!((300..400).contains(&status), "a redirect to the page: {status}\n{head}");
    let cookie = header(&head, "set-cookie").expect("a session cookie").split(';').next().unwrap().to_string();
    assert_eq!(http_get(&link, &[]).0, 401, "the link works once");
    let (status, page) = http_get(&format!("{base}/"), &[("Cookie", &cookie)]);
    assert_eq!(status, 200);
    assert!(page.contains("<html") || page.contains("<!DOCTYPE"), "the page");

    // The state it shows is this program's: its job, its seven squares.
    let (status, body) = http_get(&format!("{base}/api/tasks"), &[("Cookie", &cookie)]);
    assert_eq!(status, 200, "{body}");
    let squares = body.matches("square").count();
    assert!(squares >= 7, "the seven tasks are listed: {body}");
    let (status, text) = http_get(&format!("{base}/metrics"), &[("Cookie", &cookie)]);
    assert_eq!(status, 200, "{text}");
    assert_eq!(sample(&parse_prometheus(&text), "shoal_tasks_finished_total"), 7.0, "{text}");
    assert_eq!(sample(&parse_prometheus(&text), "shoal_nodes{state=\"alive\"}"), 1.0);
}
