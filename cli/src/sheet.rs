//! The contact sheet of a results folder: `index.html` (a grid of the images
//! with their prompts and scores, opening without a server) and
//! `contact-sheet.png` (the same grid as one picture, captions drawn with an
//! 8×8 bitmap font).
//!
//! Both are built from `manifest.jsonl`, one [`Entry`] per kept image.

use anyhow::{Context, Result};
use image::{imageops, Rgb, RgbImage};
use kiln_protocol::{Engine, ParamsDto};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const MANIFEST: &str = "manifest.jsonl";
pub const INDEX: &str = "index.html";
pub const SHEET: &str = "contact-sheet.png";

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
pub const LINE_HEIGHT: u32 = 10;
pub const GLYPH: u32 = 8;
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

    /// Characters that fit on one caption line.
    pub fn line_chars(&self) -> usize {
        (self.thumb / GLYPH) as usize
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

/// Writes `index.html` and `contact-sheet.png` for `entries` into `dir`.
pub fn write(dir: &Path, entries: &[Entry], title: &str) -> Result<()> {
    write_atomic(&dir.join(INDEX), html(entries, title).as_bytes())?;
    let png = png(dir, entries)?;
    let mut bytes = Vec::new();
    png.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .context("encoding the contact sheet")?;
    write_atomic(&dir.join(SHEET), &bytes)
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

pub fn html(entries: &[Entry], title: &str) -> String {
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
        "<h1>{}</h1>\n<p>{} image{}</p>\n<div class=\"grid\">\n",
        escape(title),
        entries.len(),
        if entries.len() == 1 { "" } else { "s" }
    ));
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
        let mut lines = wrap(&e.prompt, layout.line_chars(), prompt_lines);
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
                lines = wrap(
                    &format!("unreadable: {err}"),
                    layout.line_chars(),
                    prompt_lines,
                );
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
            let m: String = m.chars().take(layout.line_chars()).collect();
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

/// Word-wraps `text` into at most `max_lines` lines of `width` characters;
/// what does not fit ends in `...`.
pub fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut truncated = false;
    for word in text.split_whitespace() {
        let mut word: String = word.to_string();
        loop {
            let cur_len = cur.chars().count();
            let word_len = word.chars().count();
            let need = if cur.is_empty() {
                word_len
            } else {
                cur_len + 1 + word_len
            };
            if need <= width {
                if !cur.is_empty() {
                    cur.push(' ');
                }
                cur.push_str(&word);
                break;
            }
            if cur.is_empty() {
                // A word longer than a line is split.
                let head: String = word.chars().take(width).collect();
                word = word.chars().skip(width).collect();
                lines.push(head);
            } else {
                lines.push(std::mem::take(&mut cur));
            }
            if lines.len() >= max_lines {
                truncated = true;
                break;
            }
        }
        if truncated {
            break;
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
            let keep = width.saturating_sub(3);
            *last = last.chars().take(keep).collect::<String>() + "...";
        }
    }
    lines
}

/// The 8×8 bitmap of `c` (Latin-1 covered; anything else is `?`).
fn glyph(c: char) -> [u8; 8] {
    use font8x8::legacy::{BASIC_LEGACY, LATIN_LEGACY};
    let code = c as u32;
    match code {
        0x20..=0x7E => BASIC_LEGACY[code as usize],
        0xA0..=0xFF => LATIN_LEGACY[(code - 0xA0) as usize],
        _ => BASIC_LEGACY[b'?' as usize],
    }
}

/// Draws `text` with its top-left corner at (`x`, `y`).
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, color: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let rows = glyph(c);
        let gx = x + i as u32 * GLYPH;
        for (ry, row) in rows.iter().enumerate() {
            for bit in 0..8 {
                if row & (1 << bit) != 0 {
                    let (px, py) = (gx + bit, y + ry as u32);
                    if px < img.width() && py < img.height() {
                        img.put_pixel(px, py, color);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_fits_and_truncates() {
        assert_eq!(wrap("a red fox in snow", 9, 3), ["a red fox", "in snow"]);
        let w = wrap("one two three four five six", 7, 2);
        assert_eq!(w, ["one two", "thre..."]);
        assert_eq!(wrap("abcdefghij", 4, 3), ["abcd", "efgh", "ij"]);
        assert!(wrap("", 4, 3).is_empty());
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
        let mut img = RgbImage::from_pixel(16, 8, Rgb([0, 0, 0]));
        draw_text(&mut img, 0, 0, "A", Rgb([255, 0, 0]));
        let lit = img.pixels().filter(|p| **p == Rgb([255, 0, 0])).count();
        assert!(lit > 10, "an A lights some pixels ({lit})");
        assert!(img
            .enumerate_pixels()
            .all(|(x, _, p)| x < 8 || *p == Rgb([0, 0, 0])));
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
        let h = html(&[e], "t");
        assert!(h.contains("src=\"a%20b%26c.png\""), "{h}");
        assert!(!h.contains("<script>"));
        assert!(h.contains("&lt;script&gt;x&lt;/script&gt; &amp; &quot;q&quot;"));
        assert!(h.contains("score 0.250"));
    }
}
