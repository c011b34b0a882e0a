//! CLIP against its reference: `transformers`' CLIPModel, OpenAI's
//! tokenizer and `CLIPImageProcessor`, through the fixtures that
//! `worker/reference/clip_fixtures.py` writes.

use kiln_worker::models::clip::{preprocess, scores, Clip, ClipModel, Tokenizer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn reference(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn check_model(name: &str) {
    let dir = fixtures().join(name);
    let clip = Clip::load(&dir, Device::Cpu).unwrap();
    let r = reference(&dir.join("reference.safetensors"));
    let model: &ClipModel = clip.model();
    let text = tch::no_grad(|| model.get_text_features(&r["input_ids"]));
    let image = tch::no_grad(|| model.get_image_features(&r["pixel_values"]));
    let logits = scores(&image, &text, clip.score_scale());
    let dt = max_abs_diff(&text, &r["text_embeds"]);
    let di = max_abs_diff(&image, &r["image_embeds"]);
    let dl = max_abs_diff(&logits, &r["logits_per_image"]);
    let ds = max_abs_diff(&model.logit_scale(), &r["logit_scale"]);
    eprintln!("{name}: text {dt:.2e}, image {di:.2e}, logits {dl:.2e}");
    assert!(dt < 1e-4, "{name}: text embeddings differ by {dt}");
    assert!(di < 1e-4, "{name}: image embeddings differ by {di}");
    assert!(dl < 1e-4, "{name}: logits differ by {dl}");
    assert!(ds == 0.0, "{name}: logit scale differs by {ds}");
    // The outputs are not trivially small: a wrong layer would show.
    assert!(r["text_embeds"].abs().max().double_value(&[]) > 0.1);
    assert!(r["image_embeds"].abs().max().double_value(&[]) > 0.1);
    // The pipeline's encode_image agrees with the model.
    let via_pipeline = clip.encode_image(&r["pixel_values"]);
    assert!(max_abs_diff(&via_pipeline, &image) < 1e-6);
}

#[test]
fn tiny_a_legacy_eos_quick_gelu_matches_transformers() {
    check_model("tiny_a");
}

#[test]
fn tiny_b_first_eos_gelu_matches_transformers() {
    check_model("tiny_b");
}

#[test]
fn token_ids_match_openai_clip_tokenize() {
    let text = std::fs::read_to_string(fixtures().join("tokens.json")).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(rows.len() >= 200, "only {} prompts", rows.len());
    let tok = Tokenizer::new();
    let mut bad = Vec::new();
    for row in &rows {
        let prompt = row["text"].as_str().unwrap();
        let want: Vec<i64> = row["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let mut got = tok.encode(prompt);
        assert_eq!(got.len(), 77);
        while got.last() == Some(&0) {
            got.pop();
        }
        if got != want {
            bad.push(format!("{prompt:?}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        rows.len(),
        bad.join("\n")
    );
}

#[test]
fn pixel_values_match_clip_image_processor() {
    let dir = fixtures().join("preprocess");
    let index: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let r = reference(&dir.join("reference.safetensors"));
    assert!(index.len() >= 3);
    for case in &index {
        let file = case["image"].as_str().unwrap();
        let size = case["size"].as_i64().unwrap();
        let img = image::open(dir.join(file)).unwrap().to_rgb8();
        let got = preprocess::preprocess(&[img], size, Device::Cpu);
        let name = file.trim_end_matches(".png");
        let want = r[name].to_kind(Kind::Float).unsqueeze(0);
        let d = max_abs_diff(&got, &want);
        eprintln!("{file} at {size}: max |diff| {d:.2e}");
        assert!(d < 1e-2, "{file}: pixel values differ by {d}");
    }
}

#[test]
fn openai_checkpoints_convert_to_the_transformers_layout() {
    let src = fixtures().join("openai_tiny");
    let out = std::env::temp_dir().join(format!(
        "kiln-clip-openai-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let cfg = kiln_worker::model_store::clip::convert_openai(&src.join("model.pt"), &out).unwrap();
    // Dimensions as OpenAI's build_model derives them.
    assert_eq!(
        (
            cfg.text_config.hidden_size,
            cfg.text_config.num_attention_heads
        ),
        (128, 2)
    );
    assert_eq!(cfg.text_config.num_hidden_layers, 1);
    assert_eq!(
        (cfg.vision_config.image_size, cfg.vision_config.patch_size),
        (32, 8)
    );
    assert_eq!(cfg.vision_config.num_hidden_layers, 2);
    assert_eq!(cfg.projection_dim, 24);

    let clip = Clip::load(&out, Device::Cpu).unwrap();
    let r = reference(&src.join("reference.safetensors"));
    let text = tch::no_grad(|| clip.model().get_text_features(&r["input_ids"]));
    let image = clip.encode_image(&r["pixel_values"]);
    let logits = scores(&image, &text, clip.score_scale());
    let dt = max_abs_diff(&text, &r["text_features"]);
    let di = max_abs_diff(&image, &r["image_features"]);
    let dl = max_abs_diff(&logits, &r["logits_per_image"]);
    eprintln!("openai_tiny: text {dt:.2e}, image {di:.2e}, logits {dl:.2e}");
    assert!(
        dt < 1e-4 && di < 1e-4 && dl < 1e-4,
        "text {dt}, image {di}, logits {dl}"
    );
    std::fs::remove_dir_all(&out).ok();
}
