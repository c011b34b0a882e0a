//! The `dalle` engine renders a job's candidates from a model directory
//! written by `model_store::dalle::init_tiny`.

use kiln_protocol::{Engine as EngineKind, JobSpec, Limits, ParamsDto};
use kiln_worker::engine::dalle::Dalle;
use kiln_worker::engine::{self, Engine, RenderContext, RenderError, RenderInputs};
use kiln_worker::model_store;
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
type Rendered = (Result<Vec<engine::Candidate>, RenderError>, Vec<(u32, u32)>);

fn render(engine: &mut dyn Engine, job: &JobSpec, cancel_after: Option<u32>) -> Rendered {
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
    let mut e = engine::load(EngineKind::Dalle, models_root(), Device::Cpu).unwrap();
    assert_eq!(e.kind(), EngineKind::Dalle);
    let job = job(3, 64);
    let (r, seen) = render(e.as_mut(), &job, None);
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
    let mut small = Dalle::load(models_root(), Device::Cpu)
        .unwrap()
        .with_max_batch(2);
    let (r, seen) = render(&mut small, &job, None);
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
    let mut e = Dalle::load(models_root(), Device::Cpu).unwrap();
    let (r, seen) = render(&mut e, &job(2, 8), Some(4));
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
