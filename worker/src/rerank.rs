//! CLIP reranking, shared by every engine: score each candidate against the
//! prompt, keep the best `keep`.
//!
//! CLIP is the worker's [`Scorer`] ([`load_scorer`] loads it from a model
//! root); the networks in [`crate::models`] know nothing of candidates.

use crate::models::clip::{top_k, Clip};
use anyhow::Context;
use image::RgbImage;
use kiln_protocol::Prompt;
use std::path::Path;
use std::sync::Arc;

pub use crate::candidate::{Candidate, Scorer};

/// A kept candidate with its rank (0 is best) and score.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub rank: u32,
    pub score: Option<f32>,
    pub candidate: Candidate,
}

/// Keeps the `keep` best of `candidates` by `scorer`'s score against
/// `prompt`, best first. Equal scores keep candidate order; a NaN score
/// ranks last. Without a scorer the first `keep` candidates are kept in
/// order, without scores.
pub fn rerank<S: Scorer + ?Sized>(
    scorer: Option<&S>,
    prompt: &Prompt,
    candidates: Vec<Candidate>,
    keep: u32,
) -> anyhow::Result<Vec<Ranked>> {
    let mut one = rerank_many(scorer, vec![(prompt, candidates, keep)]);
    one.pop().expect("one ranking per job")
}

/// [`rerank`] for the jobs of a batch, `(prompt, candidates, keep)` each:
/// the scorer sees every candidate of the batch at once. When that fails,
/// each job is scored alone, so that one job's error stays its own.
pub fn rerank_many<S: Scorer + ?Sized>(
    scorer: Option<&S>,
    jobs: Vec<(&Prompt, Vec<Candidate>, u32)>,
) -> Vec<anyhow::Result<Vec<Ranked>>> {
    let Some(scorer) = scorer else {
        return jobs
            .into_iter()
            .map(|(_, candidates, keep)| {
                Ok(candidates
                    .into_iter()
                    .take(keep as usize)
                    .enumerate()
                    .map(|(i, candidate)| Ranked {
                        rank: i as u32,
                        score: None,
                        candidate,
                    })
                    .collect())
            })
            .collect();
    };
    let images: Vec<Vec<RgbImage>> = jobs
        .iter()
        .map(|(_, c, _)| c.iter().map(|c| c.image.clone()).collect())
        .collect();
    let asks: Vec<(&Prompt, &[RgbImage])> = jobs
        .iter()
        .zip(&images)
        .map(|((p, _, _), i)| (*p, i.as_slice()))
        .collect();
    let scores: Vec<anyhow::Result<Vec<f32>>> = match scorer.score_many(&asks) {
        Ok(s) if s.len() == jobs.len() => s.into_iter().map(Ok).collect(),
        _ => asks.iter().map(|(p, i)| scorer.score(p, i)).collect(),
    };
    jobs.into_iter()
        .zip(scores)
        .map(|((_, candidates, keep), scores)| rank(&scores?, candidates, keep))
        .collect()
}

/// The `keep` best of `candidates` by `scores`, best first.
fn rank(scores: &[f32], candidates: Vec<Candidate>, keep: u32) -> anyhow::Result<Vec<Ranked>> {
    anyhow::ensure!(
        scores.len() == candidates.len(),
        "the scorer returned {} scores for {} candidates",
        scores.len(),
        candidates.len()
    );
    let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
    Ok(top_k(scores, keep as usize)
        .into_iter()
        .enumerate()
        .map(|(rank, (i, score))| Ranked {
            rank: rank as u32,
            score: Some(score),
            candidate: slots[i].take().expect("top_k names each candidate once"),
        })
        .collect())
}

/// CLIP as the scorer: each image's weighted score against the prompt's
/// positive parts ([`Clip::score_prompt`]); a batch's images and texts are
/// each embedded in one pass ([`Clip::score_prompts`]).
impl Scorer for Clip {
    fn score(&self, prompt: &Prompt, images: &[RgbImage]) -> anyhow::Result<Vec<f32>> {
        self.score_prompt(prompt, images)
    }

    fn score_many(&self, items: &[(&Prompt, &[RgbImage])]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.score_prompts(items)
    }
}

/// The CLIP of `root/clip` on `device`, or `None` when the root has no CLIP
/// model (candidates are then kept in order, without scores).
pub fn load_clip(
    root: &Path,
    device: tch::Device,
    kind: tch::Kind,
) -> anyhow::Result<Option<Arc<Clip>>> {
    let dir = root.join("clip");
    if !dir.exists() {
        return Ok(None);
    }
    let clip = Clip::load_with_kind(&dir, device, kind)
        .with_context(|| format!("loading CLIP from {}", dir.display()))?;
    Ok(Some(Arc::new(clip)))
}

/// The CLIP scorer of `root/clip` on `device`, in CLIP's default precision
/// ([`load_clip`]).
pub fn load_scorer(root: &Path, device: tch::Device) -> anyhow::Result<Option<Arc<dyn Scorer>>> {
    Ok(load_clip(root, device, Clip::default_kind(device))?.map(|c| c as Arc<dyn Scorer>))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// Scores an image by its red level (a stand-in with a known order).
    struct Redness;

    impl Scorer for Redness {
        fn score(&self, _: &Prompt, images: &[RgbImage]) -> anyhow::Result<Vec<f32>> {
            Ok(images
                .iter()
                .map(|i| match i.get_pixel(0, 0).0[0] {
                    0 => f32::NAN,
                    r => r as f32,
                })
                .collect())
        }
    }

    fn cand(red: u8, seed: u64) -> Candidate {
        Candidate {
            image: RgbImage::from_pixel(2, 2, Rgb([red, 0, 0])),
            seed,
        }
    }

    fn prompt() -> Prompt {
        Prompt::parse("a red square", 100).unwrap()
    }

    #[test]
    fn keeps_the_best_scores_first() {
        let c = vec![
            cand(10, 0),
            cand(200, 1),
            cand(0, 2),
            cand(90, 3),
            cand(200, 4),
        ];
        let r = rerank(Some(&Redness), &prompt(), c, 3).unwrap();
        let got: Vec<_> = r.iter().map(|r| (r.rank, r.candidate.seed)).collect();
        assert_eq!(got, [(0, 1), (1, 4), (2, 3)], "ties keep candidate order");
        assert_eq!(r[0].score, Some(200.0));
    }

    #[test]
    fn nan_scores_rank_last() {
        let c = vec![cand(0, 0), cand(5, 1)];
        let r = rerank(Some(&Redness), &prompt(), c, 2).unwrap();
        assert_eq!(r[0].candidate.seed, 1);
        assert!(r[1].score.unwrap().is_nan());
    }

    #[test]
    fn without_a_scorer_keeps_the_first_in_order() {
        let c = vec![cand(1, 0), cand(2, 1), cand(3, 2)];
        let r = rerank(None::<&dyn Scorer>, &prompt(), c, 2).unwrap();
        let got: Vec<_> = r
            .iter()
            .map(|r| (r.rank, r.candidate.seed, r.score))
            .collect();
        assert_eq!(got, [(0, 0, None), (1, 1, None)]);
    }

    #[test]
    fn a_scorer_that_miscounts_is_an_error() {
        struct Short;
        impl Scorer for Short {
            fn score(&self, _: &Prompt, _: &[RgbImage]) -> anyhow::Result<Vec<f32>> {
                Ok(vec![1.0])
            }
        }
        let e = rerank(Some(&Short), &prompt(), vec![cand(1, 0), cand(2, 1)], 1).unwrap_err();
        assert!(e.to_string().contains("1 scores for 2 candidates"), "{e}");
    }
}
