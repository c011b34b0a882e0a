//! Converting taming's published VQGAN checkpoint layout (`last.ckpt` +
//! `model.yaml`) into Kiln's vqgan directory, without Python. The fixture
//! is written by `worker/reference/vqgan_ckpt_fixture.py`.

use kiln_worker::model_store::vqgan::{config_from_yaml, convert};
use kiln_worker::models::vqgan::Vqgan;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Tensor};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vqgan/ckpt")
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-vqgan-convert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn a_lightning_checkpoint_converts_and_matches_the_reference() {
    let out = out_dir("ok");
    convert(
        &fixture().join("last.ckpt"),
        &fixture().join("model.yaml"),
        &out,
    )
    .unwrap();
    let loaded = Vqgan::load(&out, Device::Cpu).unwrap();
    let cfg = &loaded.model.config;
    assert_eq!((cfg.embed_dim, cfg.n_embed), (4, 8));
    assert_eq!(cfg.ddconfig.ch_mult, [1, 1]);
    assert_eq!(cfg.ddconfig.attn_resolutions, [4]);

    let names: Vec<String> = Tensor::read_safetensors(out.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            assert_eq!(t.kind(), tch::Kind::Float, "{n} is stored as f32");
            n
        })
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("loss.")),
        "the loss networks are left out"
    );
    assert!(names.contains(&"quantize.embedding.weight".to_string()));

    let e: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixture().join("expected.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let _guard = tch::no_grad_guard();
    // The encoder path checks every encoder weight; the decoder path checks
    // the permuted view (decoder.conv_in) and the rest of the decoder; the
    // codebook was a view at an offset into a larger storage.
    let d = (loaded.model.encode_latent(&e["x"]) - &e["h"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-4, "encode differs by {d}");
    let d = (loaded.model.decode(&e["z"]) - &e["dec"])
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-4, "decode differs by {d}");
    assert!(loaded.model.quantize.embedding.equal(&e["codebook"]));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_yaml_gives_tamings_params() {
    let text = std::fs::read_to_string(fixture().join("model.yaml")).unwrap();
    let cfg = config_from_yaml(&text).unwrap();
    assert_eq!(cfg.ddconfig.resolution, 8);
    assert!(!cfg.ddconfig.double_z);
    let preset = "model:\n  params:\n    embed_dim: 256\n    n_embed: 16384\n    ddconfig:\n      double_z: False\n      z_channels: 256\n      resolution: 256\n      in_channels: 3\n      out_ch: 3\n      ch: 128\n      ch_mult: [1,1,2,2,4]  # num_down = len(ch_mult)-1\n      num_res_blocks: 2\n      attn_resolutions: [16]\n      dropout: 0.0\n";
    assert_eq!(
        config_from_yaml(preset).unwrap(),
        kiln_worker::models::vqgan::VqganConfig::imagenet_f16_16384()
    );
    let err = config_from_yaml("model:\n  target: x\n").unwrap_err();
    assert!(err.to_string().contains("model.params"), "{err}");
    let err = config_from_yaml("model:\n  params:\n    embed_dim: 4\n").unwrap_err();
    assert!(format!("{err:#}").contains("n_embed"), "{err:#}");
}

#[test]
fn files_that_are_not_checkpoints_are_refused_clearly() {
    let out = out_dir("bad");
    let yaml = fixture().join("model.yaml");
    // A YAML file is not a zip archive.
    let err = convert(&yaml, &yaml, &out).unwrap_err();
    assert!(format!("{err:#}").contains("not a zip archive"), "{err:#}");
    // A truncated archive.
    let bytes = std::fs::read(fixture().join("last.ckpt")).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let cut = out.join("cut.ckpt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = convert(&cut, &yaml, &out).unwrap_err();
    assert!(format!("{err:#}").contains("cut.ckpt"), "{err:#}");
    // A checkpoint of another configuration.
    let other = out.join("other.yaml");
    let text = std::fs::read_to_string(&yaml)
        .unwrap()
        .replace("n_embed: 8", "n_embed: 9");
    std::fs::write(&other, text).unwrap();
    let err = convert(&fixture().join("last.ckpt"), &other, &out.join("m")).unwrap_err();
    assert!(
        format!("{err:#}").contains("quantize.embedding.weight"),
        "{err:#}"
    );
    std::fs::remove_dir_all(&out).unwrap();
}
