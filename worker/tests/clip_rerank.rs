//! CLIP as the worker uses it: a tiny model written by `init-tiny`, loaded
//! as the scorer, reranking candidates made to be close to or far from a
//! prompt; and the `clip score` command's JSON.

use image::RgbImage;
use kiln_protocol::Prompt;
use kiln_worker::model_store;
use kiln_worker::models::clip::{l2_normalize, Clip};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("kiln-clip-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn to_image(x: &Tensor) -> RgbImage {
    // [1, 3, S, S] in [0, 1] → RGB8
    let s = x.size()[2] as u32;
    let bytes = (x.squeeze_dim(0).permute([1, 2, 0]) * 255.0)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .contiguous()
        .flatten(0, -1);
    RgbImage::from_raw(s, s, Vec::<u8>::try_from(bytes).unwrap()).unwrap()
}

/// Signed-gradient steps on the pixels towards (`dir` 1) or away from
/// (`dir` -1) the text features.
fn steer(clip: &Clip, text: &Tensor, steps: usize, dir: f64) -> RgbImage {
    let s = clip.image_size();
    let t = l2_normalize(text).detach();
    let mut x = Tensor::full([1, 3, s, s], 0.5, (Kind::Float, Device::Cpu));
    for _ in 0..steps {
        let xv = x.detach().set_requires_grad(true);
        let f = l2_normalize(&clip.encode_image(&clip.normalize(&xv)));
        let cos = (f * &t).sum(Kind::Float);
        cos.backward();
        let g = xv.grad();
        x = (xv.detach() + g.sign() * (0.01 * dir)).clamp(0.0, 1.0);
    }
    to_image(&x)
}

#[test]
fn rerank_orders_candidates_by_closeness_to_the_prompt() {
    let root = temp_dir("rerank");
    model_store::clip::init_tiny(&root.join("clip")).unwrap();
    let clip = Clip::load(&root.join("clip"), Device::Cpu).unwrap();

    let prompt = Prompt::parse("a red fox in the snow | blurry:-1", 1000).unwrap();
    let text = clip.encode_text(&["a red fox in the snow"]);
    // Candidates in shuffled order: far, close, neutral, closer still.
    let far = steer(&clip, &text, 15, -1.0);
    let close = steer(&clip, &text, 5, 1.0);
    let neutral = steer(&clip, &text, 0, 1.0);
    let closest = steer(&clip, &text, 20, 1.0);
    let images = vec![far, close, neutral, closest];

    let ranked = clip.rerank(&prompt, &images, 3).unwrap();
    let order: Vec<usize> = ranked.iter().map(|r| r.0).collect();
    assert_eq!(order, vec![3, 1, 2], "scores: {ranked:?}");

    // The Scorer the worker holds gives the same scores, one per image.
    let scorer = kiln_worker::rerank::load_scorer(&root, Device::Cpu)
        .unwrap()
        .expect("a scorer");
    let scores = scorer.score(&prompt, &images).unwrap();
    assert_eq!(scores.len(), 4);
    assert!(
        scores[0] < scores[2] && scores[2] < scores[1] && scores[1] < scores[3],
        "{scores:?}"
    );
    for (i, s) in &ranked {
        assert!((scores[*i] - s).abs() < 1e-4);
    }
    // Scores are cosine × exp(logit_scale): within ±scale.
    let scale = clip.score_scale() as f32;
    assert!(
        scores.iter().all(|s| s.abs() <= scale + 1e-4),
        "{scores:?} vs {scale}"
    );

    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn weighted_positive_parts_average_their_scores() {
    let root = temp_dir("parts");
    model_store::clip::init_tiny(&root).unwrap();
    let clip = Clip::load(&root, Device::Cpu).unwrap();
    let img = RgbImage::from_fn(40, 24, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 10) as u8, 90])
    });
    let m = clip.score_matrix(std::slice::from_ref(&img), &["a cat", "a dog"]);
    let m = Vec::<f32>::try_from(m.flatten(0, -1)).unwrap();
    let p = Prompt::parse("a cat:3 | a dog:1 | a bird:-2", 1000).unwrap();
    let s = clip.score_prompt(&p, std::slice::from_ref(&img)).unwrap();
    let want = (3.0 * m[0] + m[1]) / 4.0;
    assert!((s[0] - want).abs() < 1e-4, "{} vs {want}", s[0]);
    assert!(clip.score_prompt(&p, &[]).unwrap().is_empty());
    assert_eq!(clip.image_features(&[]).size(), [0, 16]);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn load_scorer_is_none_without_a_clip_directory() {
    let root = temp_dir("none");
    assert!(kiln_worker::rerank::load_scorer(&root, Device::Cpu)
        .unwrap()
        .is_none());
    std::fs::create_dir_all(root.join("clip")).unwrap();
    let err = kiln_worker::rerank::load_scorer(&root, Device::Cpu)
        .err()
        .expect("an empty dir fails");
    assert!(format!("{err:#}").contains("config.json"), "{err:#}");
    // Weights that do not fit the config are named, shapes and all.
    model_store::clip::init_tiny(&root.join("clip")).unwrap();
    let mut cfg = model_store::clip::tiny_config();
    cfg.vision_config.hidden_size = 48;
    std::fs::write(root.join("clip/config.json"), cfg.to_json()).unwrap();
    let err = kiln_worker::rerank::load_scorer(&root, Device::Cpu)
        .err()
        .expect("mismatched weights fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("does not match its config.json")
            && msg.contains("vision_model.embeddings.class_embedding is [32] in the file but [48]"),
        "{msg}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn clip_score_prints_the_matrix_and_embeddings() {
    let root = temp_dir("score");
    let model = root.join("clip");
    model_store::clip::init_tiny(&model).unwrap();
    let a = root.join("a.png");
    let b = root.join("b.png");
    RgbImage::from_pixel(64, 48, image::Rgb([200, 30, 30]))
        .save(&a)
        .unwrap();
    RgbImage::from_fn(30, 50, |x, y| image::Rgb([x as u8 * 8, y as u8 * 5, 0]))
        .save(&b)
        .unwrap();
    let texts = vec![
        "a red square".to_string(),
        "a gradient".to_string(),
        "noise".to_string(),
    ];
    let out = model_store::clip_score(&model, &[a.clone(), b.clone()], &texts, true, Device::Cpu)
        .unwrap();
    let scores = out["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 2);
    assert!(scores.iter().all(|r| r.as_array().unwrap().len() == 3));
    assert_eq!(out["image_embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(out["text_embeddings"].as_array().unwrap().len(), 3);
    assert_eq!(out["texts"][1], "a gradient");

    // Same numbers as the library's score matrix.
    let clip = Clip::load(&model, Device::Cpu).unwrap();
    let imgs = [
        image::open(&a).unwrap().to_rgb8(),
        image::open(&b).unwrap().to_rgb8(),
    ];
    let m = clip.score_matrix(&imgs, &["a red square", "a gradient", "noise"]);
    for (i, row) in scores.iter().enumerate() {
        for (j, got) in row.as_array().unwrap().iter().enumerate() {
            let got = got.as_f64().unwrap();
            let want = m.double_value(&[i as i64, j as i64]);
            assert!((got - want).abs() < 1e-4, "[{i}][{j}] {got} vs {want}");
        }
    }
    let plain = model_store::clip_score(&model, &[a], &texts[..1], false, Device::Cpu).unwrap();
    assert!(plain.get("image_embeddings").is_none());
    let err = model_store::clip_score(
        &model,
        &[root.join("missing.png")],
        &texts,
        false,
        Device::Cpu,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("missing.png"), "{err:#}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn half_precision_weights_score_like_fp32() {
    // bf16 on the CPU stands in for the fp16/bf16 the worker uses on CUDA.
    let root = temp_dir("bf16");
    model_store::clip::init_tiny(&root).unwrap();
    let f32_clip = Clip::load(&root, Device::Cpu).unwrap();
    let bf16_clip = Clip::load_with_kind(&root, Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(bf16_clip.kind(), Kind::BFloat16);
    let imgs: Vec<RgbImage> = (0..3u8)
        .map(|k| {
            RgbImage::from_fn(48, 40, |x, y| {
                image::Rgb([x as u8 * 5, y as u8 * k * 2, 60 * k])
            })
        })
        .collect();
    let texts = ["a cat", "a striped pattern"];
    let a = f32_clip.score_matrix(&imgs, &texts);
    let b = bf16_clip.score_matrix(&imgs, &texts);
    assert_eq!(b.kind(), Kind::Float, "scores come back as f32");
    let d = (a - b).abs().max().double_value(&[]);
    assert!(d < 0.5, "bf16 scores differ from fp32 by {d}");

    // Candidates steered towards or away from the prompt, so that their
    // fp32 scores are spread well apart. The tiny model's weights depend on
    // the global RNG, which tests running side by side share, so the scores
    // are not fixed: steer a pool (0 to 8 steps away, 1 to 12 towards), then
    // keep, best first, every candidate whose fp32 score is at least 0.12 of
    // the pool's spread below the last one kept. bf16 must rank the kept
    // candidates as fp32 does, and every bf16 score must be within a
    // hundredth of the spread of its fp32 score (bf16 is off by about 0.3%).
    let prompt = Prompt::parse("a red fox in the snow", 1000).unwrap();
    let text = f32_clip.encode_text(&["a red fox in the snow"]);
    let steered: Vec<(usize, f64)> = (0..=8)
        .map(|n| (n, -1.0))
        .chain((1..=12).map(|n| (n, 1.0)))
        .collect();
    let pool: Vec<RgbImage> = steered
        .iter()
        .map(|&(steps, dir)| steer(&f32_clip, &text, steps, dir))
        .collect();
    let pool_scores = f32_clip.score_prompt(&prompt, &pool).unwrap();
    let mut by_score: Vec<usize> = (0..pool.len()).collect();
    by_score.sort_by(|&i, &j| pool_scores[j].total_cmp(&pool_scores[i]));
    let pool_spread = pool_scores[by_score[0]] - pool_scores[by_score[pool.len() - 1]];
    let mut kept: Vec<usize> = vec![by_score[0]];
    for &i in &by_score[1..] {
        if pool_scores[*kept.last().unwrap()] - pool_scores[i] >= 0.12 * pool_spread {
            kept.push(i);
        }
    }
    // Shuffled: not in the order of their scores, nor of their steering.
    kept.sort_by_key(|&i| (i * 7) % pool.len());
    let candidates: Vec<RgbImage> = kept.iter().map(|&i| pool[i].clone()).collect();
    assert!(
        candidates.len() >= 4,
        "at least four well separated candidates: pool scores {pool_scores:?}"
    );
    let s32 = f32_clip.score_prompt(&prompt, &candidates).unwrap();
    let s16 = bf16_clip.score_prompt(&prompt, &candidates).unwrap();
    assert_eq!(s32.len(), candidates.len());
    assert_eq!(s16.len(), candidates.len());
    let ranking = |s: &[f32]| {
        let mut order: Vec<usize> = (0..s.len()).collect();
        order.sort_by(|&i, &j| s[j].total_cmp(&s[i]));
        order
    };
    let order32 = ranking(&s32);
    let spread = s32[order32[0]] - s32[order32[s32.len() - 1]];
    let closest_pair = order32
        .windows(2)
        .map(|w| s32[w[0]] - s32[w[1]])
        .fold(f32::MAX, f32::min);
    // Scores lie within ±scale: the candidates cover over half that range.
    let scale = f32_clip.score_scale() as f32;
    assert!(
        spread > scale && closest_pair > 0.1 * spread,
        "the candidates' fp32 scores are well separated: {s32:?} (scale {scale})"
    );
    assert_eq!(
        ranking(&s16),
        order32,
        "bf16 ranks the candidates as fp32 does: fp32 {s32:?}, bf16 {s16:?}"
    );
    let worst = s32
        .iter()
        .zip(&s16)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 0.01 * spread,
        "bf16 scores differ from fp32 by {worst}, against a spread of {spread}: fp32 {s32:?}, bf16 {s16:?}"
    );
    assert!(Clip::load_with_kind(&root, Device::Cpu, Kind::Int64).is_err());
    std::fs::remove_dir_all(&root).ok();
}
