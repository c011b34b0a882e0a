//! OpenAI's CLIP tokenizer (`clip/simple_tokenizer.py`): byte-level BPE
//! over the bundled `bpe_simple_vocab_16e6.txt.gz`, 77-token contexts with
//! start and end tokens, truncated like `clip.tokenize(..., truncate=True)`.

use super::clean::clean;
use regex::Regex;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock};

/// The merges file shipped with OpenAI's CLIP (and PyPI's `clip-anytorch`).
const BPE_GZ: &[u8] = include_bytes!("vocab/bpe_simple_vocab_16e6.txt.gz");

/// CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;
/// `<|startoftext|>`.
pub const SOT: i64 = 49406;
/// `<|endoftext|>`.
pub const EOT: i64 = 49407;

struct Vocab {
    encoder: HashMap<String, i64>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: [char; 256],
    pattern: Regex,
}

fn vocab() -> &'static Arc<Vocab> {
    static VOCAB: OnceLock<Arc<Vocab>> = OnceLock::new();
    VOCAB.get_or_init(|| Arc::new(Vocab::load()))
}

/// `bytes_to_unicode`: printable bytes map to themselves, the rest to 256+n.
fn bytes_to_unicode() -> [char; 256] {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut n = 0;
    for b in 0..256u32 {
        table[b as usize] = if printable.contains(&b) {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(256 + n - 1).expect("valid code point")
        };
    }
    table
}

/// The order `bytes_to_unicode().values()` yields: printable bytes first.
fn byte_vocab_order(table: &[char; 256]) -> Vec<char> {
    let mut printable: Vec<usize> = (b'!' as usize..=b'~' as usize).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let rest: Vec<usize> = (0..256).filter(|b| !printable.contains(b)).collect();
    printable
        .into_iter()
        .chain(rest)
        .map(|b| table[b])
        .collect()
}

impl Vocab {
    fn load() -> Vocab {
        let mut text = String::new();
        flate2::read::GzDecoder::new(BPE_GZ)
            .read_to_string(&mut text)
            .expect("the bundled BPE vocabulary is valid gzip and UTF-8");
        let lines: Vec<&str> = text.split('\n').collect();
        // simple_tokenizer.py: merges[1 : 49152 - 256 - 2 + 1]
        let merges: Vec<(String, String)> = lines[1..49152 - 256 - 2 + 1]
            .iter()
            .map(|l| {
                let (a, b) = l.split_once(' ').expect("a merge is two symbols");
                (a.to_string(), b.to_string())
            })
            .collect();
        let byte_encoder = bytes_to_unicode();
        let bytes = byte_vocab_order(&byte_encoder);
        let mut words: Vec<String> = bytes.iter().map(|c| c.to_string()).collect();
        words.extend(bytes.iter().map(|c| format!("{c}</w>")));
        words.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        words.push("<|startoftext|>".into());
        words.push("<|endoftext|>".into());
        let encoder = words
            .into_iter()
            .enumerate()
            .map(|(i, w)| (w, i as i64))
            .collect();
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i))
            .collect();
        let pattern = Regex::new(
            r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .expect("valid regex");
        Vocab {
            encoder,
            ranks,
            byte_encoder,
            pattern,
        }
    }

    /// BPE of one pre-token (already byte-encoded), as ids.
    fn bpe(&self, token: &str, out: &mut Vec<i64>) {
        if token == "<|startoftext|>" || token == "<|endoftext|>" {
            out.push(self.encoder[token]);
            return;
        }
        let chars: Vec<char> = token.chars().collect();
        let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|p| self.ranks.get(&(p[0].clone(), p[1].clone())))
                .min()
                .copied();
            let Some(rank) = best else { break };
            let pair = word
                .windows(2)
                .find(|p| self.ranks.get(&(p[0].clone(), p[1].clone())) == Some(&rank))
                .map(|p| (p[0].clone(), p[1].clone()))
                .expect("the best pair occurs");
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == pair.0 && word[i + 1] == pair.1 {
                    merged.push(format!("{}{}", pair.0, pair.1));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
        }
        for piece in &word {
            out.push(
                *self
                    .encoder
                    .get(piece)
                    .expect("every BPE piece is in the vocabulary"),
            );
        }
    }
}

/// OpenAI's BPE tokenizer for CLIP. Cheap to clone; the vocabulary is
/// decoded once per process and pre-token results are cached.
#[derive(Clone)]
pub struct Tokenizer {
    vocab: Arc<Vocab>,
    cache: Arc<Mutex<HashMap<String, Vec<i64>>>>,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab.encoder.len())
            .finish()
    }
}

impl Tokenizer {
    pub fn new() -> Self {
        Tokenizer {
            vocab: vocab().clone(),
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The number of ids (49408).
    pub fn vocab_size(&self) -> usize {
        self.vocab.encoder.len()
    }

    /// BPE ids of `text` without start/end tokens (`SimpleTokenizer.encode`).
    pub fn encode_raw(&self, text: &str) -> Vec<i64> {
        let text = clean(text).to_lowercase();
        let mut ids = Vec::new();
        for m in self.vocab.pattern.find_iter(&text) {
            let token: String = m
                .as_str()
                .bytes()
                .map(|b| self.vocab.byte_encoder[b as usize])
                .collect();
            if let Some(hit) = self.cache.lock().expect("cache lock").get(&token) {
                ids.extend_from_slice(hit);
                continue;
            }
            let mut piece = Vec::new();
            self.vocab.bpe(&token, &mut piece);
            ids.extend_from_slice(&piece);
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(token, piece);
        }
        ids
    }

    /// 77 ids: SOT, the text's ids, EOT, zero padding; too long a text is
    /// cut and ends in EOT (`clip.tokenize(text, truncate=True)`).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        self.encode_with_context(text, CONTEXT_LENGTH)
    }

    /// [`Tokenizer::encode`] for a context of `len` tokens (at least 2).
    pub fn encode_with_context(&self, text: &str, len: usize) -> Vec<i64> {
        assert!(len >= 2, "a context holds at least SOT and EOT");
        let mut ids = Vec::with_capacity(len);
        ids.push(SOT);
        ids.extend(self.encode_raw(text));
        ids.push(EOT);
        if ids.len() > len {
            ids.truncate(len);
            ids[len - 1] = EOT;
        }
        ids.resize(len, 0);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_has_openai_layout() {
        let t = Tokenizer::new();
        assert_eq!(t.vocab_size(), 49408);
        assert_eq!(t.vocab.encoder["<|startoftext|>"], SOT);
        assert_eq!(t.vocab.encoder["<|endoftext|>"], EOT);
        assert_eq!(t.vocab.encoder["!"], 0);
    }

    #[test]
    fn encodes_and_pads() {
        let t = Tokenizer::new();
        let ids = t.encode("hello world!");
        assert_eq!(&ids[..5], &[SOT, 3306, 1002, 256, EOT]);
        assert!(ids[5..].iter().all(|&i| i == 0));
        assert_eq!(ids.len(), 77);
    }

    #[test]
    fn long_texts_are_truncated_with_eot() {
        let t = Tokenizer::new();
        let ids = t.encode(&"cat ".repeat(200));
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[76], EOT);
        assert!(ids[1..76].iter().all(|&i| i != 0 && i != EOT));
        let short = t.encode_with_context("a cat", 3);
        assert_eq!(short, vec![SOT, t.encode_raw("a")[0], EOT]);
    }
}
