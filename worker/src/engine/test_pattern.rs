//! A cheap deterministic image from the prompt's hash and the seed.
//!
//! The same prompt and seed always give the same pixels, at any size. The
//! job's `steps` are walked one by one, each taking `step_delay_ms`, with a
//! progress report and a cancellation check per step, so that tests can hold
//! a job in flight for as long as they need and measure how fast a cancel
//! lands. Nothing here touches the device: it measures the worker's own
//! overhead (queueing, events, upload), not a model's.
//!
//! Jobs of equal step count and `step_delay_ms` render together in
//! lockstep, as a batch on a GPU does: one delay per step for the whole
//! batch, each job reporting its own progress, and a job that is cancelled
//! leaves the batch.

use super::render::{
    wrong_engine, BatchItem, BatchKey, Engine, RenderContext, RenderError, RenderInputs,
};
use crate::candidate::Candidate;
use image::{Rgb, RgbImage};
use kiln_protocol::{Engine as EngineKind, EngineParams, JobSpec};
use sha2::{Digest, Sha256};
use std::time::Duration;

pub struct TestPattern;

/// A test-pattern job's step count (steps × candidates) and step delay.
fn walk(job: &JobSpec) -> Result<(u32, Duration), RenderError> {
    let EngineParams::TestPattern(t) = job.params().engine() else {
        return Err(wrong_engine(job, EngineKind::TestPattern));
    };
    let total = t.steps().saturating_mul(job.params().candidates());
    Ok((total, Duration::from_millis(u64::from(t.step_delay_ms()))))
}

/// The candidates of `job`, in candidate order.
fn candidates(job: &JobSpec) -> Vec<Candidate> {
    let p = job.params();
    (0..p.candidates())
        .map(|i| {
            let seed = job.candidate_seed(i);
            Candidate {
                image: pattern(job.prompt().text(), seed, p.width(), p.height()),
                seed,
            }
        })
        .collect()
}

impl Engine for TestPattern {
    fn kind(&self) -> EngineKind {
        EngineKind::TestPattern
    }

    fn render(
        &self,
        job: &JobSpec,
        inputs: &RenderInputs,
        ctx: &mut RenderContext<'_>,
    ) -> Result<Vec<Candidate>, RenderError> {
        self.render_batch(&mut [BatchItem::alone(job, inputs, ctx)])
            .pop()
            .expect("one result per job")
    }

    /// Jobs of the same step delay and step count: a batch's jobs end
    /// together, as the batches of the model engines do.
    fn batch_key(&self, job: &JobSpec) -> Option<BatchKey> {
        let (total, delay) = walk(job).ok()?;
        Some((u64::from(total) << 32) | delay.as_millis() as u64)
    }

    fn render_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Vec<Result<Vec<Candidate>, RenderError>> {
        let mut results: Vec<Option<Result<Vec<Candidate>, RenderError>>> =
            items.iter().map(|_| None).collect();
        let mut walks = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match walk(item.job) {
                Ok(w) => walks.push(w),
                Err(e) => {
                    walks.push((0, Duration::ZERO));
                    results[i] = Some(Err(e));
                }
            }
        }
        let delay = walks.iter().map(|w| w.1).max().unwrap_or_default();
        let mut done = 0u32;
        loop {
            // Jobs that are cancelled or done leave the batch.
            for (i, item) in items.iter().enumerate() {
                if results[i].is_some() {
                    continue;
                }
                if (item.ctx.cancelled)() {
                    results[i] = Some(Err(RenderError::Cancelled));
                } else if done >= walks[i].0 {
                    results[i] = Some(Ok(candidates(item.job)));
                }
            }
            if results.iter().all(Option::is_some) {
                break;
            }
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            done += 1;
            for (i, item) in items.iter_mut().enumerate() {
                if results[i].is_none() {
                    (item.ctx.progress)(done, walks[i].0);
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every job ended"))
            .collect()
    }
}

/// The pattern of `prompt` and `seed`: a diagonal blend between two colours
/// drawn from the hash, crossed with a checkerboard whose cell size and
/// third colour also come from the hash.
pub fn pattern(prompt: &str, seed: u64, width: u32, height: u32) -> RgbImage {
    let mut h = Sha256::new();
    h.update(prompt.as_bytes());
    h.update([0u8]);
    h.update(seed.to_le_bytes());
    let d: [u8; 32] = h.finalize().into();
    let c0 = [d[0], d[1], d[2]];
    let c1 = [d[3], d[4], d[5]];
    let c2 = [d[6], d[7], d[8]];
    let cell = 4 + (d[9] as u32 % 29);
    let flip = d[10] & 1 == 1;
    let span = (width + height).saturating_sub(2).max(1);
    RgbImage::from_fn(width, height, |x, y| {
        let t = if flip { x + (height - 1 - y) } else { x + y };
        let mix = |a: u8, b: u8| ((a as u32 * (span - t) + b as u32 * t) / span) as u8;
        let base = [mix(c0[0], c1[0]), mix(c0[1], c1[1]), mix(c0[2], c1[2])];
        if ((x / cell) + (y / cell)) & 1 == 0 {
            Rgb(base)
        } else {
            Rgb([
                ((base[0] as u16 + c2[0] as u16) / 2) as u8,
                ((base[1] as u16 + c2[1] as u16) / 2) as u8,
                ((base[2] as u16 + c2[2] as u16) / 2) as u8,
            ])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::{Limits, ParamsDto};
    use std::cell::Cell;

    fn job(dto: ParamsDto) -> JobSpec {
        JobSpec::parse(
            EngineKind::TestPattern,
            "a red fox",
            &dto,
            7,
            &Limits::default(),
        )
        .unwrap()
    }

    type Run = (Result<Vec<Candidate>, RenderError>, Vec<(u32, u32)>);

    fn run(job: &JobSpec, cancel_after: Option<u32>) -> Run {
        let mut steps = Vec::new();
        let seen = Cell::new(0u32);
        let cancelled = || cancel_after.is_some_and(|n| seen.get() >= n);
        let mut progress = |s, t| {
            seen.set(s);
            steps.push((s, t));
        };
        let mut ctx = RenderContext {
            progress: &mut progress,
            cancelled: &cancelled,
        };
        let r = TestPattern.render(job, &RenderInputs::default(), &mut ctx);
        (r, steps)
    }

    #[test]
    fn honours_size_candidates_and_seeds() {
        let j = job(ParamsDto {
            width: Some(48),
            height: Some(32),
            candidates: Some(3),
            keep: Some(2),
            steps: Some(2),
            ..Default::default()
        });
        let (r, steps) = run(&j, None);
        let c = r.unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].image.dimensions(), (48, 32));
        assert_eq!(c.iter().map(|c| c.seed).collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(steps, (1..=6).map(|s| (s, 6)).collect::<Vec<_>>());
        assert_ne!(c[0].image, c[1].image, "seeds change the pattern");
    }

    #[test]
    fn is_deterministic_in_prompt_and_seed() {
        let a = pattern("a red fox", 1, 64, 64);
        assert_eq!(a, pattern("a red fox", 1, 64, 64));
        assert_ne!(a, pattern("a red fox", 2, 64, 64));
        assert_ne!(a, pattern("a blue fox", 1, 64, 64));
        let distinct: std::collections::HashSet<_> = a.pixels().map(|p| p.0).collect();
        assert!(
            distinct.len() > 8,
            "not a flat image: {} colours",
            distinct.len()
        );
    }

    #[test]
    fn stops_at_the_next_step_once_cancelled() {
        let j = job(ParamsDto {
            steps: Some(50),
            ..Default::default()
        });
        let (r, steps) = run(&j, Some(3));
        assert!(matches!(r, Err(RenderError::Cancelled)));
        assert_eq!(steps.len(), 3);
    }

    #[test]
    fn waits_the_step_delay() {
        let j = job(ParamsDto {
            steps: Some(3),
            step_delay_ms: Some(20),
            ..Default::default()
        });
        let t = std::time::Instant::now();
        run(&j, None).0.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn a_batch_walks_in_lockstep_and_a_cancel_ends_one_job() {
        let long = job(ParamsDto {
            steps: Some(6),
            ..Default::default()
        });
        let short = JobSpec::parse(
            EngineKind::TestPattern,
            "a blue fox",
            &ParamsDto {
                steps: Some(2),
                candidates: Some(2),
                keep: Some(2),
                ..Default::default()
            },
            3,
            &Limits::default(),
        )
        .unwrap();
        let cancelled_one = job(ParamsDto {
            steps: Some(6),
            ..Default::default()
        });
        let inputs = RenderInputs::default();
        let seen: [Cell<u32>; 3] = Default::default();
        let mut logs: [Vec<(u32, u32)>; 3] = Default::default();
        let [l0, l1, l2] = &mut logs;
        let (mut p0, mut p1, mut p2) = (
            |s, t| {
                seen[0].set(s);
                l0.push((s, t))
            },
            |s, t| {
                seen[1].set(s);
                l1.push((s, t))
            },
            |s, t| {
                seen[2].set(s);
                l2.push((s, t))
            },
        );
        let never = || false;
        let after_two = || seen[2].get() >= 2;
        let mut items = [
            BatchItem {
                job: &long,
                inputs: &inputs,
                ctx: RenderContext {
                    progress: &mut p0,
                    cancelled: &never,
                },
            },
            BatchItem {
                job: &short,
                inputs: &inputs,
                ctx: RenderContext {
                    progress: &mut p1,
                    cancelled: &never,
                },
            },
            BatchItem {
                job: &cancelled_one,
                inputs: &inputs,
                ctx: RenderContext {
                    progress: &mut p2,
                    cancelled: &after_two,
                },
            },
        ];
        let mut results = TestPattern.render_batch(&mut items).into_iter();
        let long_images = results.next().unwrap().unwrap();
        let short_images = results.next().unwrap().unwrap();
        assert!(matches!(
            results.next().unwrap(),
            Err(RenderError::Cancelled)
        ));
        assert_eq!(logs[0], (1..=6).map(|s| (s, 6)).collect::<Vec<_>>());
        assert_eq!(logs[1], (1..=4).map(|s| (s, 4)).collect::<Vec<_>>());
        assert_eq!(
            logs[2],
            [(1, 6), (2, 6)],
            "the cancelled job left the batch"
        );
        let alone = |j: &JobSpec| run(j, None).0.unwrap();
        let same = |a: &[Candidate], b: &[Candidate]| {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.image == y.image && x.seed == y.seed)
        };
        assert!(same(&long_images, &alone(&long)));
        assert!(same(&short_images, &alone(&short)));
    }
}
