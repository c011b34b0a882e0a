//! The VQGAN against taming-transformers' modules: fixtures written by
//! `worker/reference/vqgan_fixtures.py` from tiny random-weight models.

use kiln_worker::models::vqgan::{Vqgan, VqganConfig};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vqgan")
        .join(name)
}

fn cases(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture(name).join("cases.safetensors"))
        .expect("reading cases.safetensors")
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

fn check(name: &str) {
    let _guard = tch::no_grad_guard();
    let loaded = Vqgan::load(&fixture(name), Device::Cpu).expect("loading the fixture model");
    let m = &loaded.model;
    let c = cases(name);
    let f = m.config.factor();
    let (_, _, hh, ww) = c["x"].size4().unwrap();
    let (h, w) = (hh / f, ww / f);

    let latent = m.encode_latent(&c["x"]);
    let d = max_abs_diff(&latent, &c["h"]);
    assert!(d < TOL, "{name}: encode(x) differs by {d}");

    // Indices of the reference latent, so that an encoder difference cannot flip them.
    let idx = m.quantize.indices(&c["h"]);
    assert_eq!(idx.kind(), Kind::Int64);
    assert!(idx.equal(&c["indices"]), "{name}: quantizer indices differ");
    let (z_q, idx2) = m.quantize.quantize(&c["h"]);
    assert!(idx2.equal(&c["indices"]));
    let d = max_abs_diff(&z_q, &c["z_q"]);
    assert!(d < TOL, "{name}: quantized latent differs by {d}");
    let (z_q_enc, idx_enc) = m.encode(&c["x"]);
    assert!(
        idx_enc.equal(&c["indices"]),
        "{name}: encode's indices differ"
    );
    assert!(max_abs_diff(&z_q_enc, &c["z_q"]) < TOL);

    let dec = m.decode(&c["z"]);
    let d = max_abs_diff(&dec, &c["dec"]);
    assert!(d < TOL, "{name}: decode(z) differs by {d}");
    assert_eq!(dec.size()[2..], [hh, ww]);

    let dec_codes = m.decode_indices(&c["codes"], h, w);
    let d = max_abs_diff(&dec_codes, &c["dec_codes"]);
    assert!(d < TOL, "{name}: decode_indices differs by {d}");

    // The reference is not trivial: a wrong layer or index would show.
    assert!(c["indices"].min().int64_value(&[]) < c["indices"].max().int64_value(&[]));
    assert!(c["dec"].abs().max().double_value(&[]) > 0.1);
}

#[test]
fn small_config_matches_taming() {
    check("small");
}

#[test]
fn deep_config_matches_taming() {
    check("deep");
}

#[test]
fn fixture_configs_read_as_taming_wrote_them() {
    let cfg = VqganConfig::from_file(&fixture("deep").join("config.json")).unwrap();
    assert_eq!(cfg.ddconfig.ch_mult, [2, 1, 1]);
    assert_eq!(cfg.factor(), 4);
    assert_eq!(cfg.n_embed, 48);
}

#[test]
fn the_weights_of_another_config_are_refused() {
    let mut cfg = VqganConfig::from_file(&fixture("small").join("config.json")).unwrap();
    cfg.n_embed += 1;
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let _ = Vqgan::new(vs.root(), &cfg);
    let err = vs
        .load(fixture("small").join("model.safetensors"))
        .unwrap_err();
    assert!(
        err.to_string().contains("quantize.embedding.weight"),
        "{err}"
    );
}
