//! Job specifications: the wire DTO and the validated domain types built from it.
//!
//! Parse, don't validate: a [`JobSpec`] can only be made by [`JobSpec::parse`]
//! (or decoded from a stored job, which runs the same checks), so code that
//! holds one knows every field is within bounds and every default is applied.
//!
//! - [`engine`]: [`Engine`] and [`Priority`].
//! - [`prompt`]: [`Prompt`] and its weighted parts.
//! - [`dto`]: [`ParamsDto`], the wire form and the one list of parameters.
//! - [`params`]: [`JobParams`] and [`EngineParams`] (the typed form) and the
//!   shared fields' checks.
//! - [`check`]: [`Limits`], [`SpecError`] and what the parsers share.
//! - [`schema`]: the JSON Schema of each engine's parameters, from the same
//!   bounds.
//! - [`vqgan_clip`], [`dalle`], [`test_pattern`]: each engine's parameters,
//!   their defaults and bounds.

use serde::{Deserialize, Serialize};

pub mod check;
pub mod dalle;
pub mod dto;
pub mod engine;
pub mod params;
pub mod prompt;
pub mod schema;
pub mod test_pattern;
pub mod vqgan_clip;

pub use check::{FieldError, Limits, SpecError, MAX_SEED};
pub use dalle::DalleParams;
pub use dto::ParamsDto;
pub use engine::{Engine, Priority};
pub use params::{EngineParams, JobParams};
pub use prompt::{Prompt, WeightedPrompt};
pub use test_pattern::TestPatternParams;
pub use vqgan_clip::VqganClipParams;

/// A valid job: prompt and resolved parameters (which name the engine).
///
/// On the wire (stored jobs, queue messages) it is
/// `{"engine": .., "prompt": "..", "params": {..}}` with the resolved
/// parameters in [`ParamsDto`] form; decoding runs the same checks as intake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SpecWire", into = "SpecWire")]
pub struct JobSpec {
    prompt: Prompt,
    params: JobParams,
}

/// The serialized form of a [`JobSpec`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpecWire {
    pub engine: Engine,
    pub prompt: String,
    pub params: ParamsDto,
}

impl TryFrom<SpecWire> for JobSpec {
    type Error = SpecError;
    fn try_from(w: SpecWire) -> Result<JobSpec, SpecError> {
        JobSpec::from_resolved(w.engine, &w.prompt, &w.params)
    }
}

impl From<JobSpec> for SpecWire {
    fn from(s: JobSpec) -> SpecWire {
        SpecWire {
            engine: s.engine(),
            prompt: s.prompt.text().to_string(),
            params: s.params.to_dto(),
        }
    }
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
        let mut errors = check::Errors::default();
        let prompt = match Prompt::parse(prompt, limits.max_prompt_chars) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push("prompt", e);
                None
            }
        };
        let params = params::parse(engine, dto, default_seed, limits, &mut errors);
        match prompt {
            Some(prompt) if errors.0.is_empty() => Ok(JobSpec { prompt, params }),
            _ => Err(SpecError { errors: errors.0 }),
        }
    }

    /// Decodes a job that was resolved on intake (a stored job, a queue
    /// message): its seed must be set; configurable limits do not apply.
    pub fn from_resolved(
        engine: Engine,
        prompt: &str,
        resolved: &ParamsDto,
    ) -> Result<JobSpec, SpecError> {
        let Some(seed) = resolved.seed else {
            return Err(SpecError::field(
                "params/seed",
                "a resolved job names its seed",
            ));
        };
        // Only the fields the engine takes: a resolved DALL·E job states the
        // 16 rows it reports as `steps`.
        let dto = resolved.for_engine(engine);
        JobSpec::parse(engine, prompt, &dto, seed, &Limits::unbounded())
    }

    pub fn engine(&self) -> Engine {
        self.params.engine().engine()
    }

    pub fn prompt(&self) -> &Prompt {
        &self.prompt
    }

    pub fn params(&self) -> &JobParams {
        &self.params
    }

    /// The seed of candidate `i` (candidates of one job differ only in seed).
    pub fn candidate_seed(&self, i: u32) -> u64 {
        (self.params.seed() + i as u64) % (MAX_SEED + 1)
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
            (j.params().width(), j.params().height(), j.params().steps()),
            (256, 256, 1)
        );
        assert_eq!(j.params().seed(), 42);
        assert_eq!((j.params().candidates(), j.params().keep()), (1, 1));
        assert_eq!(j.params().to_dto().step_delay_ms, Some(0));
        assert_eq!(j.params().to_dto().lr, None);
        let v = parse(Engine::VqganClip, "x", ParamsDto::default()).unwrap();
        assert_eq!(v.params().to_dto().lr, Some(0.1));
        assert_eq!(v.params().to_dto().cutn, Some(32));
        let d = parse(Engine::Dalle, "x", ParamsDto::default()).unwrap();
        assert_eq!(d.params().to_dto().top_k, Some(256));
        assert_eq!(d.params().to_dto().supercondition_factor, Some(16.0));
        assert_eq!(d.params().candidates(), 4);
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
        assert_eq!(j.prompt().parts().len(), 1);
        assert_eq!(j.prompt().parts()[0].text, "portrait: oil on canvas");
        assert_eq!(j.prompt().parts()[0].weight, 1.0);
        let j = tp("time 12:30").unwrap();
        assert_eq!(
            j.prompt().parts()[0].weight,
            30.0,
            "a trailing number is a weight"
        );
        let j = tp("ratio 16:9 poster: retro").unwrap();
        assert_eq!(j.prompt().parts()[0].text, "ratio 16:9 poster: retro");
    }

    #[test]
    fn weighted_sub_prompts_parse() {
        let j = tp("a red fox:1 | blurry:-0.5|sharp: 2.5e-1").unwrap();
        let parts = j.prompt().parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            (parts[0].text.as_str(), parts[0].weight),
            ("a red fox", 1.0)
        );
        assert_eq!((parts[1].text.as_str(), parts[1].weight), ("blurry", -0.5));
        assert_eq!((parts[2].text.as_str(), parts[2].weight), ("sharp", 0.25));
        assert_eq!(j.prompt().caption(), "a red fox, sharp");
        assert_eq!(j.prompt().text(), "a red fox:1 | blurry:-0.5|sharp: 2.5e-1");
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
    fn a_spec_travels_as_engine_prompt_and_resolved_params() {
        let d = parse(Engine::Dalle, "a fox:1 | blurry:-1", ParamsDto::default()).unwrap();
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["engine"], "dalle");
        assert_eq!(json["prompt"], "a fox:1 | blurry:-1");
        assert_eq!(json["params"]["steps"], 16, "DALL·E states its 16 rows");
        assert_eq!(json["params"]["top_k"], 256);
        assert!(json["params"].get("lr").is_none());
        let back: JobSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, d);
        for engine in Engine::ALL {
            let s = parse(engine, "x", ParamsDto::default()).unwrap();
            let again = JobSpec::from_resolved(engine, "x", &s.params().to_dto()).unwrap();
            assert_eq!(again, s, "{engine}");
        }
    }

    #[test]
    fn a_resolved_spec_names_its_seed_and_ignores_intake_limits() {
        let e = JobSpec::from_resolved(Engine::TestPattern, "x", &ParamsDto::default());
        assert_eq!(fields(e), ["params/seed"]);
        let big = ParamsDto {
            seed: Some(1),
            steps: Some(50_000),
            ..Default::default()
        };
        let s = JobSpec::from_resolved(Engine::TestPattern, "x", &big).unwrap();
        assert_eq!(s.params().steps(), 50_000);
    }

    #[test]
    fn engine_params_are_typed_per_engine() {
        let v = parse(Engine::VqganClip, "x", ParamsDto::default()).unwrap();
        let EngineParams::VqganClip(p) = v.params().engine() else {
            panic!("a vqgan-clip job has vqgan-clip params");
        };
        assert_eq!((p.lr(), p.cutn(), p.steps()), (0.1, 32, 200));
        assert_eq!(v.engine(), Engine::VqganClip);
        let t = parse(Engine::TestPattern, "x", ParamsDto::default()).unwrap();
        assert!(
            matches!(t.params().engine(), EngineParams::TestPattern(p) if p.step_delay_ms() == 0)
        );
    }

    #[test]
    fn set_fields_follow_the_declaration_order() {
        let dto = ParamsDto {
            step_delay_ms: Some(1),
            width: Some(16),
            top_k: Some(2),
            ..Default::default()
        };
        assert_eq!(dto.set_fields(), ["width", "top_k", "step_delay_ms"]);
    }

    #[test]
    fn parameters_parse_from_text() {
        let mut dto = ParamsDto::default();
        dto.set_text("width", "64").unwrap();
        dto.set_text("lr", "0.5").unwrap();
        dto.set_text("seed", "9007199254740991").unwrap();
        dto.set_text("init_image", "up_1").unwrap();
        assert_eq!(dto.width, Some(64));
        assert_eq!(dto.lr, Some(0.5));
        assert_eq!(dto.seed, Some(MAX_SEED));
        assert_eq!(dto.init_image.as_deref(), Some("up_1"));
        assert!(dto
            .set_text("width", "-1")
            .unwrap_err()
            .contains("whole number"));
        assert!(dto.set_text("lr", "inf").unwrap_err().contains("finite"));
        assert!(dto.set_text("widht", "1").unwrap_err().contains("unknown"));
        assert_eq!(ParamsDto::FIELDS.len(), 15);
        assert_eq!(ParamsDto::FIELDS[0], "width");
    }

    #[test]
    fn for_engine_keeps_what_a_request_may_state() {
        let d = parse(Engine::Dalle, "x", ParamsDto::default()).unwrap();
        let resolved = d.params().to_dto();
        assert_eq!(resolved.steps, Some(16));
        let again = resolved.for_engine(Engine::Dalle);
        assert_eq!(again.steps, None);
        assert_eq!(again.top_k, Some(256));
        let back = JobSpec::parse(Engine::Dalle, "x", &again, 0, &Limits::default()).unwrap();
        assert_eq!(back, d);
        let mixed = ParamsDto {
            lr: Some(0.1),
            step_delay_ms: Some(3),
            ..Default::default()
        };
        assert_eq!(
            mixed.for_engine(Engine::TestPattern).set_fields(),
            ["step_delay_ms"]
        );
    }
}
