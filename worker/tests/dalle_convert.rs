//! Converting min-dalle's published state dicts (pickled `.pt` files, fp16
//! and fp32 storages) into Kiln's dalle directory without Python, and
//! `models fetch dalle-*` against a local HTTP server (port 0).
//!
//! The `.pt` files are written at test time by
//! `worker/reference/dalle_pt_fixture.py` from a synthetic Kiln model (a
//! DALL·E decoder embeds the 16384 image codes, too large for a committed
//! fixture) by the Python with torch and safetensors that
//! `deploy/local/torch-env` installs (`KILN_PYTHON`, else
//! `~/.cache/kiln/venv/bin/python`); without it the tests fail.

use kiln_worker::model_store::{self, dalle, Checkpoint, FetchOptions};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

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

fn python() -> PathBuf {
    let p = match std::env::var_os("KILN_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/kiln/venv/bin/python"),
    };
    let ok = Command::new(&p)
        .args(["-c", "import torch, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{} cannot import torch and safetensors: run deploy/local/torch-env or set KILN_PYTHON",
        p.display()
    );
    p
}

/// A synthetic tiny Kiln model in `kiln`, and min-dalle's files made from it
/// in `pt`.
fn fixture(tag: &str) -> (PathBuf, PathBuf) {
    let py = python();
    let kiln = temp_dir(&format!("{tag}-kiln"));
    let pt = temp_dir(&format!("{tag}-pt"));
    dalle::init_tiny(&kiln).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference/dalle_pt_fixture.py");
    let out = Command::new(py)
        .arg(script)
        .arg("--src")
        .arg(&kiln)
        .arg("--out")
        .arg(&pt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (kiln, pt)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// Every converted tensor is float32 and equals the original (rounded
/// through fp16 where min-dalle's file stores fp16).
fn assert_same(kiln: &Path, out: &Path, file: &str, half: bool) {
    let want = tensors(&kiln.join(file));
    let got = tensors(&out.join(file));
    let mut a: Vec<&String> = want.keys().collect();
    let mut b: Vec<&String> = got.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "{file}: the same keys");
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(g.kind(), Kind::Float, "{file}: {name} is f32");
        let w = if half {
            w.to_kind(Kind::Half).to_kind(Kind::Float)
        } else {
            w.shallow_clone()
        };
        assert!(g.equal(&w), "{file}: {name} differs");
    }
}

#[test]
fn min_dalle_state_dicts_convert_to_the_same_tensors_and_run() {
    let (kiln, pt) = fixture("ok");
    let out = temp_dir("ok-out");
    dalle::convert(
        &pt,
        &out,
        &dalle::tiny_config(),
        &dalle::tiny_detokenizer_config(),
    )
    .unwrap();
    assert_same(&kiln, &out, "encoder.safetensors", true);
    assert_same(&kiln, &out, "decoder.safetensors", false);
    assert_same(&kiln, &out, "detokenizer.safetensors", true);
    assert!(tensors(&out.join("detokenizer.safetensors")).contains_key("quantize.embedding.weight"));
    for f in ["vocab.json", "merges.txt"] {
        assert_eq!(
            std::fs::read(kiln.join(f)).unwrap(),
            std::fs::read(out.join(f)).unwrap()
        );
    }
    // One encoder pass, one decoder step and a detokenization.
    let line = dalle::verify(&out).unwrap();
    assert!(line.contains("2 layers, embed 32"), "{line}");

    // A state dict of another architecture is refused by name.
    let wrong = kiln_worker::models::dalle::DalleConfig {
        embed_count: 64,
        ..dalle::tiny_config()
    };
    let e = dalle::convert(
        &pt,
        &temp_dir("wrong"),
        &wrong,
        &dalle::tiny_detokenizer_config(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("encoder.pt"), "{e:#}");
    for d in [kiln, pt, out] {
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
    let (kiln, pt) = fixture("fetch");
    let base = serve(&pt);
    let mut ckpt: Checkpoint = model_store::catalog()
        .into_iter()
        .find(|c| c.name == "dalle-mini")
        .unwrap();
    let remote = [
        "encoder.pt",
        "decoder.pt",
        "detoker.pt",
        "vocab.src.json",
        "merges.src.txt",
    ];
    for (f, r) in ckpt.files.iter_mut().zip(remote) {
        f.url = format!("{base}{r}");
    }
    // The catalog's conversion with the tiny architecture.
    ckpt.convert = Some(|_, dir| {
        dalle::convert(
            dir,
            dir,
            &dalle::tiny_config(),
            &dalle::tiny_detokenizer_config(),
        )
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
    assert_same(&kiln, &dir, "decoder.safetensors", false);

    model_store::clip::init_tiny(&root.join("clip")).unwrap();
    let lines = model_store::verify(&root).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("dalle/decoder.pt: sha256")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("dalle: 2 layers")),
        "{lines:?}"
    );

    // A damaged download fails verification.
    std::fs::write(dir.join("detoker.pt"), b"damaged").unwrap();
    assert!(model_store::verify(&root).is_err());
    for d in [kiln, pt, root] {
        std::fs::remove_dir_all(d).ok();
    }
}
