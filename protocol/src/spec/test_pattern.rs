//! The parameters of the `test-pattern` engine.

use super::check::{Defaults, Errors, WholeField};
use super::dto::ParamsDto;
use serde_json::{Map, Value};

const STEP_DELAY_MS: WholeField = WholeField {
    name: "step_delay_ms",
    about: "How long each step is held, in milliseconds.",
    default: 0,
    min: 0,
    max: 60_000,
};

/// A cheap deterministic image from the prompt's hash.
#[derive(Debug, Clone, PartialEq)]
pub struct TestPatternParams {
    steps: u32,
    step_delay_ms: u32,
}

impl TestPatternParams {
    /// The fields of [`ParamsDto`] this engine takes beyond the shared ones.
    pub const NAMES: &'static [&'static str] = &["steps", "step_delay_ms"];
    pub(super) const DEFAULTS: Defaults = Defaults {
        side: 256,
        steps: Some(1),
        candidates: 1,
    };

    pub(super) fn parse(dto: &ParamsDto, steps: u32, errors: &mut Errors) -> TestPatternParams {
        let step_delay_ms = errors.whole(&STEP_DELAY_MS, dto.step_delay_ms);
        TestPatternParams {
            steps,
            step_delay_ms,
        }
    }

    /// The JSON Schemas of this engine's own fields.
    pub(super) fn schema(props: &mut Map<String, Value>) {
        props.insert(STEP_DELAY_MS.name.into(), STEP_DELAY_MS.schema());
    }

    pub(super) fn write(&self, dto: &mut ParamsDto) {
        dto.steps = Some(self.steps);
        dto.step_delay_ms = Some(self.step_delay_ms);
    }

    /// Pattern steps.
    pub fn steps(&self) -> u32 {
        self.steps
    }
    /// How long each step is held (for tests and benchmarks of long jobs).
    pub fn step_delay_ms(&self) -> u32 {
        self.step_delay_ms
    }
}
