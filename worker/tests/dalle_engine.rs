//! The `dalle` engine renders a job's candidates from a model directory
//! written by `model_store::dalle::init_tiny`.

mod common;

use kiln_protocol::{Engine as EngineKind, JobSpec, Limits, ParamsDto};
use kiln_worker::engine::dalle::Dalle;
use kiln_worker::engine::{self, Engine, RenderContext, RenderError, RenderInputs};
use kiln_worker::model_store;
use kiln_worker::models::dalle::sampling::PromptSeeds;
use kiln_worker::models::dalle::{LoadedDalle, SampleSettings};
use std::path::PathBuf;
use std::sync::OnceLock;
use tch::Device;

/// A models root holding only `dalle/`, written once per test binary.
fn models_root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("kiln-dalle-engine-{}", std::process::id()));
        model_store::dalle::init_tiny(&root.join("dalle")).unwrap();
        root
    })
}

fn job(candidates: u32, top_k: u32) -> JobSpec {
    let dto = ParamsDto {
        candidates: Some(candidates),
        keep: Some(1),
        top_k: Some(top_k),
        seed: Some(1234),
        ..Default::default()
    };
    JobSpec::parse(
        EngineKind::Dalle,
        "a red fox:1 | blurry:-1",
        &dto,
        0,
        &Limits::default(),
    )
    .unwrap()
}

/// The render's result and every `(step, total)` it reported.
use common::Rendered;

fn render(engine: &dyn Engine, job: &JobSpec, cancel_after: Option<u32>) -> Rendered {
    let mut seen = Vec::new();
    let steps = std::cell::Cell::new(0u32);
    let mut progress = |s: u32, t: u32| {
        seen.push((s, t));
        steps.set(s);
    };
    let cancelled = || cancel_after.is_some_and(|n| steps.get() >= n);
    let mut ctx = RenderContext {
        progress: &mut progress,
        cancelled: &cancelled,
    };
    let r = engine.render(job, &RenderInputs::default(), &mut ctx);
    (r, seen)
}

#[test]
fn renders_every_candidate_with_progress_per_token_row() {
    let e = engine::load(EngineKind::Dalle, models_root(), Device::Cpu).unwrap();
    assert_eq!(e.kind(), EngineKind::Dalle);
    let job = job(3, 64);
    let (r, seen) = render(e.as_ref(), &job, None);
    let out = r.unwrap();
    assert_eq!(out.len(), 3);
    for (i, c) in out.iter().enumerate() {
        assert_eq!(c.seed, job.candidate_seed(i as u32));
        assert_eq!(c.image.dimensions(), (256, 256));
    }
    assert_ne!(out[0].image, out[1].image, "candidates differ by seed");
    assert_eq!(seen, (1..=16).map(|s| (s, 16)).collect::<Vec<_>>());

    // Candidates decoded in smaller batches are the same images (up to one
    // level where the detokenizer's batch size changes the float rounding).
    let small = Dalle::load(models_root(), Device::Cpu)
        .unwrap()
        .with_max_batch(2);
    let (r, seen) = render(&small, &job, None);
    let again = r.unwrap();
    assert_eq!(seen.last(), Some(&(32, 32)), "two batches of 16 rows");
    assert_eq!(
        again.len(),
        out.len(),
        "every candidate again in batches of 2"
    );
    for (a, b) in out.iter().zip(&again) {
        assert_eq!(b.seed, a.seed);
        assert_eq!(b.image.dimensions(), a.image.dimensions());
        let worst = a
            .image
            .as_raw()
            .iter()
            .zip(b.image.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .expect("the images have pixels");
        assert!(
            worst <= 1,
            "seed {} renders differently in another batch (by {worst})",
            a.seed
        );
    }
}

#[test]
fn a_cancelled_job_stops_between_rows() {
    let e = Dalle::load(models_root(), Device::Cpu).unwrap();
    let (r, seen) = render(&e, &job(2, 8), Some(4));
    assert!(matches!(r, Err(RenderError::Cancelled)), "{r:?}");
    assert_eq!(seen.last(), Some(&(4, 16)));
}

#[test]
fn a_missing_model_directory_names_the_path() {
    let root = std::env::temp_dir().join("kiln-dalle-engine-nowhere");
    let e = engine::load(EngineKind::Dalle, &root, Device::Cpu)
        .err()
        .expect("no model");
    assert!(
        format!("{e:#}").contains("kiln-dalle-engine-nowhere"),
        "{e:#}"
    );
}

/// A one-candidate job of `prompt` and `seed` with min-dalle's sampling
/// settings but top-k 64.
fn one(prompt: &str, seed: u64) -> JobSpec {
    let dto = ParamsDto {
        candidates: Some(1),
        keep: Some(1),
        top_k: Some(64),
        seed: Some(seed),
        ..Default::default()
    };
    JobSpec::parse(EngineKind::Dalle, prompt, &dto, 0, &Limits::default()).unwrap()
}

/// A job's images in a batch are its images alone: the same seeds, at most
/// one level apart on at most 0.1 % of the values (the detokenizer's
/// convolutions round differently with the batch size on the CPU).
fn assert_alike(alone: &[engine::Candidate], batched: &[engine::Candidate], what: &str) {
    assert_eq!(alone.len(), batched.len(), "{what}");
    for (a, b) in alone.iter().zip(batched) {
        assert_eq!(a.seed, b.seed, "{what}");
        let (count, worst) = common::differences(a, b);
        let share = count as f64 / a.image.as_raw().len() as f64;
        println!(
            "{what}, seed {}: {count} values differ (at most by {worst})",
            a.seed
        );
        assert!(
            worst <= 1 && share <= 0.001,
            "{what}, seed {}: {count} values differ ({:.3} %), at most by {worst}",
            a.seed,
            share * 100.0
        );
    }
}

#[test]
fn a_job_renders_alike_alone_and_in_mixed_batches() {
    let e = Dalle::load(models_root(), Device::Cpu).unwrap();
    let jobs: Vec<JobSpec> = [
        ("a red fox", 11),
        ("a blue whale in the sea", 12),
        ("a yellow submarine", 13),
        ("a green field under a grey sky", 14),
        ("a red fox", 15),
    ]
    .into_iter()
    .map(|(p, s)| one(p, s))
    .collect();
    let key = e.batch_key(&jobs[0]).expect("one-candidate jobs batch");
    assert!(jobs.iter().all(|j| e.batch_key(j) == Some(key)));
    let alone: Vec<Vec<engine::Candidate>> = jobs
        .iter()
        .map(|j| render(&e, j, None).0.unwrap())
        .collect();
    for batch in [vec![0, 1, 2], vec![3, 0, 4, 1], vec![4, 3, 2, 1, 0]] {
        let specs: Vec<&JobSpec> = batch.iter().map(|&k| &jobs[k]).collect();
        let out = common::render_together(&e, &specs, &vec![None; specs.len()]);
        for (&k, (r, seen)) in batch.iter().zip(out) {
            assert_eq!(
                seen,
                (1..=16).map(|s| (s, 16)).collect::<Vec<_>>(),
                "job {k}"
            );
            assert_alike(
                &alone[k],
                &r.unwrap(),
                &format!("job {k} in batch {batch:?}"),
            );
        }
    }
    // Jobs of two candidates batch with each other.
    let two: Vec<JobSpec> = [("a red fox", 21), ("a grey cat", 22)]
        .into_iter()
        .map(|(p, seed)| {
            let dto = ParamsDto {
                candidates: Some(2),
                keep: Some(2),
                top_k: Some(64),
                seed: Some(seed),
                ..Default::default()
            };
            JobSpec::parse(EngineKind::Dalle, p, &dto, 0, &Limits::default()).unwrap()
        })
        .collect();
    assert_eq!(e.batch_key(&two[0]), e.batch_key(&two[1]));
    assert_eq!(
        (e.batch_limit(&jobs[0]), e.batch_limit(&two[0])),
        (16, 8),
        "one pass decodes 16 images"
    );
    assert_ne!(
        e.batch_key(&two[0]),
        Some(key),
        "other candidate counts batch apart"
    );
    let out = common::render_together(&e, &[&two[0], &two[1]], &[None, None]);
    for (j, (r, _)) in two.iter().zip(out) {
        assert_alike(
            &render(&e, j, None).0.unwrap(),
            &r.unwrap(),
            "a two-candidate job",
        );
    }
}

#[test]
fn a_cancel_ends_one_job_of_a_batch_and_leaves_the_others_unchanged() {
    let e = Dalle::load(models_root(), Device::Cpu).unwrap();
    let jobs = [
        one("a red fox", 31),
        one("a blue whale", 32),
        one("a tall tree", 33),
    ];
    let specs: Vec<&JobSpec> = jobs.iter().collect();
    let out = common::render_together(&e, &specs, &[None, Some(4), None]);
    let (r, seen) = &out[1];
    assert!(matches!(r, Err(RenderError::Cancelled)), "{r:?}");
    assert_eq!(seen.last(), Some(&(4, 16)), "it left the batch at row 4");
    for k in [0, 2] {
        let (r, seen) = &out[k];
        assert_eq!(seen.len(), 16, "job {k} decoded every row");
        let alone = render(&e, &jobs[k], None).0.unwrap();
        assert_alike(
            &alone,
            r.as_ref().unwrap(),
            &format!("job {k} beside a cancel"),
        );
    }
}

#[test]
fn jobs_of_other_settings_batch_apart_and_a_bad_job_fails_alone() {
    let e = Dalle::load(models_root(), Device::Cpu).unwrap();
    let a = one("a red fox", 41);
    let hot = {
        let dto = ParamsDto {
            candidates: Some(1),
            keep: Some(1),
            top_k: Some(64),
            temperature: Some(2.0),
            seed: Some(42),
            ..Default::default()
        };
        JobSpec::parse(EngineKind::Dalle, "a red fox", &dto, 0, &Limits::default()).unwrap()
    };
    assert_ne!(e.batch_key(&a), e.batch_key(&hot), "temperature must match");
    // A job of another engine in the batch: it fails, the other renders.
    let wrong = JobSpec::parse(
        EngineKind::TestPattern,
        "a red fox",
        &ParamsDto::default(),
        1,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(e.batch_key(&wrong), None);
    let out = common::render_together(&e, &[&a, &wrong], &[None, None]);
    assert!(
        matches!(&out[1].0, Err(RenderError::Invalid(_))),
        "{:?}",
        out[1].0
    );
    assert_alike(
        &render(&e, &a, None).0.unwrap(),
        out[0].0.as_ref().unwrap(),
        "beside a bad job",
    );
}

#[test]
fn sampled_tokens_do_not_depend_on_the_batch_or_on_a_prompt_that_leaves_it() {
    let model = LoadedDalle::load_dir(&models_root().join("dalle"), Device::Cpu).unwrap();
    let settings = SampleSettings {
        top_k: 64,
        ..Default::default()
    };
    let prompts: Vec<PromptSeeds> = ["a red fox", "a blue whale", "a tall tree", "a small boat"]
        .iter()
        .enumerate()
        .map(|(i, p)| PromptSeeds {
            ids: model.tokenizer.tokenize(p),
            seeds: vec![50 + i as u64],
        })
        .collect();
    let alone: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            let t = model
                .sampler
                .sample(std::slice::from_ref(p), &settings, &mut |_| true)
                .unwrap()
                .unwrap();
            Vec::<i64>::try_from(t.flatten(0, -1)).unwrap()
        })
        .collect();
    // All four together; the second leaves after 5 rows.
    let out = model
        .sampler
        .sample_each(&prompts, &settings, &mut |row, alive| {
            if row == 5 {
                alive[1] = false;
            }
        })
        .unwrap();
    assert!(out[1].is_none(), "the prompt that left has no tokens");
    for k in [0, 2, 3] {
        let t = out[k].as_ref().expect("tokens");
        assert_eq!(
            Vec::<i64>::try_from(t.flatten(0, -1)).unwrap(),
            alone[k],
            "prompt {k}'s tokens in a batch of four, one leaving"
        );
    }
}

#[test]
fn bf16_on_the_cpu_stays_close_to_fp32() {
    use kiln_worker::models::dalle::{text_rows, Sampler, START_TOKEN};
    use tch::{Kind, Tensor};
    let mut model = LoadedDalle::load_dir(&models_root().join("dalle"), Device::Cpu).unwrap();
    let ids = model.tokenizer.tokenize("a red fox in the snow");
    // The logits of the first image token.
    let logits = |s: &Sampler| -> Tensor {
        let _g = tch::no_grad_guard();
        let t = s.config.text_token_count as usize;
        let [u, c] = text_rows(&ids, t).unwrap();
        let text = Tensor::from_slice(&[u, c].concat()).reshape([2, t as i64]);
        let enc = s.encoder.forward(&text).unwrap();
        let cross = s.decoder.cross_state(&enc, &text).unwrap();
        let mut cache = s.decoder.new_cache(1, s.decoder_vs.kind(), Device::Cpu);
        let prev = Tensor::full([1], START_TOKEN, (Kind::Int64, Device::Cpu));
        s.decoder
            .step(&prev, &mut cache, &cross)
            .unwrap()
            .to_kind(Kind::Float)
    };
    let fp32 = logits(&model.sampler);
    model.sampler.set_kind(Kind::BFloat16);
    let bf16 = logits(&model.sampler);
    let rel = (&fp32 - &bf16).norm().double_value(&[]) / fp32.norm().double_value(&[]);
    println!("bf16 logits differ from fp32 by {:.4} (relative L2)", rel);
    assert!(rel.is_finite() && rel < 0.05, "relative difference {rel}");
}

#[test]
fn a_prompt_of_several_candidates_leaves_a_batch_without_touching_the_others() {
    let model = LoadedDalle::load_dir(&models_root().join("dalle"), Device::Cpu).unwrap();
    let settings = SampleSettings {
        top_k: 64,
        ..Default::default()
    };
    // Three candidates each: rows are (half, prompt, candidate), so a wrong
    // order when the second prompt's rows leave would mix the others' rows.
    let prompts: Vec<PromptSeeds> = ["a red fox", "a blue whale", "a tall tree"]
        .iter()
        .enumerate()
        .map(|(i, p)| PromptSeeds {
            ids: model.tokenizer.tokenize(p),
            seeds: (0..3).map(|c| 70 + 10 * i as u64 + c).collect(),
        })
        .collect();
    let out = model
        .sampler
        .sample_each(&prompts, &settings, &mut |row, alive| {
            if row == 3 {
                alive[1] = false;
            }
        })
        .unwrap();
    assert!(out[1].is_none());
    for k in [0, 2] {
        let alone = model
            .sampler
            .sample(std::slice::from_ref(&prompts[k]), &settings, &mut |_| true)
            .unwrap()
            .unwrap();
        let got = out[k].as_ref().expect("tokens");
        assert_eq!(got.size(), [3, 256]);
        assert_eq!(
            Vec::<i64>::try_from(got.flatten(0, -1)).unwrap(),
            Vec::<i64>::try_from(alone.flatten(0, -1)).unwrap(),
            "prompt {k}'s three candidates"
        );
    }
}
