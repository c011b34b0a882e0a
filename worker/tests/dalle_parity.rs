//! Kiln's DALL·E networks reproduce min-dalle's on two tiny random
//! configurations (fixtures from `worker/reference/dalle_fixtures.py`; the
//! weights are rebuilt here from the same seed by `models::dalle::synthetic`;
//! the `top_k > 1` draws from `worker/reference/dalle_topk_fixture.py`).

use kiln_worker::models::dalle::sampling::{
    draw, supercondition, PromptSeeds, SampleSettings, Sampler,
};
use kiln_worker::models::dalle::{
    synthetic, DalleConfig, TextTokenizer, IMAGE_CODEBOOK_SIZE, START_TOKEN,
};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dalle")
}

#[derive(serde::Deserialize)]
struct Meta {
    config: DalleConfig,
    seed: u64,
    prompts: Vec<String>,
    supercondition_factor: f64,
    logit_steps: i64,
}

struct Fixture {
    meta: Meta,
    tensors: HashMap<String, Tensor>,
    sampler: Sampler,
}

fn fixture(name: &str) -> Fixture {
    let dir = fixtures();
    let meta: Meta =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let tensors = Tensor::read_safetensors(dir.join(format!("{name}.safetensors")))
        .unwrap()
        .into_iter()
        .collect();
    let sampler = Sampler::new(&meta.config, Device::Cpu).unwrap();
    synthetic::fill(&sampler.encoder_vs, meta.seed, str::to_string);
    synthetic::fill(&sampler.decoder_vs, meta.seed, str::to_string);
    Fixture {
        meta,
        tensors,
        sampler,
    }
}

fn tokenizer() -> TextTokenizer {
    let dir = fixtures();
    TextTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt")).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn check_encoder(name: &str) {
    let _g = tch::no_grad_guard();
    let f = fixture(name);
    let text = &f.tensors["text_tokens"];
    let expect = &f.tensors["encoder_state"];
    // Every prompt's two rows at once (min-dalle encodes them two by two).
    let got = f.sampler.encoder.forward(text).unwrap();
    let d = max_diff(&got, expect);
    assert!(d < TOLERANCE, "{name}: encoder states differ by {d}");
    assert!(
        expect.abs().max().double_value(&[]) > 0.5,
        "the fixture is not trivial"
    );
}

fn check_decoder_steps(name: &str) {
    let _g = tch::no_grad_guard();
    let f = fixture(name);
    // Prompt 0: rows 0 (unconditioned) and 1 (conditioned) of the fixture.
    let text = f.tensors["text_tokens"].narrow(0, 0, 2);
    let state = f.tensors["encoder_state"].narrow(0, 0, 2);
    let logits = &f.tensors["step_logits"]; // [steps, 2, vocab + 1]
    let tokens = &f.tensors["tokens_top1"];
    let decoder = &f.sampler.decoder;
    let cross = decoder.cross_state(&state, &text).unwrap();
    let mut cache = decoder.new_cache(1, Kind::Float, Device::Cpu);
    let mut prev = Tensor::from_slice(&[START_TOKEN]);
    assert_eq!(logits.size()[0], f.meta.logit_steps);
    for s in 0..f.meta.logit_steps {
        let got = decoder.step(&prev, &mut cache, &cross).unwrap();
        assert_eq!(cache.len(), s + 1);
        let d = max_diff(&got, &logits.get(s));
        assert!(d < TOLERANCE, "{name}: logits of step {s} differ by {d}");
        prev = tokens.get(0).narrow(0, s, 1);
    }
}

fn settings(f: &Fixture, top_k: i64) -> SampleSettings {
    SampleSettings {
        temperature: 1.0,
        top_k,
        supercondition_factor: f.meta.supercondition_factor,
    }
}

fn check_top1_sequences(name: &str, fused: bool) {
    let mut f = fixture(name);
    f.sampler.fuse_attention(fused);
    let tok = tokenizer();
    let prompts: Vec<PromptSeeds> = f
        .meta
        .prompts
        .iter()
        .enumerate()
        .map(|(p, text)| PromptSeeds {
            ids: tok.tokenize(text),
            seeds: vec![p as u64 * 10, p as u64 * 10 + 1],
        })
        .collect();
    let mut rows = Vec::new();
    let got = f
        .sampler
        .sample(&prompts, &settings(&f, 1), &mut |r| {
            rows.push(r);
            true
        })
        .unwrap()
        .expect("not cancelled");
    assert_eq!(
        rows,
        (1..=16).collect::<Vec<_>>(),
        "progress once per token row"
    );
    let expect = f.tensors["tokens_top1"].repeat_interleave_self_int(2, 0, None);
    assert_eq!(got.size(), [6, 256]);
    let same = got
        .eq_tensor(&expect)
        .to_kind(Kind::Int64)
        .sum(Kind::Int64)
        .int64_value(&[]);
    assert_eq!(
        same,
        6 * 256,
        "{name}: top_k=1 tokens differ from min-dalle's"
    );
}

#[test]
fn encoder_states_match_min_dalle_tiny_a() {
    check_encoder("tiny_a");
}

#[test]
fn encoder_states_match_min_dalle_tiny_b() {
    check_encoder("tiny_b");
}

#[test]
fn cached_decoder_logits_match_min_dalle_tiny_a() {
    check_decoder_steps("tiny_a");
}

#[test]
fn cached_decoder_logits_match_min_dalle_tiny_b() {
    check_decoder_steps("tiny_b");
}

#[test]
fn top_k_1_sequences_match_min_dalle_tiny_a() {
    check_top1_sequences("tiny_a", false);
}

/// The same with the query, key and value projections fused, as on CUDA.
#[test]
fn top_k_1_sequences_match_min_dalle_tiny_a_with_fused_projections() {
    check_top1_sequences("tiny_a", true);
}

#[test]
fn top_k_1_sequences_match_min_dalle_tiny_b() {
    check_top1_sequences("tiny_b", false);
}

/// `top_k > 1` at a temperature other than 1 against min-dalle's sampling
/// loop on `tiny_a` (`worker/reference/dalle_topk_fixture.py`): min-dalle's
/// own blend, top_k mask, temperature and exponential give the weights, and
/// its `torch.multinomial` is replaced there by an inverse-CDF draw on
/// stored uniforms (kept codes ordered by weight, largest first, as Kiln's
/// `draw` orders them). Kiln's decoder, `supercondition` and `draw` replay
/// those uniforms here, one image at a time, and must pick the same codes
/// at all 256 steps (each pick feeds the next step).
#[test]
fn top_k_8_at_temperature_2_5_draws_the_codes_min_dalle_draws_tiny_a() {
    let _g = tch::no_grad_guard();
    let f = fixture("tiny_a");
    let t: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("tiny_a_topk.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let s = &t["settings"];
    let settings = SampleSettings {
        temperature: s.double_value(&[0]),
        top_k: s.double_value(&[1]) as i64,
        supercondition_factor: s.double_value(&[2]),
    };
    assert_eq!(
        (settings.temperature, settings.top_k),
        (2.5, 8),
        "the fixture samples with top_k > 1 and a temperature other than 1"
    );
    let not_best = t["not_best_share"].double_value(&[0]);
    assert!(
        not_best > 0.5,
        "the draws matter: only {not_best} of min-dalle's picks are not the best code"
    );
    let text = &t["text_tokens"];
    let state = f.sampler.encoder.forward(text).unwrap();
    let decoder = &f.sampler.decoder;
    let cross = decoder.cross_state(&state, text).unwrap();
    let uniform = &t["uniform"]; // [steps, images]
    let expect = &t["tokens"]; // [images, steps]
    let steps = f.meta.config.image_token_count;
    assert_eq!(expect.size(), [2, steps]);
    assert_eq!(uniform.size(), [steps, 2]);
    for image in 0..2 {
        let mut cache = decoder.new_cache(1, Kind::Float, Device::Cpu);
        let mut prev = Tensor::from_slice(&[START_TOKEN]);
        let mut got = Vec::with_capacity(steps as usize);
        for i in 0..steps {
            let logits = decoder.step(&prev, &mut cache, &cross).unwrap();
            let blended =
                supercondition(&logits, settings.supercondition_factor, IMAGE_CODEBOOK_SIZE);
            let u = Tensor::from_slice(&[uniform.double_value(&[i, image])]);
            prev = draw(&blended, &settings, &u.to_kind(Kind::Float).unsqueeze(1));
            got.push(prev.int64_value(&[0]));
        }
        let want = Vec::<i64>::try_from(&expect.get(image)).unwrap();
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            first.is_none(),
            "image {image}: Kiln's top_k={} temperature={} tokens differ from min-dalle's \
             from step {first:?}: {:?} vs {:?}",
            settings.top_k,
            settings.temperature,
            &got[first.unwrap_or(0)..(first.unwrap_or(0) + 8).min(got.len())],
            &want[first.unwrap_or(0)..(first.unwrap_or(0) + 8).min(want.len())]
        );
    }
}

#[test]
fn a_batch_of_3_prompts_by_2_candidates_equals_6_single_decodes() {
    let f = fixture("tiny_a");
    let tok = tokenizer();
    let s = SampleSettings {
        temperature: 0.7,
        top_k: 64,
        supercondition_factor: 3.0,
    };
    let prompts: Vec<PromptSeeds> = f
        .meta
        .prompts
        .iter()
        .enumerate()
        .map(|(p, text)| PromptSeeds {
            ids: tok.tokenize(text),
            seeds: vec![100 + p as u64, 200 + p as u64],
        })
        .collect();
    let batch = f
        .sampler
        .sample(&prompts, &s, &mut |_| true)
        .unwrap()
        .unwrap();
    let mut distinct = std::collections::HashSet::new();
    for (p, prompt) in prompts.iter().enumerate() {
        for (c, seed) in prompt.seeds.iter().enumerate() {
            let one = PromptSeeds {
                ids: prompt.ids.clone(),
                seeds: vec![*seed],
            };
            let single = f
                .sampler
                .sample(&[one], &s, &mut |_| true)
                .unwrap()
                .unwrap();
            let row = batch.get((p * 2 + c) as i64);
            let tokens: Vec<i64> = Vec::try_from(&row).unwrap();
            assert_eq!(
                tokens,
                Vec::<i64>::try_from(&single.get(0)).unwrap(),
                "prompt {p} candidate {c}"
            );
            distinct.insert(tokens);
        }
    }
    assert_eq!(
        distinct.len(),
        6,
        "different seeds or prompts give different images"
    );
}

#[test]
fn cancelling_between_rows_stops_the_render() {
    let f = fixture("tiny_a");
    let prompts = [PromptSeeds {
        ids: tokenizer().tokenize("a fox"),
        seeds: vec![1],
    }];
    let mut seen = 0;
    let out = f
        .sampler
        .sample(&prompts, &settings(&f, 8), &mut |r| {
            seen = r;
            r < 3
        })
        .unwrap();
    assert!(out.is_none());
    assert_eq!(seen, 3);
}

#[test]
fn invalid_settings_and_batches_are_refused() {
    let f = fixture("tiny_a");
    let p = |n: usize| PromptSeeds {
        ids: vec![0, 2],
        seeds: (0..n as u64).collect(),
    };
    let bad = SampleSettings {
        top_k: 0,
        ..settings(&f, 1)
    };
    assert!(f.sampler.sample(&[p(1)], &bad, &mut |_| true).is_err());
    let bad = SampleSettings {
        temperature: 0.0,
        ..settings(&f, 1)
    };
    assert!(f.sampler.sample(&[p(1)], &bad, &mut |_| true).is_err());
    let e = f
        .sampler
        .sample(&[p(1), p(2)], &settings(&f, 1), &mut |_| true)
        .unwrap_err();
    assert!(e.to_string().contains("same number of candidates"), "{e}");
    let e = f
        .sampler
        .sample(
            &[PromptSeeds {
                ids: vec![0, 100_000, 2],
                seeds: vec![1],
            }],
            &settings(&f, 1),
            &mut |_| true,
        )
        .unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
}
