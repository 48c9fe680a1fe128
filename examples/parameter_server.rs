//! A parameter server: one actor holds a model's weights; many tasks read
//! them, compute a gradient on their shard of the data and push it back
//! (the classic asynchronous SGD shape from Ray's examples).
//!
//!     cargo run --release --example parameter_server

use shoal::ActorHandle;

const DIM: usize = 64;

/// The model's weights, updated by every gradient pushed to it.
pub struct ParameterServer {
    weights: Vec<f64>,
    updates: u64,
    rate: f64,
}

#[shoal::actor]
impl ParameterServer {
    fn new(dim: usize, rate: f64) -> Self {
        ParameterServer { weights: vec![0.0; dim], updates: 0, rate }
    }

    /// Applies one gradient; returns how many were applied so far.
    fn push(&mut self, gradient: Vec<f64>) -> u64 {
        for (w, g) in self.weights.iter_mut().zip(&gradient) {
            *w -= self.rate * g;
        }
        self.updates += 1;
        self.updates
    }

    /// The current weights.
    fn pull(&self) -> Vec<f64> {
        self.weights.clone()
    }
}

/// The weights the data was made with (what training should find).
fn truth() -> Vec<f64> {
    (0..DIM).map(|i| (i as f64 * 0.37).sin()).collect()
}

/// A worker: pulls the weights, computes the least-squares gradient on its
/// shard (`rows` samples made from `seed`), pushes it. Returns the loss it saw.
#[shoal::remote]
fn train_step(ps: ActorHandle<ParameterServer>, seed: u64, rows: usize) -> f64 {
    let w = ps.pull().get().expect("pull the weights");
    let target = truth();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let mut grad = vec![0.0; DIM];
    let mut loss = 0.0;
    for _ in 0..rows {
        let a: Vec<f64> = (0..DIM).map(|_| next()).collect();
        let y: f64 = a.iter().zip(&target).map(|(a, t)| a * t).sum();
        let err: f64 = a.iter().zip(&w).map(|(a, w)| a * w).sum::<f64>() - y;
        loss += err * err;
        for (g, a) in grad.iter_mut().zip(&a) {
            *g += 2.0 * err * a / rows as f64;
        }
    }
    ps.push(grad).get().expect("push the gradient");
    loss / rows as f64
}

fn main() -> shoal::Result<()> {
    shoal::init_blocking()?;
    let ps = ParameterServer::remote(DIM, 0.5);
    let t = std::time::Instant::now();
    let mut first = None;
    let mut last = 0.0;
    for round in 0..30u64 {
        // Eight workers per round, each on its own shard, in parallel.
        let steps: Vec<_> = (0..8).map(|k| train_step::remote(ps.clone(), round * 8 + k, 256)).collect();
        let losses = shoal::get_all_blocking(&steps)?;
        last = losses.iter().sum::<f64>() / losses.len() as f64;
        first.get_or_insert(last);
    }
    let w = ps.pull().get()?;
    let dist: f64 = w.iter().zip(truth()).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
    println!(
        "240 gradients from tasks applied by the parameter server in {:.2?}: loss {:.4} -> {:.6}, distance to the true weights {dist:.4}",
        t.elapsed(),
        first.unwrap_or_default(),
        last
    );
    assert!(last < first.unwrap_or_default() / 10.0, "training reduced the loss");
    Ok(())
}
