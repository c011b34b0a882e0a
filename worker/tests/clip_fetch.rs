//! `models fetch` and `models verify` against a local HTTP server (port 0)
//! serving a tiny CLIP: progress, resume after a dropped connection or from
//! an earlier partial file, SHA-256 verification.

use kiln_worker::model_store::{self, Checkpoint, Download, FetchOptions, Progress};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("kiln-fetch-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Serves `body` at any path. With `drop_first`, the first full response is
/// cut after half the body. Records each request's Range header ("" if none).
struct Server {
    url: String,
    ranges: Arc<Mutex<Vec<String>>>,
}

fn serve(body: Vec<u8>, drop_first: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/clip/model.safetensors",
        listener.local_addr().unwrap()
    );
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        let mut dropped = !drop_first;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
                    range = v.trim().to_string();
                }
            }
            seen.lock().unwrap().push(range.clone());
            let start: usize = range
                .strip_prefix("bytes=")
                .and_then(|r| r.trim_end_matches('-').parse().ok())
                .unwrap_or(0);
            let head = if start >= body.len() && start > 0 {
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                continue;
            } else if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len() - 1,
                    body.len(),
                    body.len() - start
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            };
            let _ = stream.write_all(head.as_bytes());
            let rest = &body[start..];
            if !dropped && start == 0 {
                dropped = true;
                let _ = stream.write_all(&rest[..rest.len() / 2]);
                let _ = stream.flush();
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let _ = stream.write_all(rest);
            let _ = stream.flush();
        }
    });
    Server { url, ranges }
}

/// A tiny CLIP's weights, their SHA-256 and its config.json.
fn tiny_model() -> (Vec<u8>, String, String) {
    let dir = temp_dir("src");
    model_store::clip::init_tiny(&dir).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let sum = model_store::sha256_file(&dir.join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (bytes, sum, config)
}

fn checkpoint(url: &str, sha256: Option<String>, config: &str) -> Checkpoint {
    Checkpoint {
        name: "tiny-clip",
        engine_dir: "clip",
        files: vec![Download {
            url: url.to_string(),
            file: "model.safetensors".into(),
            sha256,
        }],
        config_json: Some(config.to_string()),
        convert: None,
    }
}

#[test]
fn fetch_resumes_after_a_dropped_connection_and_verifies() {
    let (body, sum, config) = tiny_model();
    let server = serve(body.clone(), true);
    let root = temp_dir("resume");
    let ckpt = checkpoint(&server.url, Some(sum.clone()), &config);
    let mut seen: Vec<Progress> = Vec::new();
    let dir = model_store::fetch(&ckpt, &root, &FetchOptions::default(), &mut |p| {
        seen.push(p.clone())
    })
    .unwrap();

    assert_eq!(dir, root.join("clip"));
    assert_eq!(std::fs::read(dir.join("model.safetensors")).unwrap(), body);
    assert!(!dir.join("model.safetensors.part").exists());
    let ranges = server.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[0], "");
    let resumed_at: usize = ranges[1]
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(resumed_at > 0 && resumed_at < body.len(), "{ranges:?}");

    // Progress: increasing byte counts, the total known, a resumed attempt, a final report.
    assert!(seen.len() >= 2);
    assert!(seen.iter().any(|p| p.resumed_from as usize == resumed_at));
    let last = seen.last().unwrap();
    assert!(
        last.done && last.bytes as usize == body.len() && last.total == Some(body.len() as u64)
    );
    assert!(last.line().contains("100%"), "{}", last.line());
    let resumed: Vec<u64> = seen
        .iter()
        .filter(|p| p.resumed_from > 0)
        .map(|p| p.bytes)
        .collect();
    assert!(
        resumed.len() >= 2,
        "the resumed attempt reports its chunks and its end: {resumed:?}"
    );
    assert!(resumed.windows(2).all(|w| w[0] <= w[1]), "{resumed:?}");

    // verify: the recorded sum matches and the model loads.
    let lines = model_store::verify(&root).unwrap();
    assert!(
        lines.iter().any(|l| l.contains(&sum) && l.ends_with("ok")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("clip:")), "{lines:?}");

    // A corrupted file fails verification.
    let mut bad = body.clone();
    let n = bad.len() - 1;
    bad[n] ^= 0xff;
    std::fs::write(dir.join("model.safetensors"), &bad).unwrap();
    let err = model_store::verify(&root).unwrap_err();
    assert!(format!("{err:#}").contains("SHA-256"), "{err:#}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn fetch_continues_a_partial_file_from_an_earlier_run() {
    let (body, sum, config) = tiny_model();
    let server = serve(body.clone(), false);
    let root = temp_dir("partial");
    std::fs::create_dir_all(root.join("clip")).unwrap();
    std::fs::write(root.join("clip/model.safetensors.part"), &body[..1000]).unwrap();
    let ckpt = checkpoint(&server.url, Some(sum), &config);
    model_store::fetch(&ckpt, &root, &FetchOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(
        server.ranges.lock().unwrap().clone(),
        vec!["bytes=1000-".to_string()]
    );
    assert_eq!(
        std::fs::read(root.join("clip/model.safetensors")).unwrap(),
        body
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_wrong_checksum_is_refused_and_nothing_is_installed() {
    let (body, _sum, config) = tiny_model();
    let server = serve(body, false);
    let root = temp_dir("wrong");
    let ckpt = checkpoint(&server.url, Some("0".repeat(64)), &config);
    let err = model_store::fetch(&ckpt, &root, &FetchOptions::default(), &mut |_| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("SHA-256 mismatch") && msg.contains(&"0".repeat(64)),
        "{msg}"
    );
    assert!(!root.join("clip/model.safetensors").exists());
    assert!(!root.join("clip/model.safetensors.part").exists());
    assert!(!root.join("clip/config.json").exists());
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn unpinned_downloads_need_consent() {
    let (body, sum, config) = tiny_model();
    let server = serve(body, false);
    let root = temp_dir("unpinned");
    let ckpt = checkpoint(&server.url, None, &config);
    let err = model_store::fetch(&ckpt, &root, &FetchOptions::default(), &mut |_| {}).unwrap_err();
    assert!(format!("{err:#}").contains("--sha256"), "{err:#}");
    assert!(
        server.ranges.lock().unwrap().is_empty(),
        "nothing was requested"
    );
    let opts = FetchOptions {
        accept_unpinned: true,
        ..FetchOptions::default()
    };
    model_store::fetch(&ckpt, &root, &opts, &mut |_| {}).unwrap();
    let lines = model_store::verify(&root).unwrap();
    assert!(lines.iter().any(|l| l.contains(&sum)), "{lines:?}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn the_catalog_names_published_clip_checkpoints() {
    let all = model_store::catalog();
    let b32 = all
        .iter()
        .find(|c| c.name == "clip-vit-base-patch32")
        .expect("ViT-B/32");
    assert_eq!(
        b32.files[0].url,
        "https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/model.safetensors"
    );
    let openai = all
        .iter()
        .find(|c| c.name == "openai-vit-b-32")
        .expect("OpenAI ViT-B/32");
    // OpenAI publishes the SHA-256 as the URL's directory.
    let f = &openai.files[0];
    assert_eq!(f.url.rsplit('/').nth(1), f.sha256.as_deref());
    assert!(openai.convert.is_some());
    for c in &all {
        if let Some(json) = &c.config_json {
            let cfg = kiln_worker::models::clip::ClipConfig::from_json(json);
            assert!(cfg.is_ok(), "{}: {:?}", c.name, cfg.err());
        }
        assert!(
            c.config_json.is_some() || c.convert.is_some(),
            "{} gives no config",
            c.name
        );
        for f in &c.files {
            if let Some(s) = &f.sha256 {
                assert!(
                    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{s}"
                );
            }
        }
    }
}

#[test]
fn an_unreachable_server_fails_with_the_url() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/model.safetensors");
    let root = temp_dir("down");
    let ckpt = checkpoint(&url, Some("a".repeat(64)), "{}");
    let opts = FetchOptions {
        retry: FetchOptions::default().retry.tries(2),
        ..FetchOptions::default()
    };
    let err = model_store::fetch(&ckpt, &root, &opts, &mut |_| {}).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&url) && msg.contains("2 attempts"), "{msg}");
    assert!(!root.join("clip/model.safetensors").exists());
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn fetch_converts_an_openai_archive_after_verifying_it() {
    let pt = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clip/openai_tiny/model.pt");
    let body = std::fs::read(&pt).unwrap();
    let sum = model_store::sha256_file(&pt).unwrap();
    let server = serve(body, true);
    let root = temp_dir("openai");
    let mut ckpt = model_store::catalog()
        .into_iter()
        .find(|c| c.name == "openai-vit-b-32")
        .unwrap();
    ckpt.files[0].url = server.url.clone();
    ckpt.files[0].sha256 = Some(sum.clone());
    let dir = model_store::fetch(&ckpt, &root, &FetchOptions::default(), &mut |_| {}).unwrap();
    assert!(dir.join("ViT-B-32.pt").is_file());
    assert!(dir.join("model.safetensors").is_file() && dir.join("config.json").is_file());
    let lines = model_store::verify(&root).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ViT-B-32.pt") && l.contains(&sum)),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("clip: 32 px images, patch 8")),
        "{lines:?}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// Each request's `(Range, If-Range)`, as [`serve_versions`] saw them.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// How the first response of [`serve_versions`] ends.
#[derive(Clone, Copy, PartialEq)]
enum First {
    /// Cut after half the body.
    Cut,
    /// Half the body, then nothing for 5 s on an open connection.
    Stall,
}

/// Serves request `n` with version `min(n, last)` of the file, each with its
/// ETag, honouring `Range` and `If-Range` (a stale validator gets the whole
/// file, 200). Records each request's `(Range, If-Range)`.
fn serve_versions(versions: Vec<(Vec<u8>, &'static str)>, first: First) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/clip/model.safetensors",
        listener.local_addr().unwrap()
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut range, mut if_range) = (String::new(), String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("range:") {
                    range = v.trim().to_string();
                } else if lower.starts_with("if-range:") {
                    if_range = line["if-range:".len()..].trim().to_string();
                }
            }
            log.lock().unwrap().push((range.clone(), if_range.clone()));
            let (body, etag) = &versions[n.min(versions.len() - 1)];
            let start: usize = range
                .strip_prefix("bytes=")
                .and_then(|r| r.trim_end_matches('-').parse().ok())
                .unwrap_or(0);
            let partial = start > 0 && (if_range.is_empty() || if_range == *etag);
            let (head, rest) = if partial {
                let head = format!(
                    "HTTP/1.1 206 Partial Content\r\nETag: {etag}\r\nContent-Range: bytes {start}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len() - 1,
                    body.len(),
                    body.len() - start
                );
                (head, &body[start..])
            } else {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                (head, &body[..])
            };
            let _ = stream.write_all(head.as_bytes());
            if n == 0 {
                let _ = stream.write_all(&rest[..rest.len() / 2]);
                let _ = stream.flush();
                if first == First::Stall {
                    // Held open, silent, while the next requests are served.
                    std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                    });
                    continue;
                }
                let _ = stream.shutdown(std::net::Shutdown::Both);
                continue;
            }
            let _ = stream.write_all(rest);
            let _ = stream.flush();
        }
    });
    (url, seen)
}

#[test]
fn a_file_changed_upstream_is_fetched_whole_not_spliced_onto_the_old_part() {
    let (old, _, config) = tiny_model();
    let mut new = old.clone();
    // The same length, other bytes: only the validator tells them apart.
    let at = new.len() - 10;
    new[at..].iter_mut().for_each(|b| *b ^= 0xff);
    let sum = {
        let dir = temp_dir("sum");
        std::fs::write(dir.join("f"), &new).unwrap();
        let s = model_store::sha256_file(&dir.join("f")).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        s
    };
    let (url, seen) = serve_versions(vec![(old, "\"v1\""), (new.clone(), "\"v2\"")], First::Cut);
    let root = temp_dir("changed");
    let ckpt = checkpoint(&url, Some(sum), &config);
    model_store::fetch(&ckpt, &root, &FetchOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(
        std::fs::read(root.join("clip/model.safetensors")).unwrap(),
        new
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].0.starts_with("bytes="), "resumed: {seen:?}");
    assert_eq!(
        seen[1].1, "\"v1\"",
        "with the first response's ETag: {seen:?}"
    );
    assert!(!root.join("clip/model.safetensors.part.validator").exists());
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_stalled_connection_is_dropped_after_the_read_timeout_and_resumed() {
    let (body, sum, config) = tiny_model();
    let (url, seen) = serve_versions(vec![(body.clone(), "\"v1\"")], First::Stall);
    let root = temp_dir("stall");
    let ckpt = checkpoint(&url, Some(sum), &config);
    let opts = FetchOptions {
        read_timeout: std::time::Duration::from_millis(300),
        retry: kiln_protocol::backoff::Backoff::new(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_secs(30),
        )
        .tries(6),
        ..FetchOptions::default()
    };
    let started = std::time::Instant::now();
    model_store::fetch(&ckpt, &root, &opts, &mut |_| {}).unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "did not wait out the stall"
    );
    assert_eq!(
        std::fs::read(root.join("clip/model.safetensors")).unwrap(),
        body
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (String::new(), String::new()),
            (format!("bytes={}-", body.len() / 2), "\"v1\"".to_string())
        ]
    );
    std::fs::remove_dir_all(&root).ok();
}
