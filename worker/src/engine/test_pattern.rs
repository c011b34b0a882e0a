//! A cheap deterministic image from the prompt's hash and the seed.

use super::{Candidate, Engine, RenderContext, RenderError, RenderInputs};
use kiln_protocol::{Engine as EngineKind, JobSpec};

pub struct TestPattern;

impl Engine for TestPattern {
    fn kind(&self) -> EngineKind {
        EngineKind::TestPattern
    }

    fn render(
        &mut self,
        _job: &JobSpec,
        _inputs: &RenderInputs,
        _ctx: &mut RenderContext<'_>,
    ) -> Result<Vec<Candidate>, RenderError> {
        Err(RenderError::Invalid("test-pattern is not written yet".into()))
    }
}
