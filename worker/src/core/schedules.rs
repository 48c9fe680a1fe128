//! Seeded, randomized event sequences over the worker core: tasks of two
//! jobs with inline, local, missing and spilled arguments; hellos, results,
//! releases, executor deaths, failed spawns and pulls, cancels, finished
//! jobs, lost sessions and timeouts, in any order. After every event the
//! core's invariants hold, the pins it holds are exactly those in the
//! store, and every task the head gave it is held or reported exactly
//! once (until its job ends or the session is lost).
//!
//! `SHOAL_SCHEDULES` sets how many schedules run (default 1000),
//! `SHOAL_SCHEDULE_SEED` replays one. With the `fuzzing` feature,
//! [`fuzz_events`] lets a fuzzer's input make every choice instead of the
//! seeded generator (`fuzz/`, target `worker_core_events`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::fakes::{FakeStore, Rec, dispatch, func, job_info, stored};
use super::*;
#[cfg(test)]
use rand::SeedableRng;
#[cfg(test)]
use rand::rngs::SmallRng;
use rand::{Rng, RngCore};
use shoal_domain::actor::ActorPart;

struct Sim {
    core: WorkerCore<FakeStore>,
    fx: Rec,
    rng: Box<dyn RngCore>,
    now: Instant,
    next_seq: u64,
    /// Tasks the head gave and has not heard back about.
    given: HashSet<TaskId>,
    reported: usize,
    killed: usize,
    /// Actors created here (their creation tasks).
    actors: Vec<TaskId>,
}

const JOBS: [JobId; 2] = [1, 2];

impl Sim {
    #[cfg(test)]
    fn new(seed: u64) -> Sim {
        Sim::with(Box::new(SmallRng::seed_from_u64(seed)))
    }

    fn with(mut rng: Box<dyn RngCore>) -> Sim {
        let cpus = rng.random_range(1..=3) as f64;
        let max = if rng.random_bool(0.3) { Some(1) } else { None };
        let mut core = WorkerCore::new(CoreConfig::new(ResourceSet::cpus(cpus), max), FakeStore::default());
        core.connected("node".into());
        Sim { core, fx: Rec::default(), rng, now: Instant::now(), next_seq: 1, given: HashSet::new(), reported: 0, killed: 0, actors: Vec::new() }
    }

    fn jobs_msg(&self) -> HeadMessage {
        HeadMessage { jobs: JOBS.iter().map(|j| job_info(*j, vec![func("f", 1.0), func("io", 0.0), func("half", 0.5)])).collect(), ..Default::default() }
    }

    /// Tells the core (as many earlier results would) that some functions
    /// are short, so that their tasks are pipelined several to an
    /// executor and executor deaths and cancels hit queues deeper than one.
    fn warm(&mut self) {
        for job in JOBS {
            for f in [0u32, 2] {
                if self.rng.random_bool(0.6) {
                    let s = self.core.service_by_fn.entry((job, f)).or_default();
                    for _ in 0..40 {
                        s.observe(Duration::from_micros(20));
                    }
                }
            }
        }
    }

    fn step(&mut self, trace: &mut Vec<String>) -> Result<(), String> {
        let r = self.rng.random_range(0..100);
        let ev = match r {
            0..=24 => {
                let n = self.rng.random_range(1..=4);
                let mut ds = Vec::new();
                for _ in 0..n {
                    let job = JOBS[self.rng.random_range(0..2)];
                    let id = ObjectId::new(job, self.next_seq);
                    self.next_seq += 1;
                    let mut args = Vec::new();
                    for _ in 0..self.rng.random_range(0..3) {
                        let obj = ObjectId::new(job, 1000 + self.rng.random_range(0..6));
                        match self.rng.random_range(0..4) {
                            0 => args.push(Payload::Inline(bytes::Bytes::from_static(b"v"))),
                            1 => {
                                if !self.core.store().has(obj) {
                                    self.core.store().sealed(obj);
                                }
                                args.push(stored(obj));
                            }
                            2 => {
                                if !self.core.store().has(obj) {
                                    self.core.store().spilled(obj);
                                }
                                args.push(stored(obj));
                            }
                            _ => args.push(stored(obj)),
                        }
                    }
                    let f = self.rng.random_range(0..4);
                    let mut d = dispatch(id, f, args);
                    // Some are `Process`es: an executor of their own; some
                    // create actors, some call them (another job's too:
                    // calls reach an actor whatever job made them).
                    d.dedicated = self.rng.random_bool(0.1);
                    match self.rng.random_range(0..12) {
                        0 => {
                            d.dedicated = true;
                            d.actor = ActorPart::Create { max_concurrency: 1 };
                            self.actors.push(id);
                        }
                        1..=3 if !self.actors.is_empty() => {
                            d.dedicated = false;
                            d.actor = ActorPart::Call(self.actors[self.rng.random_range(0..self.actors.len())]);
                        }
                        _ => {}
                    }
                    ds.push(d);
                    self.given.insert(id);
                }
                let s = format!("dispatch {:?}", ds.iter().map(|d| (d.task, d.func)).collect::<Vec<_>>());
                self.core.head_message(HeadMessage { tasks: ds, ..Default::default() }, &mut self.fx);
                s
            }
            25..=34 => {
                let spawned: Vec<ExecId> = self.fx.spawned.iter().map(|s| s.0).filter(|e| !self.fx.killed.contains(e)).collect();
                let fresh: Vec<ExecId> = spawned.into_iter().filter(|e| self.core.executors().iter().any(|x| x.0 == *e && !x.2)).collect();
                match fresh.first() {
                    Some(e) => {
                        let version = if self.rng.random_bool(0.05) { 1 } else { 2 };
                        self.core.executor_hello(*e, version, 2, self.now, &mut self.fx);
                        format!("hello {e} v{version}")
                    }
                    None => "no hello".into(),
                }
            }
            35..=59 => {
                // An executor finishes its first task (or its first few).
                let execs = self.core.executors();
                let busy: Vec<_> = execs.iter().filter(|e| e.2 && e.3 > 0).collect();
                if busy.is_empty() {
                    return Ok(());
                }
                let (exec, ..) = *busy[self.rng.random_range(0..busy.len())];
                let sent = self.fx.sent_to(exec);
                let done: Vec<TaskId> = sent.into_iter().filter(|t| self.core.held_tasks().contains(t)).take(self.rng.random_range(1..=3)).collect();
                let mut results = Vec::new();
                for t in &done {
                    let r = match self.rng.random_range(0..5) {
                        0 => {
                            self.core.store().created(*t, exec);
                            Ok(Value::Stored { size: 4 })
                        }
                        1 => Err(Failure::new(FailureKind::Panicked, "boom")),
                        _ => Ok(Value::Inline(bytes::Bytes::from_static(b"r"))),
                    };
                    results.push((*t, r));
                }
                // The executor releases the arguments of what it finished.
                let args: Vec<ObjectId> = self
                    .fx
                    .sent
                    .iter()
                    .filter(|s| s.0 == exec)
                    .flat_map(|s| s.3.iter())
                    .filter(|t| done.contains(&t.task))
                    .flat_map(|t| t.args.iter())
                    .filter_map(|a| match a {
                        ExecArg::Arena { object, .. } | ExecArg::File { object, .. } => Some(*object),
                        ExecArg::Inline(_) => None,
                    })
                    .collect();
                let step = if self.rng.random_bool(0.8) { self.rng.random_range(5..100) } else { self.rng.random_range(100..5000) };
                self.now += Duration::from_micros(step);
                self.core.executor_released(exec, &args);
                self.core.executor_results(exec, results, self.now);
                format!("{exec} finished {done:?}")
            }
            60..=64 => {
                let execs = self.core.executors();
                if execs.is_empty() {
                    return Ok(());
                }
                let (exec, ..) = execs[self.rng.random_range(0..execs.len())];
                self.core.executor_exited(exec, "signal 9", "", &mut self.fx);
                format!("{exec} exited")
            }
            65..=69 => {
                let pending: Vec<ObjectId> = self.fx.pulls.iter().map(|p| p.id).chain(self.fx.restores.iter().copied()).collect();
                if pending.is_empty() {
                    return Ok(());
                }
                let id = pending[self.rng.random_range(0..pending.len())];
                if self.fx.restores.contains(&id) {
                    self.core.restored(id);
                    self.fx.restores.retain(|r| *r != id);
                    format!("restored {id}")
                } else {
                    self.fx.pulls.retain(|p| p.id != id);
                    if self.rng.random_bool(0.7) {
                        self.core.store().sealed(id);
                        self.core.pulled(id, Ok(()));
                        format!("pulled {id}")
                    } else {
                        self.core.pulled(id, Err("peer gone".into()));
                        format!("pull of {id} failed")
                    }
                }
            }
            70..=74 => {
                let held = self.core.held_tasks();
                if held.is_empty() {
                    return Ok(());
                }
                let t = held[self.rng.random_range(0..held.len())];
                self.core.head_message(HeadMessage { cancel: vec![t], ..Default::default() }, &mut self.fx);
                format!("cancel {t}")
            }
            75..=76 => {
                let job = JOBS[self.rng.random_range(0..2)];
                self.core.head_message(HeadMessage { jobs_finished: vec![job], ..Default::default() }, &mut self.fx);
                self.given.retain(|t| t.job() != job);
                self.core.head_message(self.jobs_msg(), &mut self.fx);
                self.warm();
                format!("job {job} finished (and a new one of that id began)")
            }
            77 => {
                self.core.session_lost(&mut self.fx);
                self.given.clear();
                self.core.connected("node".into());
                self.core.head_message(self.jobs_msg(), &mut self.fx);
                self.warm();
                "session lost and reopened".into()
            }
            78..=84 => {
                for job in JOBS {
                    let r = if self.rng.random_bool(0.9) { Ok(PathBuf::from("/bin/p")) } else { Err("not an ELF executable".to_string()) };
                    self.core.binary_ready(job, r);
                }
                "binaries ready".into()
            }
            85..=87 => {
                self.fx.spawn_error = if self.rng.random_bool(0.5) { Some("EMFILE".into()) } else { None };
                format!("spawns fail: {}", self.fx.spawn_error.is_some())
            }
            88..=89 => {
                self.now += HELLO_TIMEOUT + Duration::from_secs(1);
                self.core.tick(self.now, &mut self.fx);
                "hello timeout passed".into()
            }
            90..=94 => {
                let obj = ObjectId::new(JOBS[self.rng.random_range(0..2)], 1000 + self.rng.random_range(0..6));
                self.core.head_message(HeadMessage { free_objects: vec![obj], ..Default::default() }, &mut self.fx);
                format!("free {obj}")
            }
            95..=97 => {
                // A running task starts or stops waiting for other tasks.
                let execs: Vec<_> = self.core.executors().into_iter().filter(|e| e.2 && e.3 > 0).collect();
                if execs.is_empty() {
                    return Ok(());
                }
                let (exec, ..) = execs[self.rng.random_range(0..execs.len())];
                if self.rng.random_bool(0.5) {
                    self.core.executor_blocked(exec);
                    format!("{exec} blocked")
                } else {
                    self.core.executor_unblocked(exec);
                    format!("{exec} unblocked")
                }
            }
            _ => {
                self.core.head_message(HeadMessage { drain: self.rng.random_bool(0.1), ..Default::default() }, &mut self.fx);
                "empty message".into()
            }
        };
        trace.push(ev);
        // Events often arrive in bursts, with one placement pass after
        // them all.
        if self.rng.random_bool(0.6) {
            trace.push("pump".into());
            self.core.pump(self.now, &mut self.fx);
            self.core.flush(&mut self.fx);
        }
        self.check()
    }

    fn check(&mut self) -> Result<(), String> {
        self.core.check_invariants()?;
        let held = self.core.pins_held();
        let in_store: HashMap<ObjectId, usize> = self.core.store().objects.borrow().iter().filter(|(_, o)| o.pins > 0).map(|(id, o)| (*id, o.pins)).collect();
        if held != in_store {
            return Err(format!("pins held {held:?} != pins in the store {in_store:?}"));
        }
        // Reports since the last check: each for a task given and not yet
        // reported.
        let reports: Vec<(TaskId, bool)> = self.fx.reports[self.reported..].iter().flat_map(|r| r.results.iter().map(|(t, o)| (*t, o.is_ok()))).collect();
        self.reported = self.fx.reports.len();
        for (t, _) in reports {
            if !self.given.remove(&t) {
                return Err(format!("task {t} reported twice, or never given"));
            }
        }
        let mut held: Vec<TaskId> = self.core.held_tasks();
        held.sort_unstable();
        let mut given: Vec<TaskId> = self.given.iter().copied().collect();
        given.sort_unstable();
        if held != given {
            return Err(format!("tasks held {held:?} != tasks given and not reported {given:?}"));
        }
        // A connected executor was sent every task it holds, once each, in
        // the order it holds them.
        for (exec, _, connected, _) in self.core.executors() {
            let sent = self.fx.sent_to(exec);
            let mut unique = sent.clone();
            unique.sort_unstable();
            unique.dedup();
            if unique.len() != sent.len() {
                return Err(format!("{exec} was sent a task twice: {sent:?}"));
            }
            let holds = self.core.executor_tasks_sent(exec);
            if connected && self.core.is_actor_exec(exec) {
                // An actor's process drops the calls of jobs that ended
                // from anywhere in its line: what it holds is what it was
                // sent, in order, with gaps.
                let mut rest = sent.iter();
                if !holds.iter().all(|h| rest.any(|s| s == h)) {
                    return Err(format!("actor {exec} holds {holds:?}, not in the order it was sent {sent:?}"));
                }
            } else if connected {
                let tail = sent.get(sent.len().saturating_sub(holds.len())..).unwrap_or_default();
                if tail != holds.as_slice() {
                    return Err(format!("{exec} holds {holds:?} but was sent {sent:?}"));
                }
            }
        }
        // Killed executors are forgotten.
        for k in &self.fx.killed[self.killed..] {
            if self.core.executors().iter().any(|e| e.0 == *k) {
                return Err(format!("{k} was killed but is still used"));
            }
        }
        self.killed = self.fx.killed.len();
        Ok(())
    }
}

#[cfg(test)]
fn run(seed: u64, steps: usize) -> Result<(), String> {
    run_sim(Sim::new(seed), steps)
}

fn run_sim(mut sim: Sim, steps: usize) -> Result<(), String> {
    let msg = sim.jobs_msg();
    sim.core.head_message(msg, &mut sim.fx);
    sim.warm();
    let mut trace = Vec::new();
    for _ in 0..steps {
        if let Err(e) = sim.step(&mut trace) {
            let tail: Vec<&String> = trace.iter().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(format!("{e}\nlast events:\n  {}", tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")));
        }
    }
    Ok(())
}

/// Randomness read from fuzz input: 4 bytes per draw, then zeros.
struct Bytes(Vec<u8>, usize);

impl RngCore for Bytes {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        (u64::from(self.next_u32()) << 32) | u64::from(self.next_u32())
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for d in dst {
            *d = self.0.get(self.1).copied().unwrap_or(0);
            self.1 += 1;
        }
    }
}

/// The fuzz target's body: the input chooses every event of a schedule
/// (one draw per choice); panics if the core's invariants, pins or
/// accounting break (what the fuzzer looks for).
pub fn fuzz_events(data: &[u8]) {
    let steps = (data.len() / 8).clamp(1, 400);
    if let Err(e) = run_sim(Sim::with(Box::new(Bytes(data.to_vec(), 0))), steps) {
        panic!("{e}");
    }
}

#[test]
fn the_fuzz_body_survives_seeded_random_inputs() {
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..200 {
        let n = rng.random_range(0..4096);
        let data: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        fuzz_events(&data);
    }
}

#[test]
fn random_event_schedules_keep_the_worker_core_consistent() {
    let seeds: Vec<u64> = match std::env::var("SHOAL_SCHEDULE_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let n = std::env::var("SHOAL_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000u64);
            (0..n).collect()
        }
    };
    for seed in seeds {
        let steps = 60 + (seed % 5) as usize * 50;
        let outcome = std::panic::catch_unwind(|| run(seed, steps));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("worker schedule failed: rerun with SHOAL_SCHEDULE_SEED={seed}\n{e}"),
            Err(p) => panic!("worker schedule panicked: rerun with SHOAL_SCHEDULE_SEED={seed}\n{}", shoal_domain::panic::message(&*p)),
        }
    }
}
