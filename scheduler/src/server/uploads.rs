//! One upload per program binary. Many drivers of one program starting at
//! once (a job array, a `Parallel` fan-out of processes) all ask whether
//! the head has their binary; the first to hear "no" holds a claim on it
//! and uploads, and the others wait for that upload instead of sending the
//! same bytes again. A claim whose upload does not start within
//! [`CLAIM_LEASE`], or that fails, is released, and a waiter claims it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a claim waits for its upload to start.
pub(super) const CLAIM_LEASE: Duration = Duration::from_secs(20);
/// How long a driver waits for another's upload before uploading itself.
const WAIT_AT_MOST: Duration = Duration::from_secs(300);

struct Claim {
    id: u64,
    started: bool,
    /// Dropped when the claim ends: waiters wake.
    _done: watch::Sender<()>,
    ended: watch::Receiver<()>,
}

/// The binaries being uploaded, by hash.
#[derive(Clone, Default)]
pub(super) struct Uploads {
    inner: Arc<Mutex<(u64, HashMap<String, Claim>)>>,
}

/// What a "do you have it?" gets while the binary is absent.
pub(super) enum Absent {
    /// Upload it: the caller now holds the claim.
    Upload,
    /// Another caller is uploading it: wait on this, then ask again.
    Wait(watch::Receiver<()>),
}

/// Held by an upload in progress; the claim ends when it is dropped.
pub(super) struct Uploading {
    uploads: Uploads,
    hash: String,
    id: u64,
}

impl Drop for Uploading {
    fn drop(&mut self) {
        let mut g = self.uploads.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.1.get(&self.hash).is_some_and(|c| c.id == self.id) {
            g.1.remove(&self.hash);
        }
    }
}

impl Uploads {
    fn claim(g: &mut (u64, HashMap<String, Claim>), hash: &str, started: bool) -> u64 {
        g.0 += 1;
        let id = g.0;
        let (tx, rx) = watch::channel(());
        g.1.insert(hash.to_string(), Claim { id, started, _done: tx, ended: rx });
        id
    }

    /// `hash` is not stored: claim it, or learn whom to wait for.
    pub(super) fn absent(&self, hash: &str) -> Absent {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.1.get(hash) {
            return Absent::Wait(c.ended.clone());
        }
        let id = Self::claim(&mut g, hash, false);
        drop(g);
        // The lease: a claimer that never uploads (it died, or found the
        // binary elsewhere) does not hold the others forever.
        let (uploads, hash) = (self.clone(), hash.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(CLAIM_LEASE).await;
            let mut g = uploads.inner.lock().unwrap_or_else(|p| p.into_inner());
            if g.1.get(&hash).is_some_and(|c| c.id == id && !c.started) {
                g.1.remove(&hash);
            }
        });
        Absent::Upload
    }

    /// An upload of `hash` begins: it holds the claim (taking over an
    /// unstarted one) until the returned guard drops. `Err`: another
    /// upload of it is in progress; wait on the receiver.
    pub(super) fn begin(&self, hash: &str) -> Result<Uploading, watch::Receiver<()>> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = match g.1.get_mut(hash) {
            Some(c) if c.started => return Err(c.ended.clone()),
            Some(c) => {
                c.started = true;
                c.id
            }
            None => Self::claim(&mut g, hash, true),
        };
        Ok(Uploading { uploads: self.clone(), hash: hash.to_string(), id })
    }
}

/// Waits until the claim behind `ended` ends (bounded).
pub(super) async fn wait(mut ended: watch::Receiver<()>) {
    let _ = tokio::time::timeout(WAIT_AT_MOST, async {
        // `changed` errs once the claim's sender is dropped.
        while ended.changed().await.is_ok() {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_first_asker_uploads_the_others_wait_for_it_and_an_idle_claim_lapses() {
        let u = Uploads::default();
        assert!(matches!(u.absent("h"), Absent::Upload));
        let Absent::Wait(w) = u.absent("h") else { panic!("a second asker waits") };
        let Ok(guard) = u.begin("h") else { panic!("the claimer uploads") };
        assert!(u.begin("h").is_err(), "a second upload waits for the first");
        let waiter = tokio::spawn(wait(w));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        waiter.await.unwrap();
        assert!(matches!(u.absent("h"), Absent::Upload), "the claim ended with its upload");
        // Nobody uploads: the lease ends the claim.
        let Absent::Wait(w) = u.absent("h") else { panic!() };
        let t = tokio::time::Instant::now();
        wait(w).await;
        assert!(t.elapsed() >= CLAIM_LEASE && t.elapsed() < CLAIM_LEASE * 2, "{:?}", t.elapsed());
        assert!(matches!(u.absent("h"), Absent::Upload));
    }
}
