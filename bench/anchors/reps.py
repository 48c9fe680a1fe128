"""Repetitions as Shoal's bench takes them (bench/src/main.rs `reps`,
`put_stats`): REPS samples, reported as the median under `key` and the
extremes under `<stem>_min_<unit>` / `<stem>_max_<unit>` (`put_GBps` ->
`put_min_GBps`, `items_per_s` -> `items_min_per_s`)."""
import time

REPS = 5

def reps(f, n=REPS):
    """`n` samples of `f()`, sorted."""
    return sorted(f() for _ in range(n))

def timed(f, n=REPS):
    """`n` timings of `f()` in seconds, sorted."""
    def once():
        t = time.perf_counter(); f(); return time.perf_counter() - t
    return reps(once, n)

def stats(out, key, v):
    """Puts sorted samples `v` into `out` as median, min and max."""
    stem, unit = key.rsplit("_", 1)
    if stem.endswith("_per"):
        stem, unit = stem[:-4], "per_s"
    out[key] = v[len(v) // 2]
    out[f"{stem}_min_{unit}"] = v[0]
    out[f"{stem}_max_{unit}"] = v[-1]
