//! The `kiln` binary where no server is needed: bad prompt files refused
//! with their line numbers and nothing sent, exit codes, the config file of
//! `kiln login`, and the contact sheet.

use image::{Rgb, RgbImage};
use kiln_cli::sheet::{self, Entry, Layout};
use kiln_protocol::{Engine, ParamsDto};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env_remove("KILN_API_URL")
        .env_remove("KILN_TOKEN")
        .env("KILN_CONFIG", "/nonexistent/kiln-test/config.json");
    c
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-cli-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A listener that accepts nothing: connections the kernel queued for it
/// show that a request was attempted.
struct Sink(TcpListener);

impl Sink {
    fn new() -> Sink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Sink(l)
    }

    fn url(&self) -> String {
        format!("http://{}", self.0.local_addr().unwrap())
    }

    fn assert_untouched(&self, what: &str) {
        match self.0.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok((_, peer)) => panic!("{what}: a connection was made from {peer}"),
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn submit(dir: &Path, name: &str, bytes: &[u8], extra: &[&str], sink: &Sink) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    kiln()
        .arg("submit")
        .arg(&path)
        .args(["--engine", "test-pattern"])
        .args(extra)
        .env("KILN_API_URL", sink.url())
        .env("KILN_TOKEN", "not-used")
        .output()
        .unwrap()
}

#[test]
fn bad_prompt_files_are_refused_with_their_line_and_nothing_is_sent() {
    let long = format!("a fine prompt\n{}\n", "x".repeat(1001));
    // (file name, contents, line of the first problem, words in its message)
    let cases: Vec<(&str, Vec<u8>, usize, &str)> = vec![
        ("empty.txt", b"".to_vec(), 1, "no prompts"),
        (
            "only-comments.txt",
            b"# a\n\n# b\n".to_vec(),
            3,
            "no prompts",
        ),
        (
            "binary.txt",
            b"ok\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR".to_vec(),
            2,
            "not UTF-8",
        ),
        (
            "nul.txt",
            b"ok\nfine\nbad\x00line\n".to_vec(),
            3,
            "NUL byte",
        ),
        (
            "latin1.txt",
            b"a red fox\ncaf\xe9 at night\n".to_vec(),
            2,
            "not UTF-8",
        ),
        ("over-long.txt", long.into_bytes(), 2, "limit is 1000"),
        (
            "control-char.txt",
            b"fine\nbell\x07here\n".to_vec(),
            2,
            "control character",
        ),
        (
            "nan-weight.txt",
            b"ok\n\na fox:nan\n".to_vec(),
            3,
            "not a finite number",
        ),
        (
            "no-positive.txt",
            b"ok\nblurry:-1\n".to_vec(),
            2,
            "positive weight",
        ),
        (
            "empty-sub-prompt.txt",
            b"a | | b\n".to_vec(),
            1,
            "sub-prompt 2 is empty",
        ),
        (
            "no-prompt-column.csv",
            b"text,seed\na fox,1\n".to_vec(),
            1,
            "no \"prompt\" column",
        ),
        (
            "unknown-column.csv",
            b"prompt,sead\na fox,1\n".to_vec(),
            1,
            "unknown column \"sead\"",
        ),
        (
            "duplicate-column.csv",
            b"prompt,seed,seed\na,1,2\n".to_vec(),
            1,
            "appears twice",
        ),
        (
            "unterminated.csv",
            b"prompt,seed\nok,1\n\"never closed,2\nx,3\n".to_vec(),
            3,
            "never closed",
        ),
        (
            "bad-number.csv",
            b"prompt,seed\na,1\nb,12x\n".to_vec(),
            3,
            "\"12x\" is not a whole number",
        ),
        (
            "negative.csv",
            b"prompt,steps\na,-3\n".to_vec(),
            2,
            "\"-3\" is not a whole number",
        ),
        (
            "field-count.csv",
            b"prompt,seed\na,1\nb,1,2\n".to_vec(),
            3,
            "has 3 fields; the header has 2",
        ),
        (
            "size.csv",
            b"prompt,width\na,64\nb,100\n".to_vec(),
            3,
            "not a positive multiple of 16",
        ),
        (
            "keep.csv",
            b"prompt,candidates,keep\na,2,3\n".to_vec(),
            2,
            "more than the 2 candidates",
        ),
        (
            "seed-range.csv",
            b"prompt,seed\na,9007199254740992\n".to_vec(),
            2,
            "largest exact JSON integer",
        ),
        (
            "malformed.jsonl",
            b"{\"prompt\":\"a\"}\n{\"prompt\": \"b\"\n".to_vec(),
            2,
            "not a job object",
        ),
        (
            "unknown-field.jsonl",
            b"{\"prompt\":\"a\",\"sead\":1}\n".to_vec(),
            1,
            "unknown field `sead`",
        ),
        (
            "wrong-type.jsonl",
            b"{\"prompt\":\"a\"}\n{\"prompt\":\"b\",\"params\":{\"width\":\"64\"}}\n".to_vec(),
            2,
            "invalid type",
        ),
        (
            "foreign-param.jsonl",
            b"{\"prompt\":\"a\",\"params\":{\"top_k\":3}}\n".to_vec(),
            1,
            "not a parameter of engine test-pattern",
        ),
        (
            "not-an-object.jsonl",
            b"{\"prompt\":\"a\"}\n[\"b\"]\n".to_vec(),
            2,
            "not a job object",
        ),
    ];
    assert!(cases.len() >= 15);
    let dir = temp_dir();
    for (name, bytes, line, words) in cases {
        let sink = Sink::new();
        let out = submit(&dir, name, &bytes, &[], &sink);
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: exit code; stderr:\n{err}"
        );
        let expected = format!("{}:{line}: ", dir.join(name).display());
        let at_line: Vec<&str> = err
            .lines()
            .filter(|l| l.trim_start().starts_with(&expected))
            .collect();
        assert!(
            !at_line.is_empty(),
            "{name}: no problem reported at line {line}:\n{err}"
        );
        assert!(
            at_line.iter().any(|l| l.contains(words)),
            "{name}: expected {words:?} at line {line}:\n{err}"
        );
        assert!(err.contains("nothing was sent"), "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}: printed a batch id");
        sink.assert_untouched(name);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn every_bad_line_of_a_file_is_listed() {
    let dir = temp_dir();
    let sink = Sink::new();
    let body = b"prompt,seed,steps\nfine,1,2\n,2,3\nok,x,4\nok,5,0\nfine too,6,7\n";
    let out = submit(&dir, "many.csv", body, &[], &sink);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let path = dir.join("many.csv").display().to_string();
    for (line, words) in [
        (3, "prompt is empty"),
        (4, "column seed"),
        (5, "params/steps"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.trim_start().starts_with(&format!("{path}:{line}: "))
                    && l.contains(words)),
            "line {line} ({words}) missing:\n{err}"
        );
    }
    assert!(err.contains("3 problems"), "{err}");
    assert!(!err.contains(&format!("{path}:2:")) && !err.contains(&format!("{path}:6:")));
    sink.assert_untouched("many.csv");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_options_are_usage_errors_and_send_nothing() {
    let dir = temp_dir();
    for args in [
        &["--size", "100x64"][..],
        &["--size", "big"],
        &["--steps", "0"],
        &["--keep", "5"],
        &["--params", "{\"lr\": 0.1}"],
        &["--params", "{\"nope\": 1}"],
        &["--engine", "stable-diffusion"],
        &["--interval", "0"],
        &["--no-such-flag"],
    ] {
        let sink = Sink::new();
        let out = submit(&dir, "ok.txt", b"a red fox\n", args, &sink);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        sink.assert_untouched(&format!("{args:?}"));
    }
    let out = kiln()
        .args(["submit", "/nonexistent/prompts.txt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/nonexistent/prompts.txt"));
    let out = kiln().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn missing_settings_are_usage_errors() {
    let dir = temp_dir();
    std::fs::write(dir.join("p.txt"), "a red fox\n").unwrap();
    let out = kiln()
        .arg("submit")
        .arg(dir.join("p.txt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("KILN_API_URL"),
        "{}",
        text(&out.stderr)
    );
    let out = kiln()
        .args(["status", &uuid::Uuid::new_v4().to_string()])
        .env("KILN_API_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("KILN_TOKEN"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(dir).ok();
}

/// A loopback address where nothing listens.
fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[test]
fn an_unreachable_server_exits_3() {
    let dir = temp_dir();
    std::fs::write(dir.join("p.txt"), "a red fox\n").unwrap();
    let url = closed_port_url();
    let out = kiln()
        .arg("submit")
        .arg(dir.join("p.txt"))
        .args(["--engine", "test-pattern"])
        .env("KILN_API_URL", &url)
        .env("KILN_TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot reach"),
        "{}",
        text(&out.stderr)
    );
    let id = uuid::Uuid::new_v4().to_string();
    for cmd in [
        &["status", &id][..],
        &["jobs", &id],
        &["cancel", &id],
        &["retry", &id, "--failed"],
    ] {
        let out = kiln()
            .args(cmd)
            .env("KILN_API_URL", &url)
            .env("KILN_TOKEN", "t")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{cmd:?}: {}", text(&out.stderr));
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn login_writes_a_private_config_that_later_commands_use() {
    let dir = temp_dir();
    let config = dir.join("kiln").join("config.json");
    let url = closed_port_url();
    let out = kiln()
        .args([
            "login",
            "--no-verify",
            "--api-url",
            &url,
            "--token",
            "secret-token",
        ])
        .env("KILN_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(saved["api_url"], url.as_str());
    assert_eq!(saved["token"], "secret-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "config is private: {mode:o}");
    }
    // Without flags or environment, the saved address is used.
    let out = kiln()
        .args(["status", &uuid::Uuid::new_v4().to_string()])
        .env("KILN_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&url), "{}", text(&out.stderr));
    // A token read from standard input works too; verification against an
    // unreachable server fails with 3 and leaves the file as it was.
    let mut child = kiln()
        .args(["login", "--api-url", &url])
        .env("KILN_CONFIG", &config)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"other-token\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(saved["token"], "secret-token");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_contact_sheet_has_one_cell_per_image_and_the_page_references_every_file() {
    let dir = temp_dir();
    let colors = [
        [220, 40, 40],
        [40, 180, 60],
        [40, 70, 220],
        [230, 200, 30],
        [150, 40, 170],
        [20, 20, 20],
        [30, 190, 200],
    ];
    let mut entries = Vec::new();
    for (i, c) in colors.iter().enumerate() {
        // Sizes differ, and one name needs escaping in a URL.
        let (w, h) = if i % 2 == 0 { (64, 64) } else { (96, 48) };
        let file = if i == 3 {
            "a fox & an owl #3.png".to_string()
        } else {
            format!("img-{i}.png")
        };
        RgbImage::from_pixel(w, h, Rgb(*c))
            .save(dir.join(&file))
            .unwrap();
        entries.push(Entry {
            file,
            prompt: format!(
                "prompt number {i} with <html> & words that wrap over several caption lines"
            ),
            rank: 1,
            score: Some(0.1 * i as f32),
            seed: i as u64,
            width: w,
            height: h,
            engine: Engine::TestPattern,
            batch_id: "b".into(),
            job_id: format!("j{i}"),
            params: ParamsDto {
                seed: Some(i as u64),
                ..Default::default()
            },
        });
    }
    sheet::write_manifest(&dir, &entries).unwrap();
    let out = kiln().arg("sheet").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    let manifest = sheet::read_manifest(&dir).unwrap();
    assert_eq!(manifest.len(), colors.len());
    for e in &manifest {
        assert!(dir.join(&e.file).exists());
        let src = format!("src=\"{}\"", sheet::href(&e.file));
        assert!(html.contains(&src), "index.html lacks {src}");
    }
    assert_eq!(html.matches("<img ").count(), colors.len());
    assert!(html.contains("a%20fox%20%26%20an%20owl%20%233.png"));
    assert!(!html.contains("<html> &"), "prompts are escaped");

    let png = image::open(dir.join("contact-sheet-001.png"))
        .unwrap()
        .to_rgb8();
    assert!(
        !dir.join("contact-sheet-002.png").exists(),
        "seven images, one page"
    );
    assert!(html.contains("<a href=\"contact-sheet-001.png\">1</a>"));
    let layout = Layout::for_count(colors.len());
    assert_eq!(png.dimensions(), layout.size());
    assert!(layout.columns * layout.rows >= colors.len() as u32);
    for (i, c) in colors.iter().enumerate() {
        let (x, y) = layout.thumb_origin(i);
        let centre = *png.get_pixel(x + layout.thumb / 2, y + layout.thumb / 2);
        assert_eq!(centre, Rgb(*c), "cell {i} shows its image");
        // The caption under the image has dark text drawn in it.
        let caption_y = y + layout.thumb + sheet::PAD;
        let inked = (caption_y..caption_y + sheet::LINE_HEIGHT)
            .flat_map(|yy| (x..x + layout.thumb).map(move |xx| (xx, yy)))
            .filter(|&(xx, yy)| png.get_pixel(xx, yy).0[0] < 100)
            .count();
        assert!(inked > 20, "cell {i} has a caption ({inked} dark pixels)");
    }
    // Cells past the last image stay empty (seven images on a 3 × 3 grid
    // leave two).
    let cells = (layout.columns * layout.rows) as usize;
    assert!(
        cells > colors.len(),
        "the fixture leaves empty cells: {} images in {cells} cells",
        colors.len()
    );
    for i in colors.len()..cells {
        let (x, y) = layout.thumb_origin(i);
        assert_eq!(
            *png.get_pixel(x + layout.thumb / 2, y + layout.thumb / 2),
            Rgb([250, 250, 247]),
            "cell {i} is empty"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_sheet_without_a_manifest_is_a_usage_error() {
    let dir = temp_dir();
    let out = kiln().arg("sheet").arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("manifest.jsonl"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn help_shows_examples_and_exit_codes_and_completions_are_printed() {
    let out = kiln().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for part in [
        "Examples:",
        "-o json --wait | jq",
        "Exit codes:",
        "4  a local error",
        "--quiet leaves stderr to errors",
    ] {
        assert!(help.contains(part), "{part} missing from\n{help}");
    }
    for (shell, says) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef kiln"),
        ("fish", "complete -c kiln"),
    ] {
        let out = kiln().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(
            script.contains(says) && script.contains("workers"),
            "{shell}:\n{script}"
        );
    }
    let out = kiln().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn a_config_file_that_cannot_be_read_is_a_local_error() {
    // A folder where the file should be: reading it fails, exit 4.
    let dir = temp_dir();
    let out = kiln()
        .args(["batches"])
        .env("KILN_CONFIG", &dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&dir.display().to_string()),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

/// Runs `cmd` to its end; its exit code and its peak resident memory in
/// KiB, as the kernel reports it for that child (`wait4`, which also reaps
/// it: `Child::wait` would not give the usage).
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> (Option<i32>, i64) {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, waited for once, here.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, usage.ru_maxrss)
}

#[test]
#[cfg(target_os = "linux")] // ru_maxrss is in KiB on Linux
fn the_contact_sheet_comes_in_pages_and_its_memory_does_not_grow_with_the_count() {
    let peak = |n: usize| {
        let dir = temp_dir();
        RgbImage::from_pixel(64, 64, Rgb([40, 70, 220]))
            .save(dir.join("base.png"))
            .unwrap();
        let mut entries = Vec::new();
        for i in 0..n {
            let file = format!("img-{i}.png");
            std::fs::hard_link(dir.join("base.png"), dir.join(&file)).unwrap();
            entries.push(Entry {
                file,
                prompt: format!("a blue square number {i}, κύβος, квадрат"),
                rank: 0,
                score: None,
                seed: i as u64,
                width: 64,
                height: 64,
                engine: Engine::TestPattern,
                batch_id: "b".into(),
                job_id: format!("j{i}"),
                params: ParamsDto::default(),
            });
        }
        sheet::write_manifest(&dir, &entries).unwrap();
        // Pages left by larger earlier sheets go, and the one-file sheet of
        // earlier kilns.
        for stale in [
            sheet::sheet_name(n.div_ceil(sheet::PAGE)),
            sheet::sheet_name(998),
            "contact-sheet.png".to_string(),
        ] {
            std::fs::write(dir.join(stale), b"old").unwrap();
        }
        let (code, kib) = run_measured(kiln().arg("sheet").arg(&dir));
        assert_eq!(code, Some(0));
        let pages = n.div_ceil(sheet::PAGE);
        for p in 0..pages {
            let png = image::open(dir.join(sheet::sheet_name(p))).unwrap();
            let cells = (n - p * sheet::PAGE).min(sheet::PAGE);
            assert_eq!((png.width(), png.height()), Layout::for_count(cells).size());
        }
        for stale in [
            sheet::sheet_name(pages),
            sheet::sheet_name(998),
            "contact-sheet.png".into(),
        ] {
            assert!(!dir.join(&stale).exists(), "{stale} deleted");
        }
        let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
        assert_eq!(html.matches("<img ").count(), n);
        assert!(html.contains(&format!(">{pages}</a>")), "links every page");
        std::fs::remove_dir_all(dir).ok();
        kib
    };
    let (small, large) = (peak(150), peak(1500));
    eprintln!("peak RSS: {small} KiB for 150 images (2 pages), {large} KiB for 1500 (15 pages)");
    // Ten times the images: the pages are built one at a time, so only the
    // manifest and the page's HTML grow (about 1 KiB an image).
    assert!(large < small + 16 * 1024, "{small} KiB -> {large} KiB");
    assert!(large < 500 * 1024, "{large} KiB");
}

/// A server that gives no event stream: it answers a batch's reads with
/// `batches` in turn, `refusal` (an HTTP status: 404 from a server of the
/// time before event streams, 429 from one with too many open) to the
/// batch's event stream, 404 to anything else, and records the paths asked
/// for.
fn old_server(
    batches: Vec<serde_json::Value>,
    refusal: &'static str,
) -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let (seen, paths) = std::sync::mpsc::channel();
    let answers = std::sync::Arc::new(std::sync::Mutex::new((
        batches.into_iter(),
        serde_json::Value::Null,
    )));
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { return };
            let (answers, seen) = (answers.clone(), seen.clone());
            // One thread per connection: the CLI keeps its connections open.
            std::thread::spawn(move || serve(conn, &answers, &seen, refusal));
        }
    });
    fn serve(
        conn: std::net::TcpStream,
        answers: &std::sync::Mutex<(std::vec::IntoIter<serde_json::Value>, serde_json::Value)>,
        seen: &std::sync::mpsc::Sender<String>,
        refusal: &str,
    ) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut conn = conn;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            // The headers, up to the blank line.
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let _ = seen.send(path.clone());
            let problem = |status: &str| {
                let code = &status[..3];
                format!(
                    r#"{{"type":"urn:kiln:problem:x","title":"{status}","status":{code},"detail":"no"}}"#
                )
            };
            let (status, body) = if path.ends_with("/events") {
                (refusal, problem(refusal))
            } else if !path.starts_with("/v1/batches/") {
                ("404 Not Found", problem("404 Not Found"))
            } else {
                let mut a = answers.lock().unwrap();
                a.1 = a.0.next().unwrap_or(a.1.clone());
                ("200 OK", a.1.to_string())
            };
            let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
        }
    }
    (url, paths)
}

#[test]
fn watch_reads_the_batch_again_and_again_from_a_server_that_gives_no_event_stream() {
    for refusal in [
        "404 Not Found",
        "429 Too Many Requests",
        "503 Service Unavailable",
    ] {
        watch_polls(refusal);
    }
}

fn watch_polls(refusal: &'static str) {
    let id = uuid::Uuid::new_v4();
    let batch = |queued: u64, succeeded: u64| {
        serde_json::json!({
            "id": id, "name": null, "engine": "test-pattern", "priority": "normal",
            "state": if queued == 0 { "succeeded" } else { "running" }, "total": 2,
            "counts": {"queued": queued, "running": 0, "succeeded": succeeded, "failed": 0, "cancelled": 0},
            "progress": succeeded as f64 / 2.0, "metadata": {}, "retry_of": null,
            "created_at": "2026-11-30T12:00:00Z", "updated_at": "2026-11-30T12:00:05Z",
            "finished_at": if queued == 0 { serde_json::json!("2026-11-30T12:00:05Z") } else { serde_json::Value::Null },
        })
    };
    let (url, paths) = old_server(vec![batch(2, 0), batch(1, 1), batch(0, 2)], refusal);
    let out = kiln()
        .args([
            "watch",
            &id.to_string(),
            "--interval",
            "0.05",
            "-o",
            "json",
            "-q",
        ])
        .env("KILN_API_URL", &url)
        .env("KILN_TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{refusal}: {}",
        text(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let succeeded: Vec<u64> = lines
        .iter()
        .map(|b| b["counts"]["succeeded"].as_u64().unwrap())
        .collect();
    assert_eq!(succeeded, [0, 1, 2], "{}", text(&out.stdout));
    let asked: Vec<String> = paths.try_iter().collect();
    assert_eq!(asked[0], format!("/v1/batches/{id}/events"), "{asked:?}");
    assert!(
        asked[1..].iter().all(|p| *p == format!("/v1/batches/{id}")),
        "{asked:?}"
    );
}
