//! The parameters of the `test-pattern` engine.

use super::check::{Defaults, Errors};
use super::dto::ParamsDto;

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
        let step_delay_ms = errors.whole("step_delay_ms", dto.step_delay_ms, 0, 0, 60_000);
        TestPatternParams {
            steps,
            step_delay_ms,
        }
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
