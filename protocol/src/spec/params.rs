//! Parameters: the wire form ([`ParamsDto`], every field optional) and the
//! typed, resolved form ([`JobParams`] with one [`EngineParams`] variant per
//! engine). The fields every engine shares are parsed here; each engine's own
//! fields are listed and parsed in that engine's module.

use super::{dalle::DalleParams, test_pattern::TestPatternParams, vqgan_clip::VqganClipParams};
use super::{Engine, FieldError, Limits, MAX_SEED};
use serde::{Deserialize, Serialize};

/// Declares [`ParamsDto`] from one list of fields, with the functions that
/// must cover every field (`overlay`, `set_fields`), so the list is written once.
macro_rules! params_dto {
    ($(#[$sm:meta])* pub struct ParamsDto { $($(#[$m:meta])* $f:ident: Option<$t:ty>,)* }) => {
        $(#[$sm])*
        pub struct ParamsDto {
            $($(#[$m])* #[serde(default, skip_serializing_if = "Option::is_none")] pub $f: Option<$t>,)*
        }

        impl ParamsDto {
            /// Every field's name, in declaration order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($f)),*];

            /// Sets the field `name` from its text form (a CSV cell, a
            /// command-line value): numbers in decimal, `init_image` as is.
            pub fn set_text(&mut self, name: &str, text: &str) -> Result<(), String> {
                match name {
                    $(stringify!($f) => {
                        self.$f = Some(<$t as ParamText>::from_text(text)?);
                        Ok(())
                    })*
                    _ => Err(format!("unknown parameter {name:?}")),
                }
            }

            /// `self` with every field that `over` sets replaced.
            pub fn overlay(&self, over: &ParamsDto) -> ParamsDto {
                ParamsDto { $($f: over.$f.clone().or_else(|| self.$f.clone()),)* }
            }

            /// The names of the fields that are set, in declaration order.
            pub fn set_fields(&self) -> Vec<&'static str> {
                let mut set = Vec::new();
                $(if self.$f.is_some() { set.push(stringify!($f)); })*
                set
            }
        }
    };
}

params_dto! {
    /// Parameters as they travel: every field optional, unknown fields
    /// rejected. On a request, batch-level params are overlaid by per-job
    /// overrides, then [`super::JobSpec::parse`] fills in the engine's
    /// defaults and checks bounds. Stored jobs, queue messages and API
    /// answers carry the resolved parameters in the same form, every field
    /// of the job's engine set.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
    #[serde(deny_unknown_fields)]
    pub struct ParamsDto {
        width: Option<u32>,
        height: Option<u32>,
        /// Optimisation steps (vqgan-clip) or pattern steps (test-pattern);
        /// DALL·E always decodes 256 tokens and reports 16 rows.
        steps: Option<u32>,
        seed: Option<u64>,
        candidates: Option<u32>,
        keep: Option<u32>,
        // vqgan-clip
        lr: Option<f64>,
        cutn: Option<u32>,
        cut_pow: Option<f64>,
        init_image: Option<String>,
        init_weight: Option<f64>,
        // dalle
        temperature: Option<f64>,
        top_k: Option<u32>,
        supercondition_factor: Option<f64>,
        // test-pattern
        step_delay_ms: Option<u32>,
    }
}

/// A parameter's value from its text form, with the error a person reads.
trait ParamText: Sized {
    fn from_text(s: &str) -> Result<Self, String>;
}

impl ParamText for u32 {
    fn from_text(s: &str) -> Result<u32, String> {
        s.parse()
            .map_err(|_| format!("{s:?} is not a whole number from 0 to {}", u32::MAX))
    }
}

impl ParamText for u64 {
    fn from_text(s: &str) -> Result<u64, String> {
        s.parse()
            .map_err(|_| format!("{s:?} is not a whole number from 0 to {}", u64::MAX))
    }
}

impl ParamText for f64 {
    fn from_text(s: &str) -> Result<f64, String> {
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(format!("{s:?} is not a finite number")),
        }
    }
}

impl ParamText for String {
    fn from_text(s: &str) -> Result<String, String> {
        Ok(s.to_string())
    }
}

/// The parameters every engine shares.
pub const COMMON: [&str; 5] = ["width", "height", "seed", "candidates", "keep"];

/// Resolved parameters of a job: defaults filled in, every bound checked.
/// Made only by [`super::JobSpec::parse`] (or decoded from a stored job).
#[derive(Debug, Clone, PartialEq)]
pub struct JobParams {
    width: u32,
    height: u32,
    seed: u64,
    candidates: u32,
    keep: u32,
    engine: EngineParams,
}

/// The parameters that belong to one engine.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineParams {
    VqganClip(VqganClipParams),
    Dalle(DalleParams),
    TestPattern(TestPatternParams),
}

impl EngineParams {
    pub fn engine(&self) -> Engine {
        match self {
            EngineParams::VqganClip(_) => Engine::VqganClip,
            EngineParams::Dalle(_) => Engine::Dalle,
            EngineParams::TestPattern(_) => Engine::TestPattern,
        }
    }

    /// The steps the engine reports progress over.
    pub fn steps(&self) -> u32 {
        match self {
            EngineParams::VqganClip(p) => p.steps(),
            EngineParams::Dalle(_) => DalleParams::ROWS,
            EngineParams::TestPattern(p) => p.steps(),
        }
    }

    fn write(&self, dto: &mut ParamsDto) {
        match self {
            EngineParams::VqganClip(p) => p.write(dto),
            EngineParams::Dalle(p) => p.write(dto),
            EngineParams::TestPattern(p) => p.write(dto),
        }
    }
}

impl JobParams {
    pub fn width(&self) -> u32 {
        self.width
    }
    pub fn height(&self) -> u32 {
        self.height
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    pub fn candidates(&self) -> u32 {
        self.candidates
    }
    pub fn keep(&self) -> u32 {
        self.keep
    }
    /// Optimisation steps (vqgan-clip), pattern steps (test-pattern), or
    /// DALL·E's 16 rows of tokens.
    pub fn steps(&self) -> u32 {
        self.engine.steps()
    }
    pub fn engine(&self) -> &EngineParams {
        &self.engine
    }

    /// The wire form: every field of the job's engine set.
    pub fn to_dto(&self) -> ParamsDto {
        let mut dto = ParamsDto {
            width: Some(self.width),
            height: Some(self.height),
            steps: Some(self.steps()),
            seed: Some(self.seed),
            candidates: Some(self.candidates),
            keep: Some(self.keep),
            ..ParamsDto::default()
        };
        self.engine.write(&mut dto);
        dto
    }
}

impl Serialize for JobParams {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_dto().serialize(s)
    }
}

/// Collects every problem of one job (validation does not stop at the first).
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    pub(super) fn push(&mut self, field: &str, message: String) {
        self.0.push(FieldError {
            field: field.to_string(),
            message,
        })
    }

    /// `v` (or `def`) within `lo..=hi`, else an error for `params/{name}`.
    pub(super) fn real(&mut self, name: &str, v: Option<f64>, def: f64, lo: f64, hi: f64) -> f64 {
        let v = v.unwrap_or(def);
        if !v.is_finite() || v < lo || v > hi {
            self.push(
                &format!("params/{name}"),
                format!("{v} is outside {lo}..={hi}"),
            );
        }
        v
    }

    /// `v` (or `def`) within `lo..=hi`, else an error for `params/{name}`.
    pub(super) fn whole(&mut self, name: &str, v: Option<u32>, def: u32, lo: u32, hi: u32) -> u32 {
        let v = v.unwrap_or(def);
        if v < lo || v > hi {
            self.push(
                &format!("params/{name}"),
                format!("{v} is outside {lo}..={hi}"),
            );
        }
        v
    }
}

/// Defaults of the shared fields, per engine.
pub(super) struct Defaults {
    pub side: u32,
    /// `None`: the engine takes no `steps`.
    pub steps: Option<u32>,
    pub candidates: u32,
}

/// Parses the shared fields and the engine's own; refuses fields that do not
/// belong to the engine. Errors come in field order: foreign fields, then
/// width, height, steps, seed, candidates, keep, then the engine's.
pub(super) fn parse(
    engine: Engine,
    dto: &ParamsDto,
    default_seed: u64,
    limits: &Limits,
    errors: &mut Errors,
) -> JobParams {
    let own: &[&str] = match engine {
        Engine::VqganClip => VqganClipParams::NAMES,
        Engine::Dalle => DalleParams::NAMES,
        Engine::TestPattern => TestPatternParams::NAMES,
    };
    for name in dto.set_fields() {
        if !COMMON.contains(&name) && !own.contains(&name) {
            errors.push(
                &format!("params/{name}"),
                format!("not a parameter of engine {engine}"),
            );
        }
    }
    let defaults = match engine {
        Engine::VqganClip => VqganClipParams::DEFAULTS,
        Engine::Dalle => DalleParams::DEFAULTS,
        Engine::TestPattern => TestPatternParams::DEFAULTS,
    };
    let width = dto.width.unwrap_or(defaults.side);
    let height = dto.height.unwrap_or(defaults.side);
    for (name, v) in [("width", width), ("height", height)] {
        check_side(engine, name, v, limits, errors);
    }
    let steps = defaults.steps.map(|def| {
        let steps = dto.steps.unwrap_or(def);
        if steps == 0 || steps > limits.max_steps {
            errors.push(
                "params/steps",
                format!("{steps} is outside 1..={}", limits.max_steps),
            );
        }
        steps
    });
    let seed = dto.seed.unwrap_or(default_seed.min(MAX_SEED));
    if seed > MAX_SEED {
        errors.push(
            "params/seed",
            format!("{seed} exceeds the largest exact JSON integer {MAX_SEED}"),
        );
    }
    let candidates = dto.candidates.unwrap_or(defaults.candidates);
    if candidates == 0 || candidates > limits.max_candidates {
        errors.push(
            "params/candidates",
            format!("{candidates} is outside 1..={}", limits.max_candidates),
        );
    }
    let keep = dto.keep.unwrap_or(1);
    if keep == 0 {
        errors.push("params/keep", "must be at least 1".into());
    } else if keep > candidates {
        errors.push(
            "params/keep",
            format!("{keep} is more than the {candidates} candidates"),
        );
    }
    let steps = steps.unwrap_or(0);
    let engine = match engine {
        Engine::VqganClip => EngineParams::VqganClip(VqganClipParams::parse(dto, steps, errors)),
        Engine::Dalle => EngineParams::Dalle(DalleParams::parse(dto, errors)),
        Engine::TestPattern => {
            EngineParams::TestPattern(TestPatternParams::parse(dto, steps, errors))
        }
    };
    JobParams {
        width,
        height,
        seed,
        candidates,
        keep,
        engine,
    }
}

fn check_side(engine: Engine, name: &str, v: u32, limits: &Limits, errors: &mut Errors) {
    if engine == Engine::Dalle && v != DalleParams::SIDE {
        errors.push(
            &format!("params/{name}"),
            format!("{v} is not supported: DALL·E renders 256×256"),
        );
    } else if v == 0 || !v.is_multiple_of(16) {
        errors.push(
            &format!("params/{name}"),
            format!("{v} is not a positive multiple of 16"),
        );
    } else if v > limits.max_side {
        errors.push(
            &format!("params/{name}"),
            format!("{v} exceeds the limit of {}", limits.max_side),
        );
    }
}
