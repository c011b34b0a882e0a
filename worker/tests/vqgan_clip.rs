//! The vqgan-clip engine: one step against the notebooks' loop written with
//! taming and transformers (`worker/reference/vqgan_clip_step.py`), and whole
//! renders on tiny random-weight models.

mod common;

use image::RgbImage;
use kiln_protocol::{Engine as EngineKind, JobSpec, Limits, ParamsDto};
use kiln_worker::engine::vqgan_clip::{
    clamp_to_codebook, loss_and_grad, Adam, Augment, Cutout, InitPull, Targets, VqganClip,
};
use kiln_worker::engine::{
    Candidate, Engine, Feed, RenderContext, RenderError, RenderInputs, Rendered,
};
use kiln_worker::models::clip::Clip;
use kiln_worker::models::vqgan::Vqgan;
use kiln_worker::rerank;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqgan")
}

fn values<T: tch::kind::Element>(t: &Tensor) -> Vec<T> {
    let t = t.flatten(0, -1).to_kind(T::KIND);
    let mut out = vec![T::ZERO; t.numel()];
    let n = out.len();
    t.copy_data(&mut out, n);
    out
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Tests run side by side on small tensors, where libtorch's thread pool
/// costs more than it gives (and one thread keeps the sums in one order).
/// OpenMP keeps the setting per thread, so every test sets it.
fn one_thread() {
    tch::set_num_threads(1);
}

/// Largest difference allowed between Kiln's CLIP text features and
/// transformers', relative to the largest |feature| (both float32 on the
/// same fp16-rounded weights).
const TEXT_TOLERANCE: f64 = 1e-5;

/// One step of the loop against `worker/reference/vqgan_clip_step.py`: the
/// quantiser, the VQGAN decode, CLIP's image tower, the spherical distance
/// loss with the init pull, the gradient, Adam and the clamp are the
/// reference's (taming, transformers, the notebooks' loss and torch's Adam).
///
/// The cutout augmentation is NOT independent: the reference script's
/// cutouts are a Python copy of Kiln's own `Cutout` (the notebooks' kornia
/// augmentation cannot be replayed from stored draws), so this test checks
/// that Kiln applies its augmentation as written there, not that it is the
/// notebooks'.
///
/// The text side is checked, not given: Kiln computes the prompts' CLIP
/// text features from the fixture's ids, they must match transformers'
/// `CLIPModel.get_text_features` within [`TEXT_TOLERANCE`], and the step
/// runs on Kiln's features.
#[test]
fn one_step_matches_the_reference_loop() {
    one_thread();
    let vq = Vqgan::load(&fixtures().join("small"), Device::Cpu).unwrap();
    let clip = Clip::load(&fixtures().join("step/clip"), Device::Cpu).unwrap();
    let t: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("step/step.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let boxes = values::<i64>(&t["boxes"]);
    let hs = values::<f64>(&t["homography"]);
    let jitter = values::<f64>(&t["jitter"]);
    let facs = values::<f64>(&t["noise_fac"]);
    let cuts: Vec<Cutout> = (0..facs.len())
        .map(|i| Cutout {
            candidate: boxes[4 * i],
            x: boxes[4 * i + 1],
            y: boxes[4 * i + 2],
            size: boxes[4 * i + 3],
            homography: hs[9 * i..9 * i + 9].try_into().unwrap(),
            brightness: jitter[3 * i],
            contrast: jitter[3 * i + 1],
            saturation: jitter[3 * i + 2],
            noise: facs[i],
        })
        .collect();
    assert!(
        cuts.iter().any(|c| c.size != cuts[0].size),
        "the fixture varies cutout sizes"
    );
    let reference_text = &t["targets"];
    let text_ids = &t["text_ids"];
    assert_eq!(text_ids.size()[0], reference_text.size()[0]);
    let embeds =
        tch::no_grad(|| clip.model().get_text_features(text_ids)).to_kind(tch::Kind::Float);
    let text_scale = reference_text.abs().max().double_value(&[]);
    assert!(
        text_scale > 0.1,
        "the reference text features are not trivial"
    );
    let d = max_abs_diff(&embeds, reference_text);
    assert!(
        d < TEXT_TOLERANCE * text_scale,
        "Kiln's CLIP text features differ from transformers' by {d} (largest |feature| {text_scale}): \
         {:?} vs {:?}",
        values::<f32>(&embeds),
        values::<f32>(reference_text)
    );
    let targets = Targets {
        embeds,
        weights: t["weights"].shallow_clone(),
    };
    let init_weight = t["init_weight"].double_value(&[0]);
    let lr = t["lr"].double_value(&[0]);
    let mut z = t["z0"].copy().set_requires_grad(true);

    let out = loss_and_grad(
        &vq.model,
        &clip,
        &z,
        &cuts,
        &t["noise"],
        &targets,
        Some(InitPull {
            latent: &t["z_orig"],
            weight: init_weight,
        }),
    );
    let d = max_abs_diff(&out.loss, &t["loss"]);
    assert!(
        d < 1e-4,
        "loss differs by {d}: {:?} vs {:?}",
        values::<f32>(&out.loss),
        values::<f32>(&t["loss"])
    );
    let scale = t["grad"].abs().max().double_value(&[]);
    let d = max_abs_diff(&out.grad, &t["grad"]);
    assert!(scale > 1e-5, "the reference gradient is not negligible");
    assert!(
        d < 1e-4 * scale.max(1.0) && d / scale < 1e-3,
        "gradient differs by {d} (scale {scale})"
    );

    // Adam and the clamp alone, on the reference gradient: the same update.
    let mut z_ref = t["z0"].copy();
    Adam::new(&z_ref, lr).step(&mut z_ref, &t["grad"]);
    clamp_to_codebook(&vq.model, &mut z_ref);
    let d = max_abs_diff(&z_ref, &t["z1"]);
    assert!(d < 1e-4, "Adam on the reference gradient differs by {d}");

    // The whole step. Adam's first update is lr·g/(|g| + 1e-8), which turns
    // gradients near 1e-8 (a few elements, where the pull to the init latent
    // and the prompt nearly cancel) into any value in ±lr; elsewhere the
    // update is determined by the gradient and must match.
    let mut adam = Adam::new(&z, lr);
    adam.step(&mut z, &out.grad);
    clamp_to_codebook(&vq.model, &mut z);
    let conditioned = t["grad"].abs().gt(1e-6);
    let diff = (&z - &t["z1"]).abs();
    let d = diff.masked_select(&conditioned).max().double_value(&[]);
    assert!(d < 1e-4, "the updated latent differs by {d}");
    let share = conditioned
        .to_kind(tch::Kind::Float)
        .mean(tch::Kind::Float)
        .double_value(&[]);
    assert!(share > 0.95, "only {share} of the elements are compared");
    assert!(diff.max().double_value(&[]) <= lr * 1.0001);
    let moved = max_abs_diff(&t["z1"], &t["z0"]);
    assert!(moved > 0.01, "the step moves the latent ({moved})");
}

/// Tiny random-weight models written once for all tests of this binary.
fn tiny_models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    one_thread();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kiln-vqgan-clip-test-{}", std::process::id()));
        kiln_worker::model_store::vqgan::init_tiny(&dir.join("vqgan")).unwrap();
        kiln_worker::model_store::clip::init_tiny(&dir.join("clip")).unwrap();
        dir
    })
}

fn job(prompt: &str, dto: ParamsDto) -> JobSpec {
    JobSpec::parse(EngineKind::VqganClip, prompt, &dto, 1, &Limits::default()).unwrap()
}

fn params(steps: u32, candidates: u32, seed: u64) -> ParamsDto {
    ParamsDto {
        width: Some(64),
        height: Some(48),
        steps: Some(steps),
        seed: Some(seed),
        candidates: Some(candidates),
        keep: Some(1),
        cutn: Some(8),
        ..Default::default()
    }
}

fn render_with(
    engine: &VqganClip,
    job: &JobSpec,
    inputs: &RenderInputs,
    losses: &mut Vec<Vec<f32>>,
) -> Result<Vec<Candidate>, RenderError> {
    let mut progress = |_, _| {};
    let cancelled = || false;
    let mut ctx = RenderContext {
        progress: &mut progress,
        cancelled: &cancelled,
    };
    engine.optimise(job, inputs, &mut ctx, |_, loss| {
        losses.push(values::<f32>(loss))
    })
}

fn engine() -> VqganClip {
    VqganClip::load(tiny_models(), Device::Cpu).unwrap()
}

#[test]
fn the_loss_falls_over_thirty_steps() {
    let e = engine();
    let job = job(
        "a red fox in the snow | blurry:-0.5",
        ParamsDto {
            lr: Some(0.2),
            ..params(30, 2, 11)
        },
    );
    let mut losses = Vec::new();
    let out = render_with(&e, &job, &RenderInputs::default(), &mut losses).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(losses.len(), 30);
    for c in 0..2 {
        let curve: Vec<f32> = losses.iter().map(|l| l[c]).collect();
        let first = curve[..10].iter().sum::<f32>() / 10.0;
        let last = curve[20..].iter().sum::<f32>() / 10.0;
        assert!(
            last < first - 0.02,
            "candidate {c}: the loss did not fall: first ten average {first}, last ten {last} ({curve:?})"
        );
    }
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn the_same_job_and_seed_give_the_same_png() {
    let e = engine();
    let a = run(
        &e,
        &job("a lighthouse", params(3, 2, 5)),
        &RenderInputs::default(),
    )
    .unwrap();
    let b = run(
        &e,
        &job("a lighthouse", params(3, 2, 5)),
        &RenderInputs::default(),
    )
    .unwrap();
    let c = run(
        &e,
        &job("a lighthouse", params(3, 1, 6)),
        &RenderInputs::default(),
    )
    .unwrap();
    assert_eq!((a[0].seed, a[1].seed), (5, 6));
    assert_eq!(png(&a[0].image), png(&b[0].image));
    assert_eq!(png(&a[1].image), png(&b[1].image));
    assert_ne!(png(&a[0].image), png(&a[1].image), "candidates differ");
    // A candidate depends on its own seed only, not on its neighbours in the batch.
    let d = a[1]
        .image
        .as_raw()
        .iter()
        .zip(c[0].image.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    assert!(d <= 2, "seed 6 alone differs from seed 6 in a batch by {d}");
    assert_eq!(a[0].image.dimensions(), (64, 48));
}

/// Renders through the `Engine` trait, ignoring progress.
fn run(e: &VqganClip, job: &JobSpec, inputs: &RenderInputs) -> Result<Vec<Candidate>, RenderError> {
    let mut progress = |_, _| {};
    let mut ctx = RenderContext {
        progress: &mut progress,
        cancelled: &|| false,
    };
    e.render(job, inputs, &mut ctx)
}

#[test]
fn progress_is_reported_every_step_and_cancel_stops_the_loop() {
    let e = engine();
    let job = job("a boat", params(6, 1, 3));
    let mut steps = Vec::new();
    let mut progress = |s, t| steps.push((s, t));
    let calls = std::cell::Cell::new(0);
    let cancelled = || {
        calls.set(calls.get() + 1);
        calls.get() > 3
    };
    let mut ctx = RenderContext {
        progress: &mut progress,
        cancelled: &cancelled,
    };
    let err = e
        .render(&job, &RenderInputs::default(), &mut ctx)
        .unwrap_err();
    assert!(matches!(err, RenderError::Cancelled), "{err}");
    assert_eq!(steps, [(1, 6), (2, 6), (3, 6)]);

    let mut steps = Vec::new();
    let mut progress = |s, _| steps.push(s);
    let mut ctx = RenderContext {
        progress: &mut progress,
        cancelled: &|| false,
    };
    e.render(&job, &RenderInputs::default(), &mut ctx).unwrap();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn an_init_image_starts_from_its_encoding() {
    let e = engine();
    let init = RgbImage::from_fn(32, 24, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 10) as u8, 128])
    });
    let inputs = RenderInputs {
        init_image: Some(init.clone()),
    };
    let dto = ParamsDto {
        init_image: Some("up_1".into()),
        init_weight: Some(1.0),
        lr: Some(1e-6),
        ..params(1, 1, 9)
    };
    let out = run(&e, &job("a painting", dto.clone()), &inputs).unwrap();
    // A negligible step keeps every code: the result is the VQGAN's
    // reconstruction of the (resized) init image.
    let vq = Vqgan::load(&tiny_models().join("vqgan"), Device::Cpu).unwrap();
    let resized = image::imageops::resize(&init, 64, 48, image::imageops::FilterType::Lanczos3);
    let x = kiln_worker::models::image::from_image(&resized, Device::Cpu) * 2.0 - 1.0;
    let rec = tch::no_grad(|| {
        let (_, idx) = vq.model.encode(&x);
        ((vq.model.decode_indices(&idx, 12, 16) + 1.0) / 2.0).clamp(0.0, 1.0)
    });
    let expected = kiln_worker::models::image::to_images(&rec).unwrap();
    assert!(
        out[0].image == expected[0],
        "the render is not the init image's reconstruction"
    );
    let random = run(
        &e,
        &job(
            "a painting",
            ParamsDto {
                lr: Some(1e-6),
                ..params(1, 1, 9)
            },
        ),
        &RenderInputs::default(),
    )
    .unwrap();
    assert!(random[0].image != expected[0]);

    let missing = run(&e, &job("a painting", dto), &RenderInputs::default());
    assert!(matches!(missing, Err(RenderError::Failed(_))));
}

#[test]
fn a_four_candidate_job_keeps_the_best_two_by_clip_score() {
    let e = engine();
    let job = job(
        "a green apple",
        ParamsDto {
            keep: Some(2),
            ..params(2, 4, 21)
        },
    );
    let candidates = run(&e, &job, &RenderInputs::default()).unwrap();
    assert_eq!(
        candidates.iter().map(|c| c.seed).collect::<Vec<_>>(),
        [21, 22, 23, 24]
    );
    let clip = Clip::load(&tiny_models().join("clip"), Device::Cpu).unwrap();
    let images: Vec<RgbImage> = candidates.iter().map(|c| c.image.clone()).collect();
    let scores = clip.score_prompt(job.prompt(), &images).unwrap();
    let kept = rerank::rerank(Some(&clip), job.prompt(), candidates, job.params().keep()).unwrap();
    assert_eq!(kept.len(), 2);
    let mut order: Vec<usize> = (0..4).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    assert!(
        scores[order[1]] > scores[order[2]],
        "the fixture separates the top two: {scores:?}"
    );
    for (rank, k) in kept.iter().enumerate() {
        assert_eq!(k.rank as usize, rank);
        assert_eq!(
            k.candidate.seed,
            21 + order[rank] as u64,
            "scores {scores:?}"
        );
        assert_eq!(k.score, Some(scores[order[rank]]));
    }
}

#[test]
fn engine_load_builds_vqgan_clip_from_the_model_root() {
    let e = kiln_worker::engine::load(EngineKind::VqganClip, tiny_models(), Device::Cpu).unwrap();
    assert_eq!(e.kind(), EngineKind::VqganClip);
    let err = kiln_worker::engine::load(
        EngineKind::VqganClip,
        Path::new("/nonexistent/kiln"),
        Device::Cpu,
    )
    .err()
    .expect("no models, no engine");
    assert!(format!("{err:#}").contains("config.json"), "{err:#}");
}

#[test]
fn without_augmentation_the_step_is_still_a_descent() {
    let e = engine().with_augment(Augment::none());
    let job = job(
        "a castle",
        ParamsDto {
            lr: Some(0.2),
            ..params(12, 1, 4)
        },
    );
    let mut losses = Vec::new();
    render_with(&e, &job, &RenderInputs::default(), &mut losses).unwrap();
    assert_eq!(losses.len(), job.params().steps() as usize);
    // The cutouts still take random squares at each step, so one step's loss
    // is noisy: the mean of the last four steps must sit at least 0.1 below
    // the mean of the first four (the descent gives about 0.23).
    let curve: Vec<f32> = losses.iter().map(|l| l[0]).collect();
    let first = curve[..4].iter().sum::<f32>() / 4.0;
    let last = curve[8..].iter().sum::<f32>() / 4.0;
    assert!(
        last < first - 0.1,
        "the loss did not fall: first four average {first}, last four {last} ({curve:?})"
    );
}

/// Largest difference between two renders of the same job, and the share of
/// values that differ.
fn compare(alone: &[Candidate], batched: &[Candidate], what: &str) -> (u8, f64) {
    assert_eq!(alone.len(), batched.len(), "{what}");
    let (mut worst, mut share) = (0u8, 0f64);
    for (a, b) in alone.iter().zip(batched) {
        assert_eq!(a.seed, b.seed, "{what}");
        let (count, w) = common::differences(a, b);
        worst = worst.max(w);
        share = share.max(count as f64 / a.image.as_raw().len() as f64);
    }
    println!(
        "{what}: at most {worst} levels apart, on {:.3} % of values",
        share * 100.0
    );
    (worst, share)
}

#[test]
fn jobs_optimised_together_render_as_they_do_alone() {
    let e = engine();
    let a = job(
        "a lighthouse",
        ParamsDto {
            lr: Some(0.2),
            ..params(3, 2, 5)
        },
    );
    let b = job("a red fox | blurry:-0.5", params(3, 2, 9));
    let c = job(
        "a castle on a hill",
        ParamsDto {
            lr: Some(0.05),
            cut_pow: Some(0.5),
            ..params(3, 2, 21)
        },
    );
    let key = e.batch_key(&a).expect("vqgan-clip jobs batch");
    assert!([&b, &c].iter().all(|j| e.batch_key(j) == Some(key)));
    let other_steps = job("a lighthouse", params(4, 2, 5));
    assert_eq!(
        e.batch_key(&other_steps),
        Some(key),
        "step counts share a batch (a job leaves it when it is done)"
    );
    let other_size = job(
        "a lighthouse",
        ParamsDto {
            width: Some(48),
            ..params(3, 2, 5)
        },
    );
    assert_ne!(e.batch_key(&other_size), Some(key), "sizes batch apart");
    let out = common::render_together(&e, &[&a, &b, &c], &[None, None, None]);
    for (j, (r, seen)) in [&a, &b, &c].into_iter().zip(out) {
        assert_eq!(seen, [(1, 3), (2, 3), (3, 3)]);
        let alone = run(&e, j, &RenderInputs::default()).unwrap();
        // The determinism rule: at most one level apart on at most 0.1 %
        // of the values, where the batch size changes a kernel's rounding
        // (none does here on the CPU: the images are identical).
        let (worst, share) = compare(&alone, &r.unwrap(), j.prompt().text());
        assert!(
            worst <= 1 && share <= 0.001,
            "{}: {worst} levels apart on {share}",
            j.prompt().text()
        );
    }
}

#[test]
fn a_cancel_or_a_bad_input_ends_one_job_of_a_batch() {
    let e = engine();
    let a = job("a lighthouse", params(4, 1, 5));
    let cancelled = job("a red fox", params(4, 2, 9));
    // Names an init image the worker did not fetch: this job fails alone.
    let bad = job(
        "a castle",
        ParamsDto {
            init_image: Some("up_missing".into()),
            ..params(4, 1, 21)
        },
    );
    let out = common::render_together(&e, &[&a, &cancelled, &bad], &[None, Some(2), None]);
    assert!(
        matches!(out[1].0, Err(RenderError::Cancelled)),
        "{:?}",
        out[1].0
    );
    assert_eq!(out[1].1, [(1, 4), (2, 4)], "it left the batch after step 2");
    assert!(
        matches!(&out[2].0, Err(e) if e.to_string().contains("not fetched")),
        "{:?}",
        out[2].0
    );
    assert_eq!(out[0].1.len(), 4);
    let alone = run(&e, &a, &RenderInputs::default()).unwrap();
    let (worst, _) = compare(
        &alone,
        out[0].0.as_ref().unwrap(),
        "beside a cancel and a bad job",
    );
    assert!(worst <= 2);
}

/// A feed whose job `k` may join once the batch asked for more
/// `ready[k]` times (the engine asks before every step), recording what
/// the engine asked and when each job ended.
struct Arrivals<'j> {
    jobs: Vec<&'j JobSpec>,
    ready: Vec<u32>,
    inputs: RenderInputs,
    asked: u32,
    given: Vec<bool>,
    rooms: Vec<usize>,
    steps: Vec<Vec<(u32, u32)>>,
    /// `(job, how many times the batch had asked when it ended)`, in order.
    ended: Vec<(usize, u32)>,
    results: Vec<Option<Rendered>>,
}

impl<'j> Arrivals<'j> {
    fn new(jobs: &[(&'j JobSpec, u32)]) -> Arrivals<'j> {
        Arrivals {
            jobs: jobs.iter().map(|j| j.0).collect(),
            ready: jobs.iter().map(|j| j.1).collect(),
            inputs: RenderInputs::default(),
            asked: 0,
            given: vec![false; jobs.len()],
            rooms: Vec::new(),
            steps: vec![Vec::new(); jobs.len()],
            ended: Vec::new(),
            results: jobs.iter().map(|_| None).collect(),
        }
    }
}

impl Feed for Arrivals<'_> {
    fn join(&mut self, room: usize) -> Vec<usize> {
        self.rooms.push(room);
        let ids: Vec<usize> = (0..self.jobs.len())
            .filter(|&k| !self.given[k] && self.ready[k] <= self.asked)
            .take(room)
            .collect();
        for &k in &ids {
            self.given[k] = true;
        }
        self.asked += 1;
        ids
    }

    fn job(&self, id: usize) -> (&JobSpec, &RenderInputs) {
        (self.jobs[id], &self.inputs)
    }

    fn progress(&mut self, id: usize, step: u32, total: u32) {
        self.steps[id].push((step, total));
    }

    fn stopped(&self, _: usize) -> bool {
        false
    }

    fn finish(&mut self, ended: Vec<(usize, Rendered)>) {
        for (id, r) in ended {
            assert!(self.results[id].is_none(), "job {id} ended twice");
            self.ended.push((id, self.asked));
            self.results[id] = Some(r);
        }
    }
}

#[test]
fn a_short_job_leaves_the_batch_when_done_and_a_later_one_joins_it() {
    let e = engine();
    let long = job("a lighthouse", params(6, 2, 5));
    let short = job("a red fox | blurry:-0.5", params(2, 2, 9));
    let later = job(
        "a castle on a hill",
        ParamsDto {
            lr: Some(0.05),
            ..params(3, 2, 21)
        },
    );
    let mut feed = Arrivals::new(&[(&long, 0), (&short, 0), (&later, 2)]);
    e.continuous()
        .expect("vqgan-clip takes jobs in while it runs")
        .render_feed(&mut feed);
    // Asked before each step: the short job ends after step 2, the later
    // one joins for step 3 and ends after step 5, the long one after step 6.
    assert_eq!(feed.ended, [(1, 2), (2, 5), (0, 6)], "{:?}", feed.ended);
    assert_eq!(feed.steps[2], [(1, 3), (2, 3), (3, 3)]);
    assert_eq!(feed.steps[0].len(), 6);
    assert_eq!(
        feed.rooms[..2],
        [usize::MAX, 6],
        "16 candidates at most: 6 more jobs of 2 beside the first two"
    );
    for (k, j) in [&long, &short, &later].into_iter().enumerate() {
        let r = feed.results[k].take().expect("ended").unwrap();
        let alone = run(&e, j, &RenderInputs::default()).unwrap();
        // The determinism rule, as for a fixed batch: the images are the
        // ones the job gets alone.
        let (worst, share) = compare(&alone, &r, j.prompt().text());
        assert!(
            worst <= 1 && share <= 0.001,
            "{}: {worst} levels apart on {share}",
            j.prompt().text()
        );
    }
}
