//! Helpers shared by the engine tests.

use kiln_protocol::JobSpec;
use kiln_worker::engine::{BatchItem, Candidate, Engine, RenderContext, RenderError, RenderInputs};
use std::cell::{Cell, RefCell};

/// A render's result and every `(step, total)` it reported.
pub type Rendered = (Result<Vec<Candidate>, RenderError>, Vec<(u32, u32)>);

/// Renders `jobs` as one batch; job `k` is cancelled once it reported
/// `cancel_at[k]` steps.
pub fn render_together(
    engine: &dyn Engine,
    jobs: &[&JobSpec],
    cancel_at: &[Option<u32>],
) -> Vec<Rendered> {
    let inputs = RenderInputs::default();
    let steps: Vec<Cell<u32>> = jobs.iter().map(|_| Default::default()).collect();
    let logs: Vec<RefCell<Vec<(u32, u32)>>> = jobs.iter().map(|_| Default::default()).collect();
    let mut progress: Vec<_> = steps
        .iter()
        .zip(&logs)
        .map(|(s, l)| {
            move |step: u32, total: u32| {
                s.set(step);
                l.borrow_mut().push((step, total));
            }
        })
        .collect();
    let cancelled: Vec<_> = steps
        .iter()
        .zip(cancel_at)
        .map(|(s, at)| move || at.is_some_and(|n| s.get() >= n))
        .collect();
    let mut items: Vec<BatchItem<'_>> = jobs
        .iter()
        .zip(progress.iter_mut())
        .zip(&cancelled)
        .map(|((job, progress), cancelled)| BatchItem {
            job,
            inputs: &inputs,
            ctx: RenderContext {
                progress,
                cancelled,
            },
        })
        .collect();
    let results = engine.render_batch(&mut items);
    drop(items);
    results
        .into_iter()
        .zip(logs)
        .map(|(r, l)| (r, l.into_inner()))
        .collect()
}

/// Pixels of `b` that differ from `a`, and the largest difference.
pub fn differences(a: &Candidate, b: &Candidate) -> (usize, u8) {
    let (x, y) = (a.image.as_raw(), b.image.as_raw());
    assert_eq!(x.len(), y.len());
    let diffs: Vec<u8> = x.iter().zip(y).map(|(p, q)| p.abs_diff(*q)).collect();
    (
        diffs.iter().filter(|d| **d > 0).count(),
        diffs.into_iter().max().unwrap_or(0),
    )
}
