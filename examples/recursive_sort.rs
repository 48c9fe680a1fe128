//! A program whose task graph grows while it runs: a merge sort whose
//! tasks split themselves (nested tasks), hand back refs to the sorted
//! runs their children made (refs inside values), and a generator that
//! streams the merged result to the driver in chunks.
//!
//!     cargo run --release --example recursive_sort

use shoal::ObjectRef;

/// Sorted runs of `v`: a leaf sorts its piece; a larger piece is split
/// into two child tasks, whose runs (refs, not values) are handed back
/// without waiting for them.
#[shoal::remote]
fn sorted_runs(v: Vec<u32>, leaf: usize) -> Vec<ObjectRef<Vec<u32>>> {
    if v.len() <= leaf {
        let mut v = v;
        v.sort_unstable();
        return vec![shoal::put(v).expect("put")];
    }
    let right = v[v.len() / 2..].to_vec();
    let left = v[..v.len() / 2].to_vec();
    let (l, r) = (sorted_runs::remote(left, leaf), sorted_runs::remote(right, leaf));
    // Blocking here lends this task's CPU to its children.
    let mut runs = l.get().expect("left runs");
    runs.extend(r.get().expect("right runs"));
    runs
}

/// Merges the runs and streams the result in chunks of `chunk` numbers.
#[shoal::remote]
fn merged(runs: Vec<ObjectRef<Vec<u32>>>, chunk: usize) -> impl Iterator<Item = Vec<u32>> {
    let runs: Vec<Vec<u32>> = runs.iter().map(|r| r.get().expect("a run")).collect();
    let mut at = vec![0usize; runs.len()];
    let mut out = Vec::with_capacity(chunk);
    std::iter::from_fn(move || {
        out.clear();
        while out.len() < chunk {
            let next = (0..runs.len()).filter(|&i| at[i] < runs[i].len()).min_by_key(|&i| runs[i][at[i]]);
            let Some(i) = next else { break };
            out.push(runs[i][at[i]]);
            at[i] += 1;
        }
        (!out.is_empty()).then(|| out.clone())
    })
}

fn main() -> shoal::Result<()> {
    shoal::init_blocking()?;
    let mut x = 2_463_534_242u32;
    let v: Vec<u32> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
        .collect();
    let t = std::time::Instant::now();
    let runs = sorted_runs::remote(v.clone(), 25_000).get()?;
    let (mut got, mut chunks) = (Vec::with_capacity(v.len()), 0);
    for item in merged::remote(runs.clone(), 10_000) {
        got.extend(item?.get()?);
        chunks += 1;
    }
    let mut want = v;
    want.sort_unstable();
    assert!(got == want, "the stream is the sorted input");
    println!("sorted {} numbers: {} runs made by nested tasks, merged and streamed in {chunks} chunks, in {:.2?}", got.len(), runs.len(), t.elapsed());
    Ok(())
}
