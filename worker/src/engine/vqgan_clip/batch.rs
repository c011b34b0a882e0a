//! Several `vqgan-clip` jobs optimised as one batch: their latents are the
//! rows of one tensor, so each step decodes every candidate and embeds every
//! cutout in one pass. A job keeps its own prompt, seeds, learning rate,
//! init image and Adam state; its rows' gradient comes from its own loss.
//! Jobs share a batch only with the same size, cutout count, step count and
//! candidate count (the engine's batch key), so they finish together; a job
//! that is cancelled or runs out of time leaves at the next step. A job
//! rendered alone is a batch of one.

use super::{clamp_to_codebook, loss_and_grad_jobs, InitPull, JobTerms, Prepared, VqganClip};
use crate::candidate::Candidate;
use crate::engine::render::{BatchItem, RenderError};
use crate::models::image::to_images;
use tch::Tensor;

/// A job of the batch: its place among the items and its state.
struct Member {
    item: usize,
    job: Prepared,
}

type Outcome = Result<Vec<Candidate>, RenderError>;

impl VqganClip {
    /// Optimises the jobs of `items` together (see the module); `on_step`
    /// sees each step's losses, one per candidate of the batch.
    pub(super) fn optimise_batch(
        &self,
        items: &mut [BatchItem<'_>],
        on_step: &mut dyn FnMut(u32, &Tensor),
    ) -> Vec<Outcome> {
        let mut results: Vec<Option<Outcome>> = items.iter().map(|_| None).collect();
        let mut members = Vec::with_capacity(items.len());
        for (k, item) in items.iter().enumerate() {
            match self.prepare(item.job, item.inputs) {
                Ok(job) => members.push(Member { item: k, job }),
                Err(e) => results[k] = Some(Err(e)),
            }
        }
        if let Some(images) = self.run_members(items, &mut members, &mut results, on_step) {
            let mut images = images.into_iter();
            for m in &members {
                let out = Candidate::take(&mut images, &m.job.seeds);
                results[m.item] = Some(items[m.item].ctx.check().map(|_| out));
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every job ended"))
            .collect()
    }

    /// The steps of the batch; the final images of the members still in it
    /// (in member order), or `None` when none is left. Results of members
    /// that leave or fail are written to `results`.
    fn run_members(
        &self,
        items: &mut [BatchItem<'_>],
        members: &mut Vec<Member>,
        results: &mut [Option<Outcome>],
        on_step: &mut dyn FnMut(u32, &Tensor),
    ) -> Option<Vec<image::RgbImage>> {
        let first = members.first()?;
        let (steps, size, latent, cutn) = (
            first.job.steps,
            first.job.size,
            first.job.latent,
            first.job.cutn,
        );
        let parts: Vec<&Tensor> = members.iter().map(|m| &m.job.z0).collect();
        let mut z = Tensor::cat(&parts, 0).set_requires_grad(true);
        let m = &self.vqgan.model;
        for step in 0..steps {
            z = self.leave_stopped(items, members, results, z)?;
            let mut cuts = Vec::new();
            let mut noise = Vec::new();
            let mut row = 0;
            for member in members.iter_mut() {
                let j = &mut member.job;
                let (c, n) = self.draw_step(&mut j.rngs, row, size, cutn, j.cut_pow);
                cuts.extend(c);
                noise.push(n);
                row += j.seeds.len() as i64;
            }
            let (out, spans) = {
                let terms = terms(members);
                let noise = Tensor::cat(&noise, 0);
                let out = loss_and_grad_jobs(m, self.guide.as_ref(), &z, &cuts, &noise, &terms);
                (
                    out,
                    terms.iter().map(|t| (t.rows, t.count)).collect::<Vec<_>>(),
                )
            };
            for (member, (at, count)) in members.iter_mut().zip(spans) {
                let mut rows = z.narrow(0, at, count);
                member
                    .job
                    .adam
                    .step(&mut rows, &out.grad.narrow(0, at, count));
            }
            clamp_to_codebook(m, &mut z);
            on_step(step, &out.loss);
            for member in members.iter() {
                (items[member.item].ctx.progress)(step + 1, steps);
            }
        }
        z = self.leave_stopped(items, members, results, z)?;
        match to_images(&self.final_images(&z, latent)) {
            Ok(images) => Some(images),
            Err(e) => {
                for member in members.iter() {
                    results[member.item] = Some(Err(RenderError::Failed(anyhow::anyhow!("{e:#}"))));
                }
                None
            }
        }
    }

    /// Drops the members whose job was stopped (answering them
    /// `Cancelled`) and their rows of `z`; `None` when none is left.
    fn leave_stopped(
        &self,
        items: &[BatchItem<'_>],
        members: &mut Vec<Member>,
        results: &mut [Option<Outcome>],
        z: Tensor,
    ) -> Option<Tensor> {
        let stopped: Vec<bool> = members
            .iter()
            .map(|m| (items[m.item].ctx.cancelled)())
            .collect();
        if !stopped.contains(&true) {
            return Some(z);
        }
        let mut kept = Vec::new();
        let mut row = 0;
        let mut staying = Vec::new();
        for (member, stop) in members.drain(..).zip(stopped) {
            let n = member.job.seeds.len() as i64;
            if stop {
                results[member.item] = Some(Err(RenderError::Cancelled));
            } else {
                kept.push(z.narrow(0, row, n).detach());
                staying.push(member);
            }
            row += n;
        }
        *members = staying;
        if kept.is_empty() {
            return None;
        }
        Some(Tensor::cat(&kept, 0).set_requires_grad(true))
    }
}

/// Each member's rows and loss terms, in member order.
fn terms(members: &[Member]) -> Vec<JobTerms<'_>> {
    let mut row = 0;
    members
        .iter()
        .map(|m| {
            let count = m.job.seeds.len() as i64;
            let t = JobTerms {
                rows: row,
                count,
                targets: &m.job.targets,
                init: Some(InitPull {
                    latent: &m.job.z0,
                    weight: m.job.init_weight,
                }),
            };
            row += count;
            t
        })
        .collect()
}
