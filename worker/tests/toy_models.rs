//! The committed toy-world models (`worker/toy-models`, copied by
//! `models init-toy`) follow prompts, as judged by the world's pixel-level
//! analyser: CLIP ranks the matching caption first, `vqgan-clip` moves an
//! image towards the prompt's colour (and CLIP's score up) and, from a plain
//! start, draws an object of that colour, `dalle` draws
//! the colour and shape asked for, and the rerank keeps a candidate that
//! matches.

use kiln_worker::candidate::Scorer;
use kiln_worker::engine::dalle::Dalle;
use kiln_worker::engine::vqgan_clip::VqganClip;
use kiln_worker::engine::{Engine, RenderInputs};
use kiln_worker::models::clip::Clip;
use kiln_worker::toy::analyse::{colour_share, read};
use kiln_worker::toy::dalle::Sampling;
use kiln_worker::toy::eval::{dalle_job, start_colour, start_plain, starting_job, vqgan_job};
use kiln_worker::toy::world::{attribute_caption, Colour, Shape};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use tch::Device;

/// The toy models, copied once per test binary by `init-toy`.
fn models() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One folder for every run: init-toy writes the same files each time.
        let dir = std::env::temp_dir().join("kiln-toy-models-test");
        kiln_worker::model_store::toy::init_toy(&dir).unwrap();
        dir
    })
}

fn clip() -> Arc<Clip> {
    Arc::new(Clip::load(&models().join("clip"), Device::Cpu).unwrap())
}

#[test]
fn clip_ranks_the_matching_caption_first_for_held_out_scenes() {
    let z = kiln_worker::toy::clip::zero_shot(&clip(), 120).unwrap();
    assert!(z.accuracy >= 0.9, "{z:?}");
    assert!(z.colour_accuracy >= 0.95, "{z:?}");
}

#[test]
fn a_vqgan_clip_job_moves_its_image_towards_the_prompts_colour_and_score() {
    let clip = clip();
    let engine = VqganClip::load_with(models(), Device::Cpu, clip.clone()).unwrap();
    for (k, colour) in [Colour::Red, Colour::Blue].into_iter().enumerate() {
        let prompt = attribute_caption(colour, Shape::Square);
        let job = vqgan_job(&prompt, 60, 1, 100 + k as u64).unwrap();
        let end = render(&engine, &job).remove(0);
        let start = render(&engine, &starting_job(&job).unwrap()).remove(0);
        let (before, after) = (colour_share(&start, colour), colour_share(&end, colour));
        // Several times the pixels of the colour it started with.
        assert!(
            after >= 3.0 * before && after >= before + 0.05,
            "{prompt}: {before:.3} → {after:.3} of the pixels in {colour:?}"
        );
        let p = job.prompt();
        let s0 = clip.score(p, &[start]).unwrap()[0];
        let s1 = clip.score(p, &[end]).unwrap()[0];
        assert!(s1 > s0 + 1.0, "{prompt}: CLIP score {s0} → {s1}");
    }
}

/// From a plain background of another colour (the world's scene before its
/// object is drawn), `vqgan-clip` draws an object that the analyser reads in
/// the prompt's colour, and CLIP's score for the prompt rises over the run.
#[test]
fn a_vqgan_clip_job_from_a_plain_start_draws_an_object_of_the_prompts_colour() {
    let clip = clip();
    let engine = VqganClip::load_with(models(), Device::Cpu, clip.clone()).unwrap();
    let asked = [
        (Colour::Red, Shape::Circle),
        (Colour::Blue, Shape::Triangle),
        (Colour::Yellow, Shape::Star),
        (Colour::Green, Shape::Square),
    ];
    let mut readings = Vec::new();
    for (k, &(colour, shape)) in asked.iter().enumerate() {
        let prompt = attribute_caption(colour, shape);
        let job = vqgan_job(&prompt, 60, 1, 200 + k as u64).unwrap();
        let background = start_colour(colour, k);
        let (job, inputs) = start_plain(&job, background).unwrap();
        let end = render_from(&engine, &job, &inputs).remove(0);
        let start = render_from(&engine, &starting_job(&job).unwrap(), &inputs).remove(0);
        assert_eq!(read(&start).colour, None, "{prompt}: the start is plain");
        let (before, after) = (colour_share(&start, colour), colour_share(&end, colour));
        assert!(
            before < 0.01 && after > before + 0.01,
            "{prompt}: {before:.3} → {after:.3} of the pixels in {colour:?}"
        );
        let p = job.prompt();
        let s0 = clip.score(p, &[start]).unwrap()[0];
        let s1 = clip.score(p, std::slice::from_ref(&end)).unwrap()[0];
        assert!(s1 > s0 + 1.0, "{prompt}: CLIP score {s0} → {s1}");
        readings.push((colour, background, read(&end)));
    }
    let right = readings
        .iter()
        .filter(|(colour, _, r)| r.colour == Some(*colour))
        .count();
    println!(
        "{right} of {} read in the prompt's colour: {readings:?}",
        asked.len()
    );
    assert!(right >= 3, "{readings:?}");
}

fn render(engine: &dyn Engine, job: &kiln_protocol::JobSpec) -> Vec<image::RgbImage> {
    render_from(engine, job, &RenderInputs::default())
}

fn render_from(
    engine: &dyn Engine,
    job: &kiln_protocol::JobSpec,
    inputs: &RenderInputs,
) -> Vec<image::RgbImage> {
    kiln_worker::toy::eval::render_from(engine, job, inputs)
        .unwrap()
        .into_iter()
        .map(|c| c.image)
        .collect()
}

#[test]
fn dalle_draws_the_colour_and_shape_of_its_prompts() {
    let engine = Dalle::load(models(), Device::Cpu).unwrap();
    let asked = [
        (Colour::Red, Shape::Circle),
        (Colour::Blue, Shape::Square),
        (Colour::Yellow, Shape::Triangle),
        (Colour::Green, Shape::Ring),
    ];
    let (mut colours, mut shapes) = (0, 0);
    let mut readings = Vec::new();
    for (k, &(colour, shape)) in asked.iter().enumerate() {
        let job = dalle_job(
            &attribute_caption(colour, shape),
            2,
            7 + k as u64,
            Sampling::default(),
        )
        .unwrap();
        for img in render(&engine, &job) {
            assert_eq!(img.dimensions(), (256, 256));
            let r = read(&img);
            colours += usize::from(r.colour == Some(colour));
            shapes += usize::from(r.shape == Some(shape));
            readings.push((colour, shape, r));
        }
    }
    println!("colours {colours} of 8, shapes {shapes} of 8: {readings:?}");
    assert!(colours >= 6, "{colours} of 8 colours right: {readings:?}");
    assert!(shapes >= 3, "{shapes} of 8 shapes right: {readings:?}");
}

#[test]
fn the_rerank_keeps_a_red_circle_among_candidates_for_a_red_circle() {
    let clip = clip();
    let engine = Dalle::load(models(), Device::Cpu).unwrap();
    let prompt = "a red circle";
    let job = dalle_job(prompt, 6, 31, Sampling::default()).unwrap();
    let images = render(&engine, &job);
    let scores = clip.score(job.prompt(), &images).unwrap();
    let best = kiln_worker::models::clip::top_k(&scores, 1)[0].0;
    let r = read(&images[best]);
    assert_eq!(
        (r.colour, r.shape),
        (Some(Colour::Red), Some(Shape::Circle)),
        "{r:?}"
    );
}

#[test]
fn the_toy_root_verifies_like_any_other() {
    let lines = kiln_worker::model_store::verify(models()).unwrap();
    let text = lines.join("\n");
    assert!(text.contains("dalle: 4 layers"), "{text}");
    assert!(text.contains("1024 codes"), "{text}");
}

#[test]
fn the_toy_vocabulary_is_the_committed_one_and_reads_each_word_as_one_token() {
    let (vocab, merges) = kiln_worker::toy::dalle::vocab();
    let dir = models().join("dalle");
    // The same ids (the text's key order follows serde_json's features).
    let ids = |text: &str| -> std::collections::HashMap<String, i64> {
        serde_json::from_str(text).unwrap()
    };
    let committed = std::fs::read_to_string(dir.join("vocab.json")).unwrap();
    assert_eq!(ids(&committed), ids(&vocab));
    assert_eq!(
        std::fs::read_to_string(dir.join("merges.txt")).unwrap(),
        merges
    );
    let t = kiln_worker::models::dalle::TextTokenizer::new(&vocab, &merges).unwrap();
    // <s>, one token per word, </s>.
    assert_eq!(
        t.tokenize("a small orange triangle at the top left").len(),
        2 + 8
    );
    assert!(
        !t.tokenize("a purple zebra").contains(&3),
        "unknown words spell out"
    );
}

#[test]
fn train_toy_writes_a_model_root_that_verifies() {
    use kiln_worker::toy::{clip::ClipTraining, dalle::DalleTraining, vqgan::VqganTraining};
    let dir = fresh_dir("all");
    let training = kiln_worker::toy::train::ToyTraining {
        seed: 3,
        // The augmented recipe here; the plain one in the seed test below.
        clip: Some(ClipTraining {
            steps: 2,
            augment: true,
            ..ClipTraining::default()
        }),
        vqgan: Some(VqganTraining {
            steps: 2,
            ..VqganTraining::default()
        }),
        dalle: Some(DalleTraining {
            steps: 2,
            ..DalleTraining::default()
        }),
    };
    kiln_worker::toy::train::train_toy(&dir, training).unwrap();
    let text = kiln_worker::model_store::verify(&dir).unwrap().join("\n");
    assert!(text.contains("dalle: 4 layers"), "{text}");
    assert!(text.contains("1024 codes"), "{text}");
    Clip::load(&dir.join("clip"), Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An empty folder of this test process for `tag`.
fn fresh_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-train-toy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A toy training's initial weights and scenes follow from its seed: two
/// `models train-toy` processes of one seed write the same bytes, and
/// another seed other weights. (Processes of their own: loading a model
/// draws from libtorch's one generator too, as the other tests here do.)
#[test]
fn a_toy_training_s_weights_follow_from_its_seed() {
    let train = |seed: u64, run: &str| {
        let dir = fresh_dir(&format!("seed-{seed}-{run}"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-worker"))
            .args(["models", "train-toy", "--only", "clip", "--clip-steps", "1"])
            .args(["--seed", &seed.to_string(), "--out"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "train-toy: {status}");
        let weights = std::fs::read(dir.join("clip/model.safetensors")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        weights
    };
    let first = train(5, "a");
    assert!(first == train(5, "b"), "the same seed gave other weights");
    assert!(first != train(6, "a"), "another seed gave the same weights");
}

/// `eval-toy --images-out` writes every image it judged, named by its
/// prompt and by what the analyser reads in it, and the per-shape figures
/// add up to the overall one.
#[test]
fn eval_toy_writes_the_images_it_judged_named_by_their_readings() {
    use kiln_worker::toy::eval::{evaluate, EvalOptions, VqganStart};
    let out = fresh_dir("eval-images");
    let opts = EvalOptions {
        images: 1,
        prompts: 5,
        steps: 1,
        candidates: 2,
        images_out: Some(out.clone()),
        ..EvalOptions::default()
    };
    let e = evaluate(models(), opts).unwrap();
    // The vqgan-clip jobs started plain (the default), from backgrounds
    // without the prompt's colour; random codes hold about an eighth of it.
    assert_eq!(e.vqgan_clip_start, VqganStart::Plain);
    assert!(
        e.vqgan_clip_start_pixels_of_colour < 0.01,
        "{}",
        e.vqgan_clip_start_pixels_of_colour
    );
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let count = |kind: &str| names.iter().filter(|n| n.starts_with(kind)).count();
    assert_eq!(
        (
            count("reconstruction-"),
            count("vqgan-clip-"),
            count("dalle-")
        ),
        (5, 5, 10),
        "{names:?}"
    );
    let mut shapes_right = 0;
    for name in names.iter().filter(|n| n.starts_with("reconstruction-")) {
        let img = image::open(out.join(name)).unwrap().to_rgb8();
        let r = read(&img);
        let word = |v: Option<&'static str>| v.unwrap_or("none");
        let read_as = format!(
            "-read-{}-{}.png",
            word(r.colour.map(Colour::name)),
            word(r.shape.map(Shape::name))
        );
        assert!(name.ends_with(&read_as), "{name} is read as {read_as}");
        // reconstruction-N-COLOUR-SHAPE-read-…: the prompt's shape.
        let prompted = Shape::parse(name.split('-').nth(3).unwrap()).unwrap();
        shapes_right += usize::from(r.shape == Some(prompted));
    }
    let rec = &e.vqgan_reconstruction;
    assert_eq!(rec.images, 5);
    assert_eq!(rec.shape, shapes_right as f64 / 5.0);
    // Five prompts: each of the five shapes once.
    assert_eq!(rec.shape_by_prompt.len(), 5, "{rec:?}");
    let mean = rec.shape_by_prompt.values().sum::<f64>() / 5.0;
    assert!((mean - rec.shape).abs() < 1e-9, "{rec:?}");
    std::fs::remove_dir_all(&out).unwrap();
}
