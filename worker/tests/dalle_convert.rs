//! Converting min-dalle's published state dicts (pickled `.pt` files, fp16
//! storages) into Kiln's dalle directory without Python, and
//! `models fetch dalle-*` against a local HTTP server (port 0).
//!
//! The conversion test reads `.pt` files written by min-dalle's own modules
//! (`DalleBartEncoder`, `DalleBartDecoder`, `VQGanDetokenizer` at a tiny
//! size, `torch.save(model.state_dict())` in fp16), committed under
//! `tests/fixtures/dalle/convert/` with the expected tensors and min-dalle's
//! outputs, by `worker/reference/dalle_convert_fixture.py`: the key names
//! and dtypes are min-dalle's, not Kiln's.
//!
//! The detokenizer's state dict is min-dalle's `VQGanDetokenizer` at a
//! quarter of its width, its tensors views into one shared storage (to keep
//! the file small); the fixture stores that storage and each view's layout,
//! from which the expected tensors are rebuilt here.

use kiln_worker::model_store::{self, dalle, Checkpoint, FetchOptions};
use kiln_worker::models::dalle::{DalleConfig, LoadedDalle, START_TOKEN};
use kiln_worker::models::vqgan::VqganConfig;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Largest difference allowed between Kiln's encoder states and decoder
/// logits on the converted model and min-dalle's on its own modules (both
/// float32 on the same fp16 weights).
const TOLERANCE: f64 = 1e-4;

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "kiln-dalle-convert-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dalle")
}

/// The tiny architecture min-dalle's modules were built with.
fn tiny_min_dalle() -> (DalleConfig, VqganConfig) {
    let dir = fixtures().join("convert");
    (
        DalleConfig::from_file(&dir.join("config.json")).unwrap(),
        VqganConfig::from_file(&dir.join("detokenizer.json")).unwrap(),
    )
}

/// min-dalle's files as `fetch` names them, in a fresh directory: the
/// committed state dicts and the fixtures' byte-pair vocabulary.
fn min_dalle_files(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let conv = fixtures().join("convert");
    for f in [dalle::ENCODER_PT, dalle::DECODER_PT, dalle::DETOKENIZER_PT] {
        std::fs::copy(conv.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(fixtures().join("vocab.json"), dir.join(dalle::VOCAB_SRC)).unwrap();
    std::fs::copy(fixtures().join("merges.txt"), dir.join(dalle::MERGES_SRC)).unwrap();
    dir
}

fn expected() -> HashMap<String, Tensor> {
    tensors(&fixtures().join("convert/expected.safetensors"))
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// The converted `file` in `out` holds exactly min-dalle's tensors of
/// `prefix` in the fixture (its `.pt` state dict), as float32, under the
/// names `rename` gives min-dalle's keys.
fn assert_converted(out: &Path, file: &str, prefix: &str, rename: fn(&str) -> String) {
    let all = expected();
    let want: HashMap<String, &Tensor> = all
        .iter()
        .filter_map(|(k, v)| Some((rename(k.strip_prefix(&format!("{prefix}/"))?), v)))
        .collect();
    check_converted(out, file, prefix, want);
}

/// The expected detokenizer tensors: views into the fixture's pool, by
/// min-dalle's key.
fn detoker_expected() -> HashMap<String, Tensor> {
    let layout: HashMap<String, (i64, Vec<i64>, Vec<i64>)> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("convert/detoker_layout.json")).unwrap(),
    )
    .unwrap();
    let pool = expected().remove("detoker_pool").unwrap();
    layout
        .into_iter()
        .map(|(k, (offset, size, stride))| (k, pool.as_strided(size, stride, offset)))
        .collect()
}

fn check_converted(out: &Path, file: &str, prefix: &str, want: HashMap<String, &Tensor>) {
    assert!(
        want.len() > 10,
        "{prefix}: the fixture holds the state dict"
    );
    let got = tensors(&out.join(file));
    let mut a: Vec<&String> = want.keys().collect();
    let mut b: Vec<&String> = got.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "{file}: min-dalle's keys");
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(w.kind(), Kind::Half, "{prefix}: {name} is stored as fp16");
        assert_eq!(g.kind(), Kind::Float, "{file}: {name} is f32");
        assert!(
            g.equal(&w.to_kind(Kind::Float)),
            "{file}: {name} differs from min-dalle's {prefix} state dict"
        );
    }
}

/// min-dalle's detokenizer keys are taming's but for the codebook.
fn taming_name(min_dalle: &str) -> String {
    if min_dalle == "embedding.weight" {
        "quantize.embedding.weight".into()
    } else {
        min_dalle.into()
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn min_dalle_state_dicts_convert_to_the_same_tensors_and_outputs() {
    let src = min_dalle_files("ok-src");
    let out = temp_dir("ok-out");
    let (config, detokenizer) = tiny_min_dalle();
    dalle::convert(&src, &out, &config, &detokenizer).unwrap();
    assert_converted(&out, "encoder.safetensors", "encoder", str::to_string);
    assert_converted(&out, "decoder.safetensors", "decoder", str::to_string);
    let detoker = detoker_expected();
    assert!(detoker.contains_key("embedding.weight"));
    check_converted(
        &out,
        "detokenizer.safetensors",
        "detoker",
        detoker.iter().map(|(k, v)| (taming_name(k), v)).collect(),
    );
    for (from, to) in [("vocab.json", "vocab.json"), ("merges.txt", "merges.txt")] {
        assert_eq!(
            std::fs::read(fixtures().join(from)).unwrap(),
            std::fs::read(out.join(to)).unwrap()
        );
    }

    // The converted model loads and runs (one encoder pass, one decoder
    // step and a detokenization), and its encoder and first decoder step
    // give min-dalle's outputs.
    let line = dalle::verify(&out).unwrap();
    assert!(line.contains("2 layers, embed 8"), "{line}");
    let _g = tch::no_grad_guard();
    let model = LoadedDalle::load_dir(&out, Device::Cpu).unwrap();
    assert_eq!(model.sampler.config, config);
    let e = expected();
    let text = &e["text_tokens"];
    let state = model.sampler.encoder.forward(text).unwrap();
    let d = max_diff(&state, &e["encoder_state"]);
    assert!(
        d < TOLERANCE,
        "encoder states differ from min-dalle's by {d}"
    );
    assert!(e["encoder_state"].abs().max().double_value(&[]) > 0.5);
    let decoder = &model.sampler.decoder;
    let cross = decoder.cross_state(&state, text).unwrap();
    let mut cache = decoder.new_cache(1, Kind::Float, Device::Cpu);
    let logits = decoder
        .step(&Tensor::from_slice(&[START_TOKEN]), &mut cache, &cross)
        .unwrap();
    let d = max_diff(&logits, &e["step_logits"]);
    assert!(
        d < TOLERANCE,
        "decoder logits differ from min-dalle's by {d}"
    );
    assert!(e["step_logits"].abs().max().double_value(&[]) > 0.5);

    // A state dict of another architecture is refused by name.
    let wrong = DalleConfig {
        embed_count: 64,
        ..config
    };
    let e = dalle::convert(&src, &temp_dir("wrong"), &wrong, &detokenizer).unwrap_err();
    assert!(format!("{e:#}").contains("encoder.pt"), "{e:#}");
    for d in [src, out] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn the_catalog_names_min_dalles_files_unpinned() {
    let all = model_store::catalog();
    for (name, suffix) in [("dalle-mini", "_mini"), ("dalle-mega", "")] {
        let c = all.iter().find(|c| c.name == name).unwrap();
        assert_eq!(c.engine_dir, "dalle");
        assert!(c.convert.is_some());
        let urls: Vec<&str> = c.files.iter().map(|f| f.url.as_str()).collect();
        let base = "https://huggingface.co/kuprel/min-dalle/resolve/main/";
        assert_eq!(
            urls,
            [
                format!("{base}encoder{suffix}.pt"),
                format!("{base}decoder{suffix}.pt"),
                format!("{base}detoker.pt"),
                format!("{base}vocab{suffix}.json"),
                format!("{base}merges{suffix}.txt"),
            ]
        );
        assert!(c.files.iter().all(|f| f.sha256.is_none()));
    }
}

/// Serves each file of `dir` at `/<name>`.
fn serve(dir: &Path) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            reader.read_line(&mut first).unwrap_or(0);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/");
            let head = match std::fs::read(dir.join(path.trim_start_matches('/'))) {
                Ok(body) => {
                    let _ = stream.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    let _ = stream.write_all(&body);
                    continue;
                }
                Err(_) => {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                }
            };
            let _ = stream.write_all(head.as_bytes());
        }
    });
    url
}

#[test]
fn fetch_downloads_min_dalles_files_converts_them_and_verifies() {
    let pt = min_dalle_files("fetch-src");
    let base = serve(&pt);
    let mut ckpt: Checkpoint = model_store::catalog()
        .into_iter()
        .find(|c| c.name == "dalle-mini")
        .unwrap();
    let remote = [
        dalle::ENCODER_PT,
        dalle::DECODER_PT,
        dalle::DETOKENIZER_PT,
        dalle::VOCAB_SRC,
        dalle::MERGES_SRC,
    ];
    for (f, r) in ckpt.files.iter_mut().zip(remote) {
        f.url = format!("{base}{r}");
    }
    // The catalog's conversion with the tiny architectures.
    ckpt.convert = Some(|_, dir| {
        let (config, detokenizer) = tiny_min_dalle();
        dalle::convert(dir, dir, &config, &detokenizer)
    });
    let root = temp_dir("fetch-root");
    let e = model_store::fetch(&ckpt, &root, &FetchOptions::default(), &mut |_| {}).unwrap_err();
    assert!(format!("{e:#}").contains("--accept-unpinned"), "{e:#}");
    let opts = FetchOptions {
        accept_unpinned: true,
        ..FetchOptions::default()
    };
    let dir = model_store::fetch(&ckpt, &root, &opts, &mut |_| {}).unwrap();
    assert_eq!(dir, root.join("dalle"));
    assert_converted(&dir, "decoder.safetensors", "decoder", str::to_string);

    model_store::clip::init_tiny(&root.join("clip")).unwrap();
    let lines = model_store::verify(&root).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("dalle/decoder.pt: sha256")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("dalle: 2 layers, embed 8")),
        "{lines:?}"
    );

    // A damaged download fails verification.
    std::fs::write(dir.join("detoker.pt"), b"damaged").unwrap();
    assert!(model_store::verify(&root).is_err());
    for d in [pt, root] {
        std::fs::remove_dir_all(d).ok();
    }
}
