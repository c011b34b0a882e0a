//! CLIP reranking, shared by every engine: score each candidate against the
//! prompt, keep the best `keep`.

use crate::engine::Candidate;
use kiln_protocol::Prompt;

/// Scores images against a prompt (CLIP: cosine similarity × logit scale).
pub trait Scorer {
    fn score(&mut self, prompt: &Prompt, images: &[image::RgbImage]) -> anyhow::Result<Vec<f32>>;
}

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
    let mut scored: Vec<(f32, Candidate)> = scores.into_iter().zip(candidates).collect();
    // Stable sort, descending, NaN last.
    scored.sort_by(|a, b| match (a.0.is_nan(), b.0.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) => b.0.total_cmp(&a.0),
    });
    Ok(scored
        .into_iter()
        .take(keep)
        .enumerate()
        .map(|(i, (score, candidate))| Ranked {
            rank: i as u32,
            score: Some(score),
            candidate,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

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
