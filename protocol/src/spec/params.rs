//! Parameters: the wire form ([`ParamsDto`], every field optional) and the
//! typed, resolved form ([`JobParams`] with one [`EngineParams`] variant per
//! engine). The fields every engine shares are parsed here; each engine's own
//! fields are listed and parsed in that engine's module.

use super::check::{Defaults, Errors, Limits, MAX_SEED};
use super::dalle::DalleParams;
use super::dto::ParamsDto;
use super::engine::Engine;
use super::test_pattern::TestPatternParams;
use super::vqgan_clip::VqganClipParams;
use serde::Serialize;

/// Candidates kept when a job does not say.
pub const DEFAULT_KEEP: u32 = 1;

/// The parameters every engine shares.
pub const COMMON: [&str; 5] = ["width", "height", "seed", "candidates", "keep"];

/// The fields `engine` takes: the shared ones and its own.
pub fn names_of(engine: Engine) -> impl Fn(&str) -> bool {
    let own: &'static [&'static str] = match engine {
        Engine::VqganClip => VqganClipParams::NAMES,
        Engine::Dalle => DalleParams::NAMES,
        Engine::TestPattern => TestPatternParams::NAMES,
    };
    move |name| COMMON.contains(&name) || own.contains(&name)
}

impl ParamsDto {
    /// Only the fields `engine` takes, as a request for it states them (a
    /// resolved DALL·E job's `steps`, which it reports, is left out).
    pub fn for_engine(&self, engine: Engine) -> ParamsDto {
        let mut dto = self.clone();
        dto.retain(names_of(engine));
        dto
    }
}

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
    /// The upload the job starts from, when its engine takes one.
    pub fn init_image(&self) -> Option<&str> {
        match &self.engine {
            EngineParams::VqganClip(p) => p.init_image(),
            EngineParams::Dalle(_) | EngineParams::TestPattern(_) => None,
        }
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

/// The defaults of the shared fields for `engine`.
pub(super) fn defaults_of(engine: Engine) -> Defaults {
    match engine {
        Engine::VqganClip => VqganClipParams::DEFAULTS,
        Engine::Dalle => DalleParams::DEFAULTS,
        Engine::TestPattern => TestPatternParams::DEFAULTS,
    }
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
    let takes = names_of(engine);
    for name in dto.set_fields() {
        if !takes(name) {
            errors.push(
                &format!("params/{name}"),
                format!("not a parameter of engine {engine}"),
            );
        }
    }
    let defaults = defaults_of(engine);
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
    let keep = dto.keep.unwrap_or(DEFAULT_KEEP);
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
