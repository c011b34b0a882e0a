//! The contact sheet of a results folder: `index.html` (a grid of the images
//! with their prompts and scores, opening without a server, linking the
//! sheet's pages) and `contact-sheet-001.png`, `-002.png`, ... (the same
//! grid as pictures of [`PAGE`] cells each, captions drawn with the bundled
//! DejaVu Sans through a real glyph rasteriser).
//!
//! Both are built from `manifest.jsonl`, one [`Entry`] per kept image. A
//! page is built, written and dropped before the next, and images are read
//! one at a time, so memory stays bounded by one page whatever the count.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use anyhow::{Context, Result};
use image::{imageops, Rgb, RgbImage};
use kiln_protocol::{Engine, ParamsDto};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::OnceLock;

pub const MANIFEST: &str = "manifest.jsonl";
pub const INDEX: &str = "index.html";
/// Cells per page of the PNG sheet.
pub const PAGE: usize = 100;

/// The file of page `page` (from 0) of the sheet: `contact-sheet-001.png`, ...
pub fn sheet_name(page: usize) -> String {
    format!("contact-sheet-{:03}.png", page + 1)
}

/// One kept image, as a line of `manifest.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The image file, relative to the folder.
    pub file: String,
    pub prompt: String,
    pub rank: u32,
    #[serde(default)]
    pub score: Option<f32>,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub engine: Engine,
    pub batch_id: String,
    pub job_id: String,
    /// The job's parameters as the server resolved them.
    #[serde(default)]
    pub params: ParamsDto,
}

/// The geometry of the PNG sheet: `columns` cells per row, each a
/// `thumb`×`thumb` image above `caption_lines` lines of text (the prompt,
/// then the score and rank, then the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub columns: u32,
    pub rows: u32,
    pub thumb: u32,
    pub caption_lines: u32,
}

pub const PAD: u32 = 8;
pub const LINE_HEIGHT: u32 = 15;
/// The captions' font size, in pixels.
pub const TEXT_PX: f32 = 12.0;
const BACKGROUND: Rgb<u8> = Rgb([250, 250, 247]);
const CELL: Rgb<u8> = Rgb([255, 255, 255]);
const TEXT: Rgb<u8> = Rgb([30, 30, 30]);
const MUTED: Rgb<u8> = Rgb([110, 110, 110]);

impl Layout {
    /// The layout for `n` images: up to 6 columns, as square as it gets.
    pub fn for_count(n: usize) -> Layout {
        let n = n.max(1) as u32;
        let columns = (1..=6).find(|c| c * c >= n).unwrap_or(6);
        Layout {
            columns,
            rows: n.div_ceil(columns),
            thumb: 192,
            caption_lines: 5,
        }
    }

    pub fn cell_width(&self) -> u32 {
        self.thumb + 2 * PAD
    }

    pub fn cell_height(&self) -> u32 {
        self.thumb + 3 * PAD + self.caption_lines * LINE_HEIGHT
    }

    pub fn size(&self) -> (u32, u32) {
        (
            self.columns * self.cell_width(),
            self.rows * self.cell_height(),
        )
    }

    /// The top-left corner of cell `i`'s image area.
    pub fn thumb_origin(&self, i: usize) -> (u32, u32) {
        let (col, row) = (i as u32 % self.columns, i as u32 / self.columns);
        (
            col * self.cell_width() + PAD,
            row * self.cell_height() + PAD,
        )
    }

    /// Whether `text` fits on one caption line.
    pub fn fits(&self, text: &str) -> bool {
        text_width(text) <= self.thumb as f32
    }
}

pub fn read_manifest(dir: &Path) -> Result<Vec<Entry>> {
    let path = dir.join(MANIFEST);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a manifest entry", path.display(), i + 1))
        })
        .collect()
}

pub fn write_manifest(dir: &Path, entries: &[Entry]) -> Result<()> {
    let mut out = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut out, e).context("encoding the manifest")?;
        out.push(b'\n');
    }
    write_atomic(&dir.join(MANIFEST), &out)
}

/// Writes the sheet's pages and `index.html` (last, so that it never links
/// a page not yet written) for `entries` into `dir`, and deletes pages an
/// earlier, larger sheet left (and the one-file `contact-sheet.png` of
/// earlier kilns); returns the pages' file names.
pub fn write(dir: &Path, entries: &[Entry], title: &str) -> Result<Vec<String>> {
    let pages: Vec<String> = (0..entries.len().div_ceil(PAGE).max(1))
        .map(sheet_name)
        .collect();
    let chunks = entries
        .chunks(PAGE)
        .chain(entries.is_empty().then_some(&[][..]));
    for (name, chunk) in pages.iter().zip(chunks) {
        let png = png(dir, chunk)?;
        let mut bytes = Vec::new();
        png.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .with_context(|| format!("encoding {name}"))?;
        drop(png);
        write_atomic(&dir.join(name), &bytes)?;
    }
    for stale in stale_pages(dir, pages.len())? {
        let path = dir.join(stale);
        std::fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;
    }
    write_atomic(&dir.join(INDEX), html(entries, title, &pages).as_bytes())?;
    Ok(pages)
}

/// Sheet files in `dir` that a sheet of `pages` pages does not have.
fn stale_pages(dir: &Path, pages: usize) -> Result<Vec<String>> {
    let mut stale = Vec::new();
    let listing = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in listing {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let page = name
            .strip_prefix("contact-sheet-")
            .and_then(|n| n.strip_suffix(".png"))
            .and_then(|n| n.parse::<usize>().ok());
        let legacy = name == "contact-sheet.png";
        if legacy || page.is_some_and(|p| p == 0 || p > pages) {
            stale.push(name);
        }
    }
    Ok(stale)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.part",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A file name as a relative URL: each path segment percent-encoded.
pub fn href(file: &str) -> String {
    let mut out = String::new();
    for b in file.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn score_text(score: Option<f32>) -> String {
    score.map_or_else(|| "-".to_string(), |s| format!("{s:.3}"))
}

pub fn html(entries: &[Entry], title: &str, pages: &[String]) -> String {
    let mut h = String::new();
    h.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str(&format!("<title>{}</title>\n", escape(title)));
    h.push_str(
        "<style>\n\
         body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafaf7;color:#1e1e1e}\n\
         .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1rem}\n\
         figure{margin:0;background:#fff;padding:.5rem;border-radius:6px;box-shadow:0 1px 3px #0002}\n\
         img{width:100%;height:auto;image-rendering:auto;display:block}\n\
         figcaption{font-size:.85rem;margin-top:.4rem;overflow-wrap:anywhere}\n\
         .meta{color:#666;font-size:.75rem}\n\
         </style>\n</head>\n<body>\n",
    );
    h.push_str(&format!(
        "<h1>{}</h1>\n<p>{} image{}</p>\n",
        escape(title),
        entries.len(),
        if entries.len() == 1 { "" } else { "s" }
    ));
    h.push_str("<p class=\"sheets\">contact sheet:");
    for (i, page) in pages.iter().enumerate() {
        h.push_str(&format!(
            " <a href=\"{}\">{}</a>",
            escape(&href(page)),
            i + 1
        ));
    }
    h.push_str("</p>\n<div class=\"grid\">\n");
    for e in entries {
        let src = escape(&href(&e.file));
        h.push_str(&format!(
            "<figure><a href=\"{src}\"><img src=\"{src}\" alt=\"{alt}\" width=\"{w}\" height=\"{hh}\" loading=\"lazy\"></a>\
             <figcaption>{prompt}<div class=\"meta\">score {score} · rank {rank} · seed {seed} · {engine}</div></figcaption></figure>\n",
            alt = escape(&e.prompt),
            w = e.width,
            hh = e.height,
            prompt = escape(&e.prompt),
            score = score_text(e.score),
            rank = e.rank,
            seed = e.seed,
            engine = e.engine,
        ));
    }
    h.push_str("</div>\n</body>\n</html>\n");
    h
}

/// The PNG sheet. An image that cannot be read gets a grey cell with the
/// reason in its caption, so one bad file does not lose the sheet.
pub fn png(dir: &Path, entries: &[Entry]) -> Result<RgbImage> {
    let layout = Layout::for_count(entries.len());
    let (w, h) = layout.size();
    let mut sheet = RgbImage::from_pixel(w, h, BACKGROUND);
    for (i, e) in entries.iter().enumerate() {
        let (x, y) = layout.thumb_origin(i);
        let cell_x = x - PAD;
        let cell_y = y - PAD;
        fill(
            &mut sheet,
            cell_x + PAD / 2,
            cell_y + PAD / 2,
            layout.cell_width() - PAD,
            layout.cell_height() - PAD,
            CELL,
        );
        let prompt_lines = layout.caption_lines as usize - 2;
        let fits = |t: &str| layout.fits(t);
        let mut lines = wrap(&e.prompt, prompt_lines, fits);
        match image::open(dir.join(&e.file)) {
            Ok(img) => {
                let thumb = img
                    .resize(layout.thumb, layout.thumb, imageops::FilterType::Triangle)
                    .to_rgb8();
                let ox = x + (layout.thumb - thumb.width()) / 2;
                let oy = y + (layout.thumb - thumb.height()) / 2;
                imageops::replace(&mut sheet, &thumb, ox as i64, oy as i64);
            }
            Err(err) => {
                fill(
                    &mut sheet,
                    x,
                    y,
                    layout.thumb,
                    layout.thumb,
                    Rgb([200, 200, 200]),
                );
                lines = wrap(&format!("unreadable: {err}"), prompt_lines, fits);
            }
        }
        let text_y = y + layout.thumb + PAD;
        for (j, line) in lines.iter().enumerate() {
            draw_text(&mut sheet, x, text_y + j as u32 * LINE_HEIGHT, line, TEXT);
        }
        let meta = [
            format!("score {}  rank {}", score_text(e.score), e.rank),
            format!("seed {}", e.seed),
        ];
        for (j, m) in meta.iter().enumerate() {
            let m = fit(m, fits);
            let row = layout.caption_lines - 2 + j as u32;
            draw_text(&mut sheet, x, text_y + row * LINE_HEIGHT, &m, MUTED);
        }
    }
    Ok(sheet)
}

fn fill(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, color: Rgb<u8>) {
    for yy in y..(y + h).min(img.height()) {
        for xx in x..(x + w).min(img.width()) {
            img.put_pixel(xx, yy, color);
        }
    }
}

/// Word-wraps `text` into at most `max_lines` lines that each `fit`; what
/// does not fit ends in `...`.
pub fn wrap(text: &str, max_lines: usize, fits: impl Fn(&str) -> bool) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut truncated = false;
    'words: for word in text.split_whitespace() {
        let mut word = word.to_string();
        loop {
            let joined = if cur.is_empty() {
                word.clone()
            } else {
                format!("{cur} {word}")
            };
            if fits(&joined) {
                cur = joined;
                break;
            }
            if cur.is_empty() {
                // A word longer than a line is split where it stops fitting.
                let mut head = String::new();
                for c in word.chars() {
                    head.push(c);
                    if !fits(&head) {
                        head.pop();
                        break;
                    }
                }
                if head.is_empty() {
                    head = word.chars().take(1).collect();
                }
                word = word[head.len()..].to_string();
                lines.push(head);
                if word.is_empty() {
                    if lines.len() >= max_lines {
                        truncated = true;
                        break 'words;
                    }
                    break;
                }
            } else {
                lines.push(std::mem::take(&mut cur));
            }
            if lines.len() >= max_lines {
                truncated = true;
                break 'words;
            }
        }
    }
    if !truncated && !cur.is_empty() {
        lines.push(cur);
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        truncated = true;
    }
    if truncated {
        if let Some(last) = lines.last_mut() {
            *last = ellipsize(last, &fits);
        }
    }
    lines
}

/// `text` as it is if it `fits`, else cut to fit with `...`.
fn fit(text: &str, fits: impl Fn(&str) -> bool) -> String {
    if fits(text) {
        text.to_string()
    } else {
        ellipsize(text, &fits)
    }
}

/// `text` cut until it fits with `...` after it, and the `...`.
fn ellipsize(text: &str, fits: &impl Fn(&str) -> bool) -> String {
    let mut cut = text.to_string();
    while !cut.is_empty() && !fits(&format!("{cut}...")) {
        cut.pop();
    }
    cut + "..."
}

/// The bundled font (DejaVu Sans; its licence is `cli/assets/`).
fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(include_bytes!("../assets/DejaVuSans.ttf"))
            .expect("the bundled font parses")
    })
}

/// Each glyph of `text` laid out on one line from `x` at [`TEXT_PX`]
/// (advances and kerning), and the caret after the last.
fn lay_out(text: &str, x: f32, baseline: f32) -> (Vec<ab_glyph::Glyph>, f32) {
    let scale = PxScale::from(TEXT_PX);
    let scaled = font().as_scaled(scale);
    let mut caret = x;
    let mut prev = None;
    let mut glyphs = Vec::with_capacity(text.len());
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            caret += scaled.kern(p, id);
        }
        glyphs.push(id.with_scale_and_position(scale, ab_glyph::point(caret, baseline)));
        caret += scaled.h_advance(id);
        prev = Some(id);
    }
    (glyphs, caret)
}

/// The width of `text` in pixels at [`TEXT_PX`].
pub fn text_width(text: &str) -> f32 {
    lay_out(text, 0.0, 0.0).1
}

/// Draws `text` with its top-left corner at (`x`, `y`), blending each
/// glyph's coverage into the image. A character the font lacks is drawn as
/// its empty box.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, color: Rgb<u8>) {
    let font = font();
    let baseline = y as f32 + font.as_scaled(PxScale::from(TEXT_PX)).ascent();
    for glyph in lay_out(text, x as f32, baseline).0 {
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let px = bounds.min.x as i64 + i64::from(gx);
            let py = bounds.min.y as i64 + i64::from(gy);
            if px < 0 || py < 0 || px >= i64::from(img.width()) || py >= i64::from(img.height()) {
                return;
            }
            let pixel = img.get_pixel_mut(px as u32, py as u32);
            let a = coverage.clamp(0.0, 1.0);
            for (channel, ink) in pixel.0.iter_mut().zip(color.0) {
                *channel = (f32::from(*channel) * (1.0 - a) + f32::from(ink) * a).round() as u8;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of at most `n` characters.
    fn chars(n: usize) -> impl Fn(&str) -> bool {
        move |t: &str| t.chars().count() <= n
    }

    #[test]
    fn wrapping_fits_and_truncates() {
        assert_eq!(
            wrap("a red fox in snow", 3, chars(9)),
            ["a red fox", "in snow"]
        );
        let w = wrap("one two three four five six", 2, chars(7));
        assert_eq!(w, ["one two", "thre..."]);
        assert_eq!(wrap("abcdefghij", 3, chars(4)), ["abcd", "efgh", "ij"]);
        assert!(wrap("", 3, chars(4)).is_empty());
        // Split by characters, not bytes; the last line ends in "...".
        assert_eq!(wrap("日本語のテキスト", 2, chars(3)), ["日本語", "..."]);
    }

    #[test]
    fn captions_are_measured_in_pixels() {
        let layout = Layout::for_count(1);
        assert!(
            text_width("iiii") < text_width("WWWW"),
            "a proportional font"
        );
        assert!(layout.fits("a red fox in snow"));
        let lines = wrap(&"wide ".repeat(40), 3, |t| layout.fits(t));
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| layout.fits(l)), "{lines:?}");
        assert!(lines[2].ends_with("..."));
    }

    #[test]
    fn layouts_are_close_to_square() {
        assert_eq!(
            (Layout::for_count(1).columns, Layout::for_count(1).rows),
            (1, 1)
        );
        assert_eq!(
            (Layout::for_count(5).columns, Layout::for_count(5).rows),
            (3, 2)
        );
        assert_eq!(
            (Layout::for_count(24).columns, Layout::for_count(24).rows),
            (5, 5)
        );
        assert_eq!(
            (Layout::for_count(100).columns, Layout::for_count(100).rows),
            (6, 17)
        );
    }

    #[test]
    fn text_is_drawn_in_the_given_color() {
        let mut img = RgbImage::from_pixel(24, LINE_HEIGHT, Rgb([0, 0, 0]));
        draw_text(&mut img, 0, 0, "A", Rgb([255, 0, 0]));
        let lit = img.pixels().filter(|p| p.0[0] > 0).count();
        assert!(lit > 10, "an A lights some pixels ({lit})");
        assert!(img.pixels().any(|p| p.0[0] > 200), "some fully");
        assert!(
            img.pixels().all(|p| p.0[1] == 0 && p.0[2] == 0),
            "in red only"
        );
        let width = text_width("A").ceil() as u32 + 1;
        assert!(img
            .enumerate_pixels()
            .all(|(x, _, p)| x < width || *p == Rgb([0, 0, 0])));
        // Beyond Latin-1: Greek and Cyrillic are drawn, each letter its own.
        let draw = |t: &str| {
            let mut img = RgbImage::from_pixel(80, LINE_HEIGHT, Rgb([255, 255, 255]));
            draw_text(&mut img, 0, 0, t, Rgb([0, 0, 0]));
            img
        };
        assert_ne!(draw("λόγος"), draw("ΛΌΓΟΣ"));
        assert_ne!(draw("слово"), draw("?????"));
        for c in "λόγοςслово€é".chars() {
            assert_ne!(font().glyph_id(c).0, 0, "{c} is in the font");
        }
        assert_eq!(font().glyph_id('日').0, 0, "CJK is not");
    }

    #[test]
    fn html_escapes_prompts_and_encodes_file_names() {
        let e = Entry {
            file: "a b&c.png".into(),
            prompt: "<script>x</script> & \"q\"".into(),
            rank: 1,
            score: Some(0.25),
            seed: 3,
            width: 64,
            height: 64,
            engine: Engine::Dalle,
            batch_id: "b".into(),
            job_id: "j".into(),
            params: ParamsDto::default(),
        };
        let h = html(&[e], "t", &[sheet_name(0)]);
        assert!(h.contains("src=\"a%20b%26c.png\""), "{h}");
        assert!(!h.contains("<script>"));
        assert!(h.contains("&lt;script&gt;x&lt;/script&gt; &amp; &quot;q&quot;"));
        assert!(h.contains("score 0.250"));
        assert!(h.contains("<a href=\"contact-sheet-001.png\">1</a>"), "{h}");
    }
}
