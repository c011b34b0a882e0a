//! The detokenizer (taming's VQGAN decoder with min-dalle's weights mapped
//! to taming's names) reproduces min-dalle's `VQGanDetokenizer`; fixture from
//! `worker/reference/dalle_fixtures.py`, weights rebuilt from the same seed.

use kiln_worker::models::dalle::detokenizer::{
    min_dalle_config, min_dalle_key, to_images, Detokenizer,
};
use kiln_worker::models::dalle::synthetic;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// The seed of `DETOKENIZER_SEED` in the fixture script.
const SEED: u64 = 21;

#[test]
fn detokenizer_images_match_min_dalle() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dalle/detokenizer.safetensors");
    let t: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect();
    let det = Detokenizer::new(&min_dalle_config(), Device::Cpu).unwrap();
    // Seeded by min-dalle's key names (`embedding.weight` for the codebook).
    synthetic::fill(&det.vs, SEED, min_dalle_key);

    let raw = det.decode_raw(&t["tokens"]);
    let expect = &t["raw_taming_eps"];
    assert_eq!(raw.size(), [1, 3, 256, 256]);
    let d = (&raw - expect).abs().max().double_value(&[]);
    assert!(d < 1e-4, "raw output differs by {d}");
    assert!(
        expect.std(true).double_value(&[]) > 0.1,
        "the fixture is not trivial"
    );

    // Against min-dalle's own image (GroupNorm eps 1e-5 there): pixels are
    // clip(0, 1) · 255 truncated, so the eps gap (about 0.2 of a level)
    // moves a few percent of them by one level.
    let gap = t["eps_gap"].double_value(&[0]);
    assert!(gap < 2e-3, "eps gap {gap}");
    let img = &to_images(&raw).unwrap()[0];
    let ours = Tensor::from_slice(img.as_raw())
        .reshape([256, 256, 3])
        .to_kind(Kind::Int64);
    let theirs = t["image"].reshape([256, 256, 3]).to_kind(Kind::Int64);
    let diff = (&ours - &theirs).abs();
    let worst = diff.max().int64_value(&[]);
    assert!(worst <= 1, "pixels differ by up to {worst} levels");
    let off = diff
        .gt(0)
        .to_kind(Kind::Float)
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(off < 0.05, "{off} of the pixels differ");
}
