//! Text cleaning before BPE, as OpenAI's `simple_tokenizer.basic_clean`:
//! `ftfy.fix_text`, then `html.unescape` twice, then whitespace collapsing.
//!
//! `ftfy.fix_text` is reproduced step for step (HTML entities, C1 controls,
//! Latin ligatures, character width, curly quotes, line breaks, terminal
//! escapes, control characters, NFC) except one: its mojibake repair
//! (`fix_encoding`, which re-decodes text such as "cafÃ©" that was UTF-8 read
//! as Windows-1252). That heuristic only changes text that already went
//! through a wrong decoding; such text is tokenized as written.

use regex::Regex;
use std::collections::HashMap;
use std::sync::OnceLock;
use unicode_normalization::UnicodeNormalization;

/// `html.entities.html5` (name → text), written by `worker/reference/clip_fixtures.py`.
const HTML5_ENTITIES: &str = include_str!("vocab/html5_entities.tsv");

struct Tables {
    /// `html.entities.html5`: keys with and without the trailing `;`.
    html5: HashMap<String, String>,
    /// ftfy's `HTML_ENTITIES`: `&name;` forms, plus upper-cased Latin ones.
    ftfy_entities: HashMap<String, String>,
    charref: Regex,
    ftfy_entity: Regex,
    ansi: Regex,
    whitespace: Regex,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut html5 = HashMap::new();
        for line in HTML5_ENTITIES.lines().filter(|l| !l.is_empty()) {
            let (name, codes) = line.split_once('\t').expect("entity table: name<TAB>codes");
            let text: String = codes
                .split(' ')
                .map(|c| {
                    char::from_u32(u32::from_str_radix(c, 16).expect("hex code point"))
                        .expect("valid code point")
                })
                .collect();
            html5.insert(name.to_string(), text);
        }
        let mut t = Tables {
            html5,
            ftfy_entities: HashMap::new(),
            charref: Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0C <&#;]{1,32};?)")
                .expect("valid regex"),
            ftfy_entity: Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("valid regex"),
            ansi: Regex::new("\x1b\\[((?:\\d|;)*)([a-zA-Z])").expect("valid regex"),
            whitespace: Regex::new(r"\s+").expect("valid regex"),
        };
        let mut ftfy = HashMap::new();
        for (name, text) in &t.html5 {
            if !name.ends_with(';') {
                continue;
            }
            ftfy.insert(format!("&{name}"), text.clone());
            if *name == name.to_lowercase() {
                let upper = format!("&{}", name.to_uppercase());
                if html_unescape_with(&t, &upper) == upper {
                    ftfy.insert(upper, text.to_uppercase());
                }
            }
        }
        t.ftfy_entities = ftfy;
        t
    })
}

/// OpenAI's `basic_clean` followed by `whitespace_clean`.
pub fn clean(text: &str) -> String {
    let t = tables();
    let text = fix_text(text);
    let text = html_unescape_with(t, &html_unescape_with(t, &text));
    let text = py_strip(&text);
    let text = t.whitespace.replace_all(text, " ");
    py_strip(&text).to_string()
}

/// Python's `str.strip()`: trims characters for which `str.isspace()` holds.
fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

fn py_isspace(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// Python's `html.unescape`.
#[cfg(test)]
fn html_unescape(s: &str) -> String {
    html_unescape_with(tables(), s)
}

fn html_unescape_with(t: &Tables, s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    t.charref
        .replace_all(s, |caps: &regex::Captures<'_>| replace_charref(t, &caps[1]))
        .into_owned()
}

fn replace_charref(t: &Tables, s: &str) -> String {
    if let Some(num) = s.strip_prefix('#') {
        let value = if let Some(hex) = num.strip_prefix(['x', 'X']) {
            u64::from_str_radix(hex.trim_end_matches(';'), 16).unwrap_or(u64::MAX)
        } else {
            num.trim_end_matches(';').parse::<u64>().unwrap_or(u64::MAX)
        };
        if let Some(c) = invalid_charref(value) {
            return c.to_string();
        }
        if (0xD800..=0xDFFF).contains(&value) || value > 0x10FFFF {
            return "\u{FFFD}".into();
        }
        if is_invalid_codepoint(value) {
            return String::new();
        }
        return char::from_u32(value as u32)
            .map(String::from)
            .unwrap_or_else(|| "\u{FFFD}".into());
    }
    if let Some(text) = t.html5.get(s) {
        return text.clone();
    }
    // The longest prefix that names an entity, as the standard says.
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    for x in (2..chars.len()).rev() {
        let cut = chars[x].0;
        if let Some(text) = t.html5.get(&s[..cut]) {
            return format!("{text}{}", &s[cut..]);
        }
    }
    format!("&{s}")
}

/// `html._invalid_charrefs`: numeric references browsers read as Windows-1252.
fn invalid_charref(n: u64) -> Option<char> {
    Some(match n {
        0x00 => '\u{fffd}',
        0x0d => '\r',
        // The same table as ftfy's sloppy Windows-1252 (undefined bytes keep
        // their Latin-1 value).
        0x80..=0x9f => cp1252_c1(char::from_u32(n as u32)?),
        _ => return None,
    })
}

/// `html._invalid_codepoints`: references that decode to nothing.
fn is_invalid_codepoint(n: u64) -> bool {
    matches!(n, 0x1..=0x8 | 0xe..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef | 0xb)
        || (n & 0xFFFE == 0xFFFE && n <= 0x10FFFF)
}

/// `ftfy.fix_text` with the default configuration, less mojibake repair
/// (see the module documentation). Applied until nothing changes, as ftfy does.
pub fn fix_text(text: &str) -> String {
    let t = tables();
    // ftfy decodes entities only when the text does not look like HTML.
    let unescape = !text.contains('<');
    let mut text = text.to_string();
    loop {
        let orig = text.clone();
        if unescape {
            text = t
                .ftfy_entity
                .replace_all(&text, |caps: &regex::Captures<'_>| {
                    let m = &caps[0];
                    if let Some(v) = t.ftfy_entities.get(m) {
                        v.clone()
                    } else if m.starts_with("&#") {
                        let u = html_unescape_with(t, m);
                        if u.contains(';') {
                            m.to_string()
                        } else {
                            u
                        }
                    } else {
                        m.to_string()
                    }
                })
                .into_owned();
        }
        text = text.chars().flat_map(fix_char).collect();
        text = fix_line_breaks(&text);
        text = t.ansi.replace_all(&text, "").into_owned();
        text.retain(|c| !is_ftfy_control(c));
        text = text.nfc().collect();
        if text == orig {
            return text;
        }
    }
}

/// C1 controls, ligatures, width and curly quotes: per-character fixes, in
/// ftfy's order (each maps a character to text the next ones leave alone).
fn fix_char(c: char) -> Vec<char> {
    let c = match c {
        '\u{80}'..='\u{9f}' => cp1252_c1(c),
        c => c,
    };
    if let Some(s) = ligature(c) {
        return s.chars().collect();
    }
    if let Some(s) = width(c) {
        return s.chars().map(uncurl).collect();
    }
    vec![uncurl(c)]
}

/// ftfy's "sloppy-windows-1252" decoding of a C1 control character.
fn cp1252_c1(c: char) -> char {
    match c as u32 {
        0x80 => '\u{20ac}',
        0x82 => '\u{201a}',
        0x83 => '\u{0192}',
        0x84 => '\u{201e}',
        0x85 => '\u{2026}',
        0x86 => '\u{2020}',
        0x87 => '\u{2021}',
        0x88 => '\u{02c6}',
        0x89 => '\u{2030}',
        0x8a => '\u{0160}',
        0x8b => '\u{2039}',
        0x8c => '\u{0152}',
        0x8e => '\u{017d}',
        0x91 => '\u{2018}',
        0x92 => '\u{2019}',
        0x93 => '\u{201c}',
        0x94 => '\u{201d}',
        0x95 => '\u{2022}',
        0x96 => '\u{2013}',
        0x97 => '\u{2014}',
        0x98 => '\u{02dc}',
        0x99 => '\u{2122}',
        0x9a => '\u{0161}',
        0x9b => '\u{203a}',
        0x9c => '\u{0153}',
        0x9e => '\u{017e}',
        0x9f => '\u{0178}',
        // Undefined in Windows-1252: sloppy decoding keeps the byte's Latin-1 value.
        _ => c,
    }
}

/// ftfy's `LIGATURES`.
fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// ftfy's `WIDTH_MAP`: U+3000 and the half/fullwidth forms block, by NFKC.
fn width(c: char) -> Option<String> {
    if c == '\u{3000}' {
        return Some(" ".into());
    }
    if ('\u{FF01}'..'\u{FFF0}').contains(&c) {
        let alt: String = std::iter::once(c).nfkc().collect();
        let mut one = [0u8; 4];
        if alt.as_str() != &*c.encode_utf8(&mut one) {
            return Some(alt);
        }
    }
    None
}

fn uncurl(c: char) -> char {
    match c {
        '\u{02bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        c => c,
    }
}

fn fix_line_breaks(s: &str) -> String {
    if !s.contains(['\r', '\u{2028}', '\u{2029}', '\u{85}']) {
        return s.to_string();
    }
    s.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// ftfy's `CONTROL_CHARS`.
fn is_ftfy_control(c: char) -> bool {
    matches!(c as u32,
        0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_unescape_follows_python() {
        assert_eq!(html_unescape("&amp; &lt;b&gt; &#39;"), "& <b> '");
        assert_eq!(html_unescape("&copy 2024"), "© 2024");
        assert_eq!(html_unescape("&notit;"), "¬it;");
        assert_eq!(html_unescape("&#x263A; &#128; &#0;"), "☺ € \u{fffd}");
        assert_eq!(
            html_unescape("&#1; &#x110000; &bogus;"),
            " \u{fffd} &bogus;"
        );
    }

    #[test]
    fn ftfy_subset() {
        assert_eq!(fix_text("ﬁne “quotes” ＡＢＣ１"), "fine \"quotes\" ABC1");
        assert_eq!(fix_text("&NTILDE; &ntilde; &amp;amp;amp;"), "Ñ ñ &");
        assert_eq!(fix_text("<b>&amp;amp;</b>"), "<b>&amp;amp;</b>");
        assert_eq!(fix_text("e\u{301}\u{feff}x\u{1b}[31mred"), "éxred");
        assert_eq!(fix_text("a\r\nb\u{85}\u{2028}"), "a\nb…\n");
    }

    #[test]
    fn clean_collapses_whitespace() {
        assert_eq!(clean("  a \t b\u{3000}c  "), "a b c");
    }
}
