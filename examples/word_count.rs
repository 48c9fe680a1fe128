//! Map-reduce word count over text files: each file is counted by a task,
//! the counts are merged by a tree of reduce tasks on the cluster, and only
//! the final table comes back. The files are generated if absent.
//!
//!     cargo run --release --example word_count [DIR]

use std::collections::HashMap;
use std::path::PathBuf;

#[shoal::remote]
fn count_file(path: String) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut counts = HashMap::new();
    for w in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        *counts.entry(w.to_lowercase()).or_insert(0) += 1;
    }
    counts
}

#[shoal::remote]
fn merge(mut a: HashMap<String, u64>, b: HashMap<String, u64>) -> HashMap<String, u64> {
    for (w, n) in b {
        *a.entry(w).or_insert(0) += n;
    }
    a
}

const WORDS: &[&str] = &["shoal", "task", "object", "node", "worker", "head", "graph", "future", "rust", "fast"];

fn generate(dir: &PathBuf, files: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for f in 0..files {
        let text: Vec<&str> = (0..5_000).map(|i| WORDS[(i * 7 + f * 3 + i / 11) % WORDS.len()]).collect();
        std::fs::write(dir.join(format!("part-{f:03}.txt")), text.join(" "))?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("shoal-word-count"));
    if !dir.exists() {
        generate(&dir, 16)?;
    }
    shoal::init_blocking()?;
    let mut files: Vec<String> = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path().to_string_lossy().into_owned())).collect::<Result<_, _>>()?;
    files.sort();
    // Workers on other machines need the same path (a shared file system).
    let mut level: Vec<_> = files.iter().cloned().map(count_file::remote).collect();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| if p.len() == 2 { merge::remote(&p[0], &p[1]) } else { p[0].clone() }).collect();
    }
    let counts = level[0].get()?;
    let mut top: Vec<_> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!("{} files in {}; top words:", files.len(), dir.display());
    for (w, n) in top.iter().take(5) {
        println!("  {w:<8} {n}");
    }
    Ok(())
}
