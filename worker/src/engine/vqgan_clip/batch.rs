//! Several `vqgan-clip` jobs optimised as one batch: their latents are the
//! rows of one tensor, so each step decodes every candidate and embeds every
//! cutout in one pass. A job keeps its own prompt, seeds, learning rate,
//! step count, init image and Adam state; its rows' gradient comes from its
//! own loss. Jobs share a batch only with the same size, cutout count and
//! candidate count (the engine's batch key).
//!
//! The batch is continuous: before every step it asks its [`Feed`] for
//! more jobs (the first time for all it offers, then up to
//! [`MAX_BATCH_CANDIDATES`] candidates in all), and a job
//! leaves the batch the step it reaches its step count, is cancelled or
//! runs out of time. So a job of 500 steps does not hold back one of 50
//! that came after it. A job rendered alone is a batch of one.

use super::{
    clamp_to_codebook, loss_and_grad_jobs, InitPull, JobTerms, Prepared, VqganClip,
    MAX_BATCH_CANDIDATES,
};
use crate::candidate::Candidate;
use crate::engine::render::{Feed, RenderError, Rendered};
use crate::models::image::to_images;
use tch::Tensor;

/// A job of the batch: the id its feed gave it, its state, and the steps it
/// took.
struct Member {
    id: usize,
    job: Prepared,
    step: u32,
}

/// The jobs in the batch and their latents, `[candidates, embed_dim, h, w]`,
/// member after member (`None` when the batch is empty).
#[derive(Default)]
struct Rows {
    members: Vec<Member>,
    z: Option<Tensor>,
}

impl VqganClip {
    /// Optimises the jobs of `feed` (see the module) until it gives no more;
    /// `on_step` sees each step's losses, one per candidate in the batch.
    pub(super) fn optimise_feed(&self, feed: &mut dyn Feed, on_step: &mut dyn FnMut(u32, &Tensor)) {
        let mut rows = Rows::default();
        for step in 0.. {
            let stopped = rows.split_off(|m| feed.stopped(m.id));
            if !stopped.is_empty() {
                let ended = stopped
                    .into_iter()
                    .map(|(m, _)| (m.id, Err(RenderError::Cancelled)));
                feed.finish(ended.collect());
            }
            let done = rows.split_off(|m| m.step >= m.job.steps);
            if !done.is_empty() {
                feed.finish(self.final_candidates(done));
            }
            self.join(feed, &mut rows);
            if rows.members.is_empty() {
                return;
            }
            self.step(feed, &mut rows, step, on_step);
        }
    }

    /// Takes in the jobs `feed` has room for: prepared, their starting
    /// latents appended to the batch's; a job that was stopped already or
    /// cannot be prepared ends at once.
    fn join(&self, feed: &mut dyn Feed, rows: &mut Rows) {
        let room = match rows.members.first() {
            None => usize::MAX,
            Some(m) => {
                let held: usize = rows.members.iter().map(|m| m.job.seeds.len()).sum();
                MAX_BATCH_CANDIDATES.saturating_sub(held) / m.job.seeds.len().max(1)
            }
        };
        if room == 0 {
            return;
        }
        let mut failed = Vec::new();
        for id in feed.join(room) {
            if feed.stopped(id) {
                failed.push((id, Err(RenderError::Cancelled)));
                continue;
            }
            let (spec, inputs) = feed.job(id);
            let job = self
                .prepare(spec, inputs)
                .and_then(|job| match rows.members.first() {
                    Some(m) if (m.job.latent, m.job.cutn) != (job.latent, job.cutn) => {
                        Err(RenderError::Invalid(
                            "the job cannot join a batch of another size or cutout count".into(),
                        ))
                    }
                    _ => Ok(job),
                });
            match job {
                Ok(job) => {
                    let z = match rows.z.take() {
                        Some(z) => Tensor::cat(&[z.detach(), job.z0.shallow_clone()], 0),
                        // A copy: Adam moves the batch's latents in place,
                        // and `z0` stays the pull's target.
                        None => job.z0.copy(),
                    };
                    rows.z = Some(z.set_requires_grad(true));
                    rows.members.push(Member { id, job, step: 0 });
                }
                Err(e) => failed.push((id, Err(e))),
            }
        }
        if !failed.is_empty() {
            feed.finish(failed);
        }
    }

    /// One step of every member: cutouts, losses, gradients, Adam, clamp;
    /// then each member's progress.
    fn step(
        &self,
        feed: &mut dyn Feed,
        rows: &mut Rows,
        step: u32,
        on_step: &mut dyn FnMut(u32, &Tensor),
    ) {
        let z = rows.z.as_mut().expect("a batch with members has latents");
        let m = &self.vqgan.model;
        let mut cuts = Vec::new();
        let mut noise = Vec::new();
        let mut row = 0;
        for member in rows.members.iter_mut() {
            let j = &mut member.job;
            let (c, n) = self.draw_step(&mut j.rngs, row, j.size, j.cutn, j.cut_pow);
            cuts.extend(c);
            noise.push(n);
            row += j.seeds.len() as i64;
        }
        let (out, spans) = {
            let terms = terms(&rows.members);
            let noise = Tensor::cat(&noise, 0);
            let out = loss_and_grad_jobs(m, self.guide.as_ref(), z, &cuts, &noise, &terms);
            (
                out,
                terms.iter().map(|t| (t.rows, t.count)).collect::<Vec<_>>(),
            )
        };
        for (member, (at, count)) in rows.members.iter_mut().zip(spans) {
            let mut span = z.narrow(0, at, count);
            member
                .job
                .adam
                .step(&mut span, &out.grad.narrow(0, at, count));
        }
        clamp_to_codebook(m, z);
        on_step(step, &out.loss);
        for member in rows.members.iter_mut() {
            member.step += 1;
            feed.progress(member.id, member.step, member.job.steps);
        }
    }

    /// The final images of members that left the batch with their latents,
    /// decoded in one pass: each member's candidates, or the decoding's
    /// error for all of them.
    fn final_candidates(&self, done: Vec<(Member, Tensor)>) -> Vec<(usize, Rendered)> {
        let latent = done[0].0.job.latent;
        let parts: Vec<&Tensor> = done.iter().map(|(_, z)| z).collect();
        match to_images(&self.final_images(&Tensor::cat(&parts, 0), latent)) {
            Ok(images) => {
                let mut images = images.into_iter();
                done.into_iter()
                    .map(|(m, _)| (m.id, Ok(Candidate::take(&mut images, &m.job.seeds))))
                    .collect()
            }
            Err(e) => done
                .into_iter()
                .map(|(m, _)| (m.id, Err(RenderError::Failed(anyhow::anyhow!("{e:#}")))))
                .collect(),
        }
    }
}

impl Rows {
    /// Takes the members `leaves` picks out of the batch, each with its rows
    /// of the latents; the others keep theirs.
    fn split_off(&mut self, mut leaves: impl FnMut(&Member) -> bool) -> Vec<(Member, Tensor)> {
        let leaving: Vec<bool> = self.members.iter().map(&mut leaves).collect();
        if !leaving.contains(&true) {
            return Vec::new();
        }
        let z = self.z.take().expect("a batch with members has latents");
        let (mut gone, mut kept, mut staying) = (Vec::new(), Vec::new(), Vec::new());
        let mut row = 0;
        for (member, leave) in self.members.drain(..).zip(leaving) {
            let n = member.job.seeds.len() as i64;
            let rows = z.narrow(0, row, n).detach();
            row += n;
            if leave {
                gone.push((member, rows));
            } else {
                kept.push(rows);
                staying.push(member);
            }
        }
        self.members = staying;
        if !kept.is_empty() {
            self.z = Some(Tensor::cat(&kept, 0).set_requires_grad(true));
        }
        gone
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
