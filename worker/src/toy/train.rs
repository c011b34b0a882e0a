//! `models train-toy`: the three toy trainings, the CLIP on a thread of its
//! own beside the VQGAN and then the DALL·E.

use super::{clip, dalle, vqgan, THREADS};
use std::path::Path;
use std::sync::atomic::Ordering;

/// What `models train-toy` trains, and how long: `None` leaves a model out.
#[derive(Debug, Clone, Copy)]
pub struct ToyTraining {
    pub seed: u64,
    pub clip: Option<clip::ClipTraining>,
    pub vqgan: Option<vqgan::VqganTraining>,
    pub dalle: Option<dalle::DalleTraining>,
}

/// Trains the chosen toy models into the model root `out` (`clip/`,
/// `vqgan/`, `dalle/`; the DALL·E learns the codes of the VQGAN in
/// `out/vqgan`). The CLIP trains on a thread of its own beside the VQGAN
/// and then the DALL·E, each on one libtorch thread, which keeps two cores
/// busy better than one training at a time on two threads (the models are
/// too small to split their products well); a training's weights do not
/// depend on what trains beside it.
pub fn train_toy(out: &Path, t: ToyTraining) -> anyhow::Result<()> {
    if t.clip.is_some() && (t.vqgan.is_some() || t.dalle.is_some()) {
        THREADS.store(1, Ordering::Relaxed);
    }
    let log = |line: String| eprintln!("{line}");
    std::thread::scope(|scope| {
        let clip = t.clip.map(|opts| {
            scope.spawn(move || {
                let done = clip::train(&out.join("clip"), t.seed, opts, &mut { log });
                // What still trains may have every core.
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                THREADS.store(cores as i32, Ordering::Relaxed);
                done
            })
        });
        let rest = (|| {
            if let Some(opts) = t.vqgan {
                vqgan::train(&out.join("vqgan"), t.seed, opts, &mut { log })?;
            }
            if let Some(opts) = t.dalle {
                let (dir, vqgan) = (out.join("dalle"), out.join("vqgan"));
                dalle::train(&dir, &vqgan, t.seed, opts, &mut { log })?;
            }
            anyhow::Ok(())
        })();
        let clip = match clip {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the CLIP's training panicked"))),
            None => Ok(()),
        };
        rest.and(clip)
    })
}
