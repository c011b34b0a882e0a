//! min-dalle's `TextTokenizer`: emoji replaced by their English names
//! (`emoji.demojize(text, delimiters=['', ''])`), lower case, non-ASCII
//! characters dropped, words split on single spaces, and each word
//! byte-pair encoded after a leading `Ġ` marker, merging the best-ranked
//! pair's first occurrence at a time. Ids come from BART's `vocab.json`;
//! unknown subwords become `<unk>`, and the ids are framed by `<s>` … `</s>`.

use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

/// The byte-pair tokenizer of a DALL·E model directory.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    vocab: HashMap<String, i64>,
    ranks: HashMap<(String, String), usize>,
    cls: i64,
    sep: i64,
    unk: i64,
}

impl TextTokenizer {
    /// Reads `vocab.json` and `merges.txt` as min-dalle does: the first line
    /// of the merges is a header and the text after the last newline is
    /// ignored.
    pub fn from_files(vocab: &Path, merges: &Path) -> anyhow::Result<TextTokenizer> {
        let v = std::fs::read_to_string(vocab)
            .with_context(|| format!("reading {}", vocab.display()))?;
        let m = std::fs::read_to_string(merges)
            .with_context(|| format!("reading {}", merges.display()))?;
        TextTokenizer::new(&v, &m).with_context(|| {
            format!(
                "loading the tokenizer {} and {}",
                vocab.display(),
                merges.display()
            )
        })
    }

    /// Builds a tokenizer from the texts of `vocab.json` and `merges.txt`.
    pub fn new(vocab_json: &str, merges_txt: &str) -> anyhow::Result<TextTokenizer> {
        let vocab: HashMap<String, i64> = serde_json::from_str(vocab_json)
            .context("vocab.json is not an object of integer ids")?;
        let lines: Vec<&str> = merges_txt.split('\n').collect();
        let mut ranks = HashMap::new();
        if lines.len() > 2 {
            for (rank, line) in lines[1..lines.len() - 1].iter().enumerate() {
                let parts: Vec<&str> = line.split_whitespace().collect();
                if let [a, b] = parts[..] {
                    // A repeated pair keeps its last rank, as a Python dict does.
                    ranks.insert((a.to_string(), b.to_string()), rank);
                }
            }
        }
        let id = |tok: &str| {
            vocab
                .get(tok)
                .copied()
                .with_context(|| format!("vocab.json has no {tok} token"))
        };
        Ok(TextTokenizer {
            cls: id("<s>")?,
            sep: id("</s>")?,
            unk: id("<unk>")?,
            vocab,
            ranks,
        })
    }

    pub fn vocab_len(&self) -> usize {
        self.vocab.len()
    }

    /// The largest id of the vocabulary.
    pub fn max_id(&self) -> i64 {
        self.vocab.values().copied().max().unwrap_or(0)
    }

    /// The ids of `text`, starting with `<s>` and ending with `</s>`.
    pub fn tokenize(&self, text: &str) -> Vec<i64> {
        let text: String = demojize(text)
            .to_lowercase()
            .chars()
            .filter(|c| c.is_ascii())
            .collect();
        let mut ids = vec![self.cls];
        for word in text.split(' ').filter(|w| !w.is_empty()) {
            for sub in self.byte_pair_encoding(word) {
                ids.push(self.vocab.get(&sub).copied().unwrap_or(self.unk));
            }
        }
        ids.push(self.sep);
        ids
    }

    /// min-dalle's `get_byte_pair_encoding`.
    pub fn byte_pair_encoding(&self, word: &str) -> Vec<String> {
        let mut subwords: Vec<String> = std::iter::once('Ġ')
            .chain(word.chars())
            .map(String::from)
            .collect();
        let mut key = (String::new(), String::new());
        while subwords.len() > 1 {
            let mut best: Option<(usize, usize)> = None; // (rank, index)
            for i in 0..subwords.len() - 1 {
                key.0.clone_from(&subwords[i]);
                key.1.clone_from(&subwords[i + 1]);
                if let Some(&rank) = self.ranks.get(&key) {
                    if best.is_none_or(|(r, _)| rank < r) {
                        best = Some((rank, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = subwords.remove(i + 1);
            subwords[i].push_str(&right);
        }
        subwords
    }
}

/// A byte-pair vocabulary of printable ASCII, in id order: the special
/// tokens, every character with and without the word marker `Ġ`, and the
/// merges that form the latter (the base of the tiny and toy models').
pub fn ascii_vocab() -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = ["<s>", "<pad>", "</s>", "<unk>", "Ġ"]
        .map(String::from)
        .to_vec();
    let chars: Vec<char> = (33u8..127).map(char::from).collect();
    tokens.extend(chars.iter().map(|c| c.to_string()));
    tokens.extend(chars.iter().map(|c| format!("Ġ{c}")));
    let merges = chars.iter().map(|c| format!("Ġ {c}")).collect();
    (tokens, merges)
}

/// The `vocab.json` (each token's id is its place in `tokens`) and
/// `merges.txt` texts of a vocabulary.
pub fn vocab_files(tokens: Vec<String>, merges: &[String]) -> (String, String) {
    let map: serde_json::Map<String, serde_json::Value> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, serde_json::Value::from(i)))
        .collect();
    let mut text = String::from("#version: 0.2\n");
    for m in merges {
        text.push_str(m);
        text.push('\n');
    }
    (serde_json::Value::Object(map).to_string(), text)
}

const ZWJ: char = '\u{200d}';

struct EmojiNode {
    children: HashMap<char, usize>,
    /// Index into [`EmojiTable::entries`] when a complete emoji ends here.
    entry: Option<usize>,
}

struct EmojiEntry {
    name: &'static str,
    component: bool,
}

struct EmojiTable {
    nodes: Vec<EmojiNode>,
    entries: Vec<EmojiEntry>,
}

impl EmojiTable {
    fn child(&self, node: usize, c: char) -> Option<usize> {
        self.nodes[node].children.get(&c).copied()
    }

    /// The entry of exactly `chars`, if it is an emoji.
    fn lookup(&self, chars: &[char]) -> Option<&EmojiEntry> {
        let mut node = 0;
        for &c in chars {
            node = self.child(node, c)?;
        }
        self.nodes[node].entry.map(|e| &self.entries[e])
    }
}

/// The `emoji` package's table (see `worker/reference/dalle_emoji_table.py`;
/// its first line is a header, and emoji such as `#️⃣` start with `#`).
fn emoji_table() -> &'static EmojiTable {
    static TABLE: OnceLock<EmojiTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = EmojiTable {
            nodes: vec![EmojiNode {
                children: HashMap::new(),
                entry: None,
            }],
            entries: Vec::new(),
        };
        for line in include_str!("emoji.tsv").lines().skip(1) {
            let mut fields = line.split('\t');
            let (Some(chars), Some(name)) = (fields.next(), fields.next()) else {
                continue;
            };
            let component = fields.next() == Some("c");
            let mut node = 0;
            for c in chars.chars() {
                node = match t.child(node, c) {
                    Some(n) => n,
                    None => {
                        t.nodes.push(EmojiNode {
                            children: HashMap::new(),
                            entry: None,
                        });
                        let n = t.nodes.len() - 1;
                        t.nodes[node].children.insert(c, n);
                        n
                    }
                };
            }
            t.nodes[node].entry = Some(t.entries.len());
            t.entries.push(EmojiEntry { name, component });
        }
        t
    })
}

struct Piece {
    start: usize,
    end: usize,
    emoji: Option<&'static str>,
}

/// `emoji.demojize(text, delimiters=('', ''))` of the `emoji` package
/// (its `tokenizer.tokenize` with `keep_zwj=True`, ported step by step).
pub fn demojize(text: &str) -> String {
    let table = emoji_table();
    let s: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let flush = |pieces: &mut Vec<Piece>, out: &mut String| {
        for p in pieces.drain(..) {
            match p.emoji {
                Some(name) => out.push_str(name),
                None => out.extend(&s[p.start..p.end]),
            }
        }
    };
    let mut result: Vec<Piece> = Vec::new();
    let mut ignore: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let mut consumed = false;
        if ignore.contains(&i) {
            i += 1;
            if c == ZWJ {
                result.push(Piece {
                    start: i - 1,
                    end: i,
                    emoji: None,
                });
            }
            continue;
        } else if let Some(mut node) = table.child(0, c) {
            let mut j = i + 1;
            while j < s.len() {
                let Some(next) = table.child(node, s[j]) else {
                    break;
                };
                if ignore.contains(&j) {
                    break;
                }
                node = next;
                j += 1;
            }
            if let Some(e) = table.nodes[node].entry {
                result.push(Piece {
                    start: i,
                    end: j,
                    emoji: Some(table.entries[e].name),
                });
                i = j - 1;
                consumed = true;
            }
        } else if c == ZWJ && i > 0 && table.child(0, s[i - 1]).is_some() {
            if let Some(last) = result.last().and_then(|p| table.lookup(&s[p.start..p.end])) {
                ignore.push(i);
                if last.component {
                    let back: usize = result.iter().rev().take(2).map(|p| p.end - p.start).sum();
                    i -= back;
                    if s[i] == ZWJ {
                        i += 1;
                        result.pop();
                    } else {
                        let keep = result.len().saturating_sub(2);
                        result.truncate(keep);
                    }
                } else {
                    let last = result.pop().expect("checked above");
                    i -= last.end - last.start;
                }
                continue;
            }
            flush(&mut result, &mut out);
        } else if !result.is_empty() {
            flush(&mut result, &mut out);
        }
        if !consumed && c != '\u{fe0e}' && c != '\u{fe0f}' {
            result.push(Piece {
                start: i,
                end: i + 1,
                emoji: None,
            });
        }
        i += 1;
    }
    flush(&mut result, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> TextTokenizer {
        let vocab =
            r#"{"<s>":0,"<pad>":1,"</s>":2,"<unk>":3,"Ġ":4,"a":5,"b":6,"Ġa":7,"ab":8,"Ġab":9}"#;
        TextTokenizer::new(vocab, "#version: 0.2\nĠ a\na b\nĠa b\n").unwrap()
    }

    #[test]
    fn merges_follow_rank_and_frame_the_ids() {
        let t = tiny();
        assert_eq!(t.byte_pair_encoding("ab"), ["Ġab"]);
        assert_eq!(t.byte_pair_encoding("bab"), ["Ġ", "b", "ab"]);
        assert_eq!(t.tokenize("AB  ab"), [0, 9, 9, 2]);
        assert_eq!(t.tokenize("c"), [0, 4, 3, 2], "unknown subwords are <unk>");
        assert_eq!(t.tokenize(""), [0, 2]);
    }

    #[test]
    fn the_last_merge_line_needs_its_newline() {
        let vocab = r#"{"<s>":0,"</s>":2,"<unk>":3,"Ġa":7}"#;
        let t = TextTokenizer::new(vocab, "#version: 0.2\nĠ a").unwrap();
        assert_eq!(
            t.tokenize("a"),
            [0, 3, 3, 2],
            "min-dalle drops the text after the last newline"
        );
    }

    #[test]
    fn missing_special_tokens_are_reported() {
        let e = TextTokenizer::new(r#"{"<s>":0}"#, "").unwrap_err();
        assert!(e.to_string().contains("</s>"), "{e}");
    }

    #[test]
    fn emoji_become_their_names() {
        assert_eq!(demojize("hi 👍🏽!"), "hi thumbs_up_medium_skin_tone!");
        assert_eq!(demojize("❤️ 🦊"), "red_heart fox");
        assert_eq!(demojize("#️⃣ #"), "keycap_# #");
        assert_eq!(demojize("👨\u{200d}👩\u{200d}👧"), "family_man_woman_girl");
        assert_eq!(demojize("plain"), "plain");
    }
}
