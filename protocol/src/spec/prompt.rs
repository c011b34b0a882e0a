//! Prompts: the text as submitted and its weighted parts (`"a red fox:1 | blurry:-0.5"`).

use serde::{Deserialize, Serialize};

/// One sub-prompt with its weight: `"blurry:-0.5"` is `{text: "blurry", weight: -0.5}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedPrompt {
    pub text: String,
    pub weight: f32,
}

/// A prompt: the text as submitted and its weighted parts.
///
/// Parts are separated by `|`; a part may end in `:weight`. A colon followed
/// by something that is not a number belongs to the text, so
/// `"portrait: oil on canvas"` is one part of weight 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prompt {
    text: String,
    parts: Vec<WeightedPrompt>,
}

impl Prompt {
    pub fn parse(raw: &str, max_chars: usize) -> Result<Prompt, String> {
        let text = raw.trim();
        if text.is_empty() {
            return Err("prompt is empty".into());
        }
        // Length and characters are those of the prompt as sent, white space
        // around it included, as the API's schema states them.
        let chars = raw.chars().count();
        if chars > max_chars {
            return Err(format!(
                "prompt is {chars} characters long; the limit is {max_chars}"
            ));
        }
        if let Some(c) = raw.chars().find(|c| c.is_control()) {
            return Err(format!(
                "prompt contains the control character U+{:04X}",
                c as u32
            ));
        }
        let mut parts = Vec::new();
        for (i, piece) in text.split('|').enumerate() {
            let piece = piece.trim();
            if piece.is_empty() {
                return Err(format!("sub-prompt {} is empty", i + 1));
            }
            let (body, weight) = split_weight(piece)
                .map_err(|e| format!("sub-prompt {} ({piece:?}): {e}", i + 1))?;
            if body.is_empty() {
                return Err(format!("sub-prompt {} has a weight but no text", i + 1));
            }
            parts.push(WeightedPrompt {
                text: body.to_string(),
                weight,
            });
        }
        if !parts.iter().any(|p| p.weight > 0.0) {
            return Err("at least one sub-prompt needs a positive weight".into());
        }
        Ok(Prompt {
            text: text.to_string(),
            parts,
        })
    }

    /// The prompt as submitted (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn parts(&self) -> &[WeightedPrompt] {
        &self.parts
    }

    /// The text without weights, for engines that take one plain caption.
    pub fn caption(&self) -> String {
        self.parts
            .iter()
            .filter(|p| p.weight > 0.0)
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Splits a trailing `:weight`. A suffix that does not look like a number is text.
fn split_weight(piece: &str) -> Result<(&str, f32), String> {
    let Some(idx) = piece.rfind(':') else {
        return Ok((piece, 1.0));
    };
    let suffix = piece[idx + 1..].trim();
    let looks_numeric = !suffix.is_empty()
        && suffix
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && suffix.chars().any(|c| c.is_ascii_digit());
    let names_non_finite = matches!(
        suffix.to_ascii_lowercase().trim_start_matches(['+', '-']),
        "nan" | "inf" | "infinity"
    );
    if names_non_finite {
        return Err(format!("weight {suffix:?} is not a finite number"));
    }
    if !looks_numeric {
        return Ok((piece, 1.0));
    }
    let weight: f32 = suffix
        .parse()
        .map_err(|_| format!("weight {suffix:?} is not a number"))?;
    if !weight.is_finite() {
        return Err(format!("weight {suffix:?} is not a finite number"));
    }
    Ok((piece[..idx].trim_end(), weight))
}

impl TryFrom<String> for Prompt {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        // Messages carry prompts that were validated on intake; re-parse with
        // a generous bound so a changed limit never strands a queued job.
        Prompt::parse(&s, usize::MAX)
    }
}

impl From<Prompt> for String {
    fn from(p: Prompt) -> String {
        p.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_serializes_as_its_text_and_parses_back() {
        let p = Prompt::parse("a red fox:1 | blurry:-0.5", 1000).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"a red fox:1 | blurry:-0.5\"");
        assert_eq!(serde_json::from_str::<Prompt>(&json).unwrap(), p);
        assert!(serde_json::from_str::<Prompt>("\"  \"").is_err());
    }

    #[test]
    fn length_and_characters_are_those_sent() {
        let p = Prompt::parse("  a fox  ", 9).unwrap();
        assert_eq!(p.text(), "a fox");
        let long = Prompt::parse("  a fox  ", 8).unwrap_err();
        assert!(long.contains("9 characters"), "{long}");
        let newline = Prompt::parse("a fox\n", 100).unwrap_err();
        assert!(newline.contains("U+000A"), "{newline}");
        assert_eq!(Prompt::parse(" \n ", 100).unwrap_err(), "prompt is empty");
    }
}
