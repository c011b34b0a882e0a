//! Job specifications: wire DTOs and the validated domain types built from them.
//!
//! Parse, don't validate: a [`JobSpec`] can only be made by [`JobSpec::parse`],
//! so code that holds one knows every field is within bounds.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest integer a JSON number carries exactly in every client (2^53 - 1).
pub const MAX_SEED: u64 = 9_007_199_254_740_991;

/// A generator a job runs on; each has its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    VqganClip,
    Dalle,
    TestPattern,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::VqganClip, Engine::Dalle, Engine::TestPattern];

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::VqganClip => "vqgan-clip",
            Engine::Dalle => "dalle",
            Engine::TestPattern => "test-pattern",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Engine::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                format!("unknown engine {s:?}; expected one of vqgan-clip, dalle, test-pattern")
            })
    }
}

/// Scheduling priority of a batch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, PartialOrd, Ord,
)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    /// Numeric rank stored in the database; higher runs first.
    pub fn rank(self) -> i16 {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
        }
    }

    pub fn from_rank(rank: i16) -> Priority {
        match rank {
            i16::MIN..=0 => Priority::Low,
            1 => Priority::Normal,
            _ => Priority::High,
        }
    }
}

/// Bounds that a job must respect; the dispatcher makes them configurable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_prompt_chars: usize,
    pub max_side: u32,
    pub max_steps: u32,
    pub max_candidates: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_prompt_chars: 1000,
            max_side: 1024,
            max_steps: 5000,
            max_candidates: 64,
        }
    }
}

/// One invalid field: `field` is a JSON-pointer-like path relative to the job
/// (`prompt`, `params/width`), `message` says what is wrong in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every problem found in one job (validation does not stop at the first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct SpecError {
    pub errors: Vec<FieldError>,
}

impl SpecError {
    fn one(field: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            errors: vec![FieldError {
                field: field.to_string(),
                message: message.into(),
            }],
        }
    }
}

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
        let chars = text.chars().count();
        if chars > max_chars {
            return Err(format!(
                "prompt is {chars} characters long; the limit is {max_chars}"
            ));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
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

/// Parameters as they arrive on the wire: every field optional, unknown
/// fields rejected. Batch-level params are overlaid by per-job overrides,
/// then [`JobSpec::parse`] fills in the engine's defaults and checks bounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ParamsDto {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    pub seed: Option<u64>,
    pub candidates: Option<u32>,
    pub keep: Option<u32>,
    // vqgan-clip
    pub lr: Option<f64>,
    pub cutn: Option<u32>,
    pub cut_pow: Option<f64>,
    pub init_image: Option<String>,
    pub init_weight: Option<f64>,
    // dalle
    pub temperature: Option<f64>,
    pub top_k: Option<u32>,
    pub supercondition_factor: Option<f64>,
    // test-pattern
    pub step_delay_ms: Option<u32>,
}

impl ParamsDto {
    /// `self` with every field that `over` sets replaced.
    pub fn overlay(&self, over: &ParamsDto) -> ParamsDto {
        macro_rules! pick {
            ($($f:ident),*) => { ParamsDto { $($f: over.$f.clone().or_else(|| self.$f.clone()),)* } };
        }
        pick!(
            width,
            height,
            steps,
            seed,
            candidates,
            keep,
            lr,
            cutn,
            cut_pow,
            init_image,
            init_weight,
            temperature,
            top_k,
            supercondition_factor,
            step_delay_ms
        )
    }
}

/// Resolved parameters: defaults filled in, every bound checked. Fields that
/// do not apply to the job's engine are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct JobParams {
    pub width: u32,
    pub height: u32,
    /// Optimisation steps (vqgan-clip) or pattern steps (test-pattern);
    /// DALL·E always decodes 256 tokens and reports 16 rows.
    pub steps: u32,
    pub seed: u64,
    pub candidates: u32,
    pub keep: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_pow: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercondition_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_delay_ms: Option<u32>,
}

/// A valid job: engine, prompt and resolved parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub engine: Engine,
    pub prompt: Prompt,
    pub params: JobParams,
}

impl JobSpec {
    /// Validates `prompt` and `dto` for `engine`. `default_seed` is used when
    /// the DTO names no seed (the dispatcher draws it at random and stores
    /// the result, so every job can be reproduced).
    pub fn parse(
        engine: Engine,
        prompt: &str,
        dto: &ParamsDto,
        default_seed: u64,
        limits: &Limits,
    ) -> Result<JobSpec, SpecError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError {
                field: field.to_string(),
                message,
            })
        };

        let prompt = match Prompt::parse(prompt, limits.max_prompt_chars) {
            Ok(p) => Some(p),
            Err(e) => {
                err("prompt", e);
                None
            }
        };

        // Parameters that do not belong to the engine are refused, not ignored.
        let foreign: &[(&str, bool)] = match engine {
            Engine::TestPattern => &[
                ("lr", dto.lr.is_some()),
                ("cutn", dto.cutn.is_some()),
                ("cut_pow", dto.cut_pow.is_some()),
                ("init_image", dto.init_image.is_some()),
                ("init_weight", dto.init_weight.is_some()),
                ("temperature", dto.temperature.is_some()),
                ("top_k", dto.top_k.is_some()),
                ("supercondition_factor", dto.supercondition_factor.is_some()),
            ],
            Engine::VqganClip => &[
                ("temperature", dto.temperature.is_some()),
                ("top_k", dto.top_k.is_some()),
                ("supercondition_factor", dto.supercondition_factor.is_some()),
                ("step_delay_ms", dto.step_delay_ms.is_some()),
            ],
            Engine::Dalle => &[
                ("steps", dto.steps.is_some()),
                ("lr", dto.lr.is_some()),
                ("cutn", dto.cutn.is_some()),
                ("cut_pow", dto.cut_pow.is_some()),
                ("init_image", dto.init_image.is_some()),
                ("init_weight", dto.init_weight.is_some()),
                ("step_delay_ms", dto.step_delay_ms.is_some()),
            ],
        };
        for (name, set) in foreign {
            if *set {
                err(
                    &format!("params/{name}"),
                    format!("not a parameter of engine {engine}"),
                );
            }
        }

        let (def_side, def_steps, def_candidates) = match engine {
            Engine::TestPattern => (256, 1, 1),
            Engine::VqganClip => (256, 200, 1),
            Engine::Dalle => (256, 16, 4),
        };
        let width = dto.width.unwrap_or(def_side);
        let height = dto.height.unwrap_or(def_side);
        for (name, v) in [("width", width), ("height", height)] {
            if engine == Engine::Dalle && v != 256 {
                err(
                    &format!("params/{name}"),
                    format!("{v} is not supported: DALL·E renders 256×256"),
                );
            } else if v == 0 || v % 16 != 0 {
                err(
                    &format!("params/{name}"),
                    format!("{v} is not a positive multiple of 16"),
                );
            } else if v > limits.max_side {
                err(
                    &format!("params/{name}"),
                    format!("{v} exceeds the limit of {}", limits.max_side),
                );
            }
        }
        let steps = dto.steps.unwrap_or(def_steps);
        if steps == 0 || steps > limits.max_steps {
            err(
                "params/steps",
                format!("{steps} is outside 1..={}", limits.max_steps),
            );
        }
        let seed = dto.seed.unwrap_or(default_seed.min(MAX_SEED));
        if seed > MAX_SEED {
            err(
                "params/seed",
                format!("{seed} exceeds the largest exact JSON integer {MAX_SEED}"),
            );
        }
        let candidates = dto.candidates.unwrap_or(def_candidates);
        if candidates == 0 || candidates > limits.max_candidates {
            err(
                "params/candidates",
                format!("{candidates} is outside 1..={}", limits.max_candidates),
            );
        }
        let keep = dto.keep.unwrap_or(1);
        if keep == 0 {
            err("params/keep", "must be at least 1".into());
        } else if keep > candidates {
            err(
                "params/keep",
                format!("{keep} is more than the {candidates} candidates"),
            );
        }

        let mut real = |name: &str, v: Option<f64>, def: f64, lo: f64, hi: f64| -> f64 {
            let v = v.unwrap_or(def);
            if !v.is_finite() || v < lo || v > hi {
                err(
                    &format!("params/{name}"),
                    format!("{v} is outside {lo}..={hi}"),
                );
            }
            v
        };
        let mut params = JobParams {
            width,
            height,
            steps,
            seed,
            candidates,
            keep,
            lr: None,
            cutn: None,
            cut_pow: None,
            init_image: None,
            init_weight: None,
            temperature: None,
            top_k: None,
            supercondition_factor: None,
            step_delay_ms: None,
        };
        match engine {
            Engine::VqganClip => {
                params.lr = Some(real("lr", dto.lr, 0.1, 1e-6, 10.0));
                params.cut_pow = Some(real("cut_pow", dto.cut_pow, 1.0, 0.0, 10.0));
                params.init_weight = Some(real("init_weight", dto.init_weight, 0.0, 0.0, 100.0));
                let cutn = dto.cutn.unwrap_or(32);
                if cutn == 0 || cutn > 256 {
                    err("params/cutn", format!("{cutn} is outside 1..=256"));
                }
                params.cutn = Some(cutn);
                if let Some(init) = &dto.init_image {
                    if init.is_empty()
                        || init.len() > 200
                        || !init
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        err(
                            "params/init_image",
                            "must be the id of an upload (letters, digits, '-' and '_')".into(),
                        );
                    }
                    params.init_image = Some(init.clone());
                }
            }
            Engine::Dalle => {
                params.steps = 16;
                params.temperature = Some(real("temperature", dto.temperature, 1.0, 1e-3, 100.0));
                params.supercondition_factor = Some(real(
                    "supercondition_factor",
                    dto.supercondition_factor,
                    16.0,
                    0.0,
                    1000.0,
                ));
                let top_k = dto.top_k.unwrap_or(256);
                if top_k == 0 || top_k > 16384 {
                    err("params/top_k", format!("{top_k} is outside 1..=16384"));
                }
                params.top_k = Some(top_k);
            }
            Engine::TestPattern => {
                let delay = dto.step_delay_ms.unwrap_or(0);
                if delay > 60_000 {
                    err(
                        "params/step_delay_ms",
                        format!("{delay} is outside 0..=60000"),
                    );
                }
                params.step_delay_ms = Some(delay);
            }
        }

        match prompt {
            Some(prompt) if errors.is_empty() => Ok(JobSpec {
                engine,
                prompt,
                params,
            }),
            _ => Err(SpecError { errors }),
        }
    }

    /// The seed of candidate `i` (candidates of one job differ only in seed).
    pub fn candidate_seed(&self, i: u32) -> u64 {
        (self.params.seed + i as u64) % (MAX_SEED + 1)
    }
}

impl SpecError {
    /// A single error for a field, for callers outside this module.
    pub fn field(field: &str, message: impl Into<String>) -> SpecError {
        SpecError::one(field, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(engine: Engine, prompt: &str, dto: ParamsDto) -> Result<JobSpec, SpecError> {
        JobSpec::parse(engine, prompt, &dto, 42, &Limits::default())
    }

    fn fields(r: Result<JobSpec, SpecError>) -> Vec<String> {
        r.unwrap_err().errors.into_iter().map(|e| e.field).collect()
    }

    fn tp(prompt: &str) -> Result<JobSpec, SpecError> {
        parse(Engine::TestPattern, prompt, ParamsDto::default())
    }

    #[test]
    fn defaults_are_filled_in_per_engine() {
        let j = tp("a red fox").unwrap();
        assert_eq!(
            (j.params.width, j.params.height, j.params.steps),
            (256, 256, 1)
        );
        assert_eq!(j.params.seed, 42);
        assert_eq!((j.params.candidates, j.params.keep), (1, 1));
        assert_eq!(j.params.step_delay_ms, Some(0));
        assert_eq!(j.params.lr, None);
        let v = parse(Engine::VqganClip, "x", ParamsDto::default()).unwrap();
        assert_eq!(v.params.lr, Some(0.1));
        assert_eq!(v.params.cutn, Some(32));
        let d = parse(Engine::Dalle, "x", ParamsDto::default()).unwrap();
        assert_eq!(d.params.top_k, Some(256));
        assert_eq!(d.params.supercondition_factor, Some(16.0));
        assert_eq!(d.params.candidates, 4);
    }

    #[test]
    fn empty_and_whitespace_prompts_are_rejected() {
        assert_eq!(fields(tp("")), ["prompt"]);
        assert_eq!(fields(tp("   \u{3000} ")), ["prompt"]);
    }

    #[test]
    fn control_characters_are_rejected() {
        for p in [
            "a\u{0}b",
            "line\nbreak",
            "tab\there",
            "bell\u{7}",
            "del\u{7f}",
        ] {
            let e = tp(p).unwrap_err();
            assert!(
                e.errors[0].message.contains("control character"),
                "{p:?}: {e}"
            );
        }
    }

    #[test]
    fn over_long_prompts_are_rejected_with_the_limit() {
        let p = "é".repeat(1001);
        let e = tp(&p).unwrap_err();
        assert!(e.errors[0].message.contains("limit is 1000"), "{e}");
        assert!(tp(&"é".repeat(1000)).is_ok());
    }

    #[test]
    fn a_colon_that_is_text_stays_text() {
        let j = tp("portrait: oil on canvas").unwrap();
        assert_eq!(j.prompt.parts().len(), 1);
        assert_eq!(j.prompt.parts()[0].text, "portrait: oil on canvas");
        assert_eq!(j.prompt.parts()[0].weight, 1.0);
        let j = tp("time 12:30").unwrap();
        assert_eq!(
            j.prompt.parts()[0].weight,
            30.0,
            "a trailing number is a weight"
        );
        let j = tp("ratio 16:9 poster: retro").unwrap();
        assert_eq!(j.prompt.parts()[0].text, "ratio 16:9 poster: retro");
    }

    #[test]
    fn weighted_sub_prompts_parse() {
        let j = tp("a red fox:1 | blurry:-0.5|sharp: 2.5e-1").unwrap();
        let parts = j.prompt.parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            (parts[0].text.as_str(), parts[0].weight),
            ("a red fox", 1.0)
        );
        assert_eq!((parts[1].text.as_str(), parts[1].weight), ("blurry", -0.5));
        assert_eq!((parts[2].text.as_str(), parts[2].weight), ("sharp", 0.25));
        assert_eq!(j.prompt.caption(), "a red fox, sharp");
        assert_eq!(j.prompt.text(), "a red fox:1 | blurry:-0.5|sharp: 2.5e-1");
    }

    #[test]
    fn non_finite_and_malformed_weights_are_rejected() {
        for p in [
            "fox:nan",
            "fox:NaN",
            "fox:inf",
            "fox:-inf",
            "fox:Infinity",
            "fox:1e99",
            "fox:1.2.3",
        ] {
            let e = tp(p).unwrap_err();
            assert!(e.errors[0].message.contains("weight"), "{p}: {e}");
        }
    }

    #[test]
    fn empty_sub_prompts_and_no_positive_weight_are_rejected() {
        assert!(tp("a | | b").unwrap_err().errors[0]
            .message
            .contains("sub-prompt 2 is empty"));
        assert!(tp("a |").is_err());
        assert!(tp(":1").unwrap_err().errors[0].message.contains("no text"));
        assert!(tp("blurry:-1").unwrap_err().errors[0]
            .message
            .contains("positive weight"));
        assert!(tp("a:0 | b:0").is_err());
    }

    #[test]
    fn sizes_must_be_multiples_of_16_within_limits() {
        let dto = |w, h| ParamsDto {
            width: Some(w),
            height: Some(h),
            ..Default::default()
        };
        assert_eq!(
            fields(parse(Engine::TestPattern, "x", dto(100, 64))),
            ["params/width"]
        );
        assert_eq!(
            fields(parse(Engine::TestPattern, "x", dto(64, 0))),
            ["params/height"]
        );
        assert_eq!(
            fields(parse(Engine::TestPattern, "x", dto(2048, 17))),
            ["params/width", "params/height"]
        );
        assert!(parse(Engine::TestPattern, "x", dto(16, 1024)).is_ok());
        assert_eq!(
            fields(parse(Engine::Dalle, "x", dto(512, 256))),
            ["params/width"]
        );
    }

    #[test]
    fn steps_bounds() {
        let dto = |s| ParamsDto {
            steps: Some(s),
            ..Default::default()
        };
        assert_eq!(
            fields(parse(Engine::VqganClip, "x", dto(0))),
            ["params/steps"]
        );
        assert_eq!(
            fields(parse(Engine::VqganClip, "x", dto(5001))),
            ["params/steps"]
        );
        assert_eq!(
            fields(parse(Engine::VqganClip, "x", dto(u32::MAX))),
            ["params/steps"]
        );
        assert!(parse(Engine::VqganClip, "x", dto(5000)).is_ok());
        assert_eq!(fields(parse(Engine::Dalle, "x", dto(10))), ["params/steps"]);
    }

    #[test]
    fn keep_cannot_exceed_candidates() {
        let dto = |c, k| ParamsDto {
            candidates: Some(c),
            keep: Some(k),
            ..Default::default()
        };
        assert_eq!(
            fields(parse(Engine::TestPattern, "x", dto(2, 3))),
            ["params/keep"]
        );
        assert_eq!(
            fields(parse(Engine::TestPattern, "x", dto(2, 0))),
            ["params/keep"]
        );
        assert_eq!(
            fields(parse(Engine::TestPattern, "x", dto(0, 1))),
            ["params/candidates", "params/keep"]
        );
        assert_eq!(
            fields(parse(Engine::TestPattern, "x", dto(65, 1))),
            ["params/candidates"]
        );
        assert!(parse(Engine::TestPattern, "x", dto(4, 4)).is_ok());
    }

    #[test]
    fn nan_and_infinite_reals_are_rejected() {
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, 11.0] {
            let dto = ParamsDto {
                lr: Some(v),
                ..Default::default()
            };
            assert_eq!(
                fields(parse(Engine::VqganClip, "x", dto)),
                ["params/lr"],
                "{v}"
            );
        }
        let dto = ParamsDto {
            temperature: Some(f64::NAN),
            ..Default::default()
        };
        assert_eq!(
            fields(parse(Engine::Dalle, "x", dto)),
            ["params/temperature"]
        );
    }

    #[test]
    fn parameters_of_other_engines_are_refused() {
        let dto = ParamsDto {
            lr: Some(0.1),
            top_k: Some(3),
            ..Default::default()
        };
        assert_eq!(
            fields(parse(Engine::TestPattern, "x", dto)),
            ["params/lr", "params/top_k"]
        );
        let dto = ParamsDto {
            step_delay_ms: Some(1),
            ..Default::default()
        };
        assert_eq!(
            fields(parse(Engine::Dalle, "x", dto)),
            ["params/step_delay_ms"]
        );
    }

    #[test]
    fn seeds_above_the_exact_json_range_are_rejected() {
        let dto = ParamsDto {
            seed: Some(MAX_SEED + 1),
            ..Default::default()
        };
        assert_eq!(
            fields(parse(Engine::TestPattern, "x", dto)),
            ["params/seed"]
        );
        let dto = ParamsDto {
            seed: Some(MAX_SEED),
            ..Default::default()
        };
        let j = parse(Engine::TestPattern, "x", dto).unwrap();
        assert_eq!(j.candidate_seed(1), 0, "candidate seeds wrap within range");
    }

    #[test]
    fn init_image_must_name_an_upload_id() {
        let dto = |s: &str| ParamsDto {
            init_image: Some(s.into()),
            ..Default::default()
        };
        assert!(parse(Engine::VqganClip, "x", dto("up_123-abc")).is_ok());
        for bad in ["", "../etc/passwd", "http://x/y.png", "a/b"] {
            assert_eq!(
                fields(parse(Engine::VqganClip, "x", dto(bad))),
                ["params/init_image"],
                "{bad}"
            );
        }
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let dto = ParamsDto {
            width: Some(3),
            steps: Some(0),
            ..Default::default()
        };
        assert_eq!(
            fields(parse(Engine::TestPattern, "", dto)),
            ["prompt", "params/width", "params/steps"]
        );
    }

    #[test]
    fn unknown_fields_are_rejected_by_the_dto() {
        let e = serde_json::from_str::<ParamsDto>(r#"{"widht": 64}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `widht`"), "{e}");
        let e = serde_json::from_str::<ParamsDto>(r#"{"width": "64"}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = serde_json::from_str::<ParamsDto>(r#"{"width": -64}"#).unwrap_err();
        assert!(e.to_string().contains("invalid value"), "{e}");
    }

    #[test]
    fn overlay_prefers_the_override() {
        let base = ParamsDto {
            width: Some(64),
            seed: Some(1),
            ..Default::default()
        };
        let over = ParamsDto {
            seed: Some(2),
            ..Default::default()
        };
        let m = base.overlay(&over);
        assert_eq!((m.width, m.seed), (Some(64), Some(2)));
    }

    #[test]
    fn engines_and_priorities_parse() {
        assert_eq!("vqgan-clip".parse::<Engine>().unwrap(), Engine::VqganClip);
        assert!("stable-diffusion".parse::<Engine>().is_err());
        assert_eq!(
            serde_json::to_string(&Engine::TestPattern).unwrap(),
            "\"test-pattern\""
        );
        assert_eq!(
            serde_json::from_str::<Priority>("\"high\"").unwrap(),
            Priority::High
        );
        assert!(Priority::High.rank() > Priority::Normal.rank());
        assert_eq!(Priority::from_rank(Priority::Low.rank()), Priority::Low);
    }
}
