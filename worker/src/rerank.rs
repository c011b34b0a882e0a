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
    scorer: Option<&mut S>,
    prompt: &Prompt,
    candidates: Vec<Candidate>,
    keep: u32,
) -> anyhow::Result<Vec<Ranked>> {
    let keep = keep as usize;
    let Some(scorer) = scorer else {
        return Ok(candidates
            .into_iter()
            .take(keep)
            .enumerate()
            .map(|(i, candidate)| Ranked {
                rank: i as u32,
                score: None,
                candidate,
            })
            .collect());
    };
    let images: Vec<_> = candidates.iter().map(|c| c.image.clone()).collect();
    let scores = scorer.score(prompt, &images)?;
    anyhow::ensure!(
        scores.len() == candidates.len(),
        "the scorer returned {} scores for {} candidates",
        scores.len(),
        candidates.len()
    );
    let mut slots: Vec<Option<Candidate>> = candidates.into_iter().map(Some).collect();
    Ok(top_k(&scores, keep)
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
/// positive parts ([`Clip::score_prompt`]).
impl Scorer for Clip {
    fn score(&mut self, prompt: &Prompt, images: &[RgbImage]) -> anyhow::Result<Vec<f32>> {
        self.score_prompt(prompt, images)
    }
}

/// The CLIP scorer of `root/clip` on `device`, or `None` when the root has
/// no CLIP model (candidates are then kept in order, without scores).
pub fn load_scorer(
    root: &Path,
    device: tch::Device,
) -> anyhow::Result<Option<Box<dyn Scorer + Send>>> {
    let dir = root.join("clip");
    if !dir.exists() {
        return Ok(None);
    }
    let clip =
        Clip::load(&dir, device).with_context(|| format!("loading CLIP from {}", dir.display()))?;
    Ok(Some(Box::new(clip)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// Scores an image by its red level (a stand-in with a known order).
    struct Redness;

    impl Scorer for Redness {
        fn score(&mut self, _: &Prompt, images: &[RgbImage]) -> anyhow::Result<Vec<f32>> {
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
        let r = rerank(Some(&mut Redness), &prompt(), c, 3).unwrap();
        let got: Vec<_> = r.iter().map(|r| (r.rank, r.candidate.seed)).collect();
        assert_eq!(got, [(0, 1), (1, 4), (2, 3)], "ties keep candidate order");
        assert_eq!(r[0].score, Some(200.0));
    }

    #[test]
    fn nan_scores_rank_last() {
        let c = vec![cand(0, 0), cand(5, 1)];
        let r = rerank(Some(&mut Redness), &prompt(), c, 2).unwrap();
        assert_eq!(r[0].candidate.seed, 1);
        assert!(r[1].score.unwrap().is_nan());
    }

    #[test]
    fn without_a_scorer_keeps_the_first_in_order() {
        let c = vec![cand(1, 0), cand(2, 1), cand(3, 2)];
        let r = rerank(None::<&mut dyn Scorer>, &prompt(), c, 2).unwrap();
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
            fn score(&mut self, _: &Prompt, _: &[RgbImage]) -> anyhow::Result<Vec<f32>> {
                Ok(vec![1.0])
            }
        }
        let e = rerank(Some(&mut Short), &prompt(), vec![cand(1, 0), cand(2, 1)], 1).unwrap_err();
        assert!(e.to_string().contains("1 scores for 2 candidates"), "{e}");
    }
}
