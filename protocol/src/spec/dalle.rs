//! The parameters of the `dalle` engine.

use super::check::{Defaults, Errors};
use super::dto::ParamsDto;

/// DALL·E mini/mega: sample 256 image tokens, then detokenize.
#[derive(Debug, Clone, PartialEq)]
pub struct DalleParams {
    temperature: f64,
    top_k: u32,
    supercondition_factor: f64,
}

impl DalleParams {
    /// The fields of [`ParamsDto`] this engine takes beyond the shared ones.
    pub const NAMES: &'static [&'static str] = &["temperature", "top_k", "supercondition_factor"];
    /// Progress rows: 256 tokens are reported as 16 rows of 16.
    pub const ROWS: u32 = 16;
    /// DALL·E renders 256×256 only.
    pub const SIDE: u32 = 256;
    pub(super) const DEFAULTS: Defaults = Defaults {
        side: Self::SIDE,
        steps: None,
        candidates: 4,
    };

    pub(super) fn parse(dto: &ParamsDto, errors: &mut Errors) -> DalleParams {
        let temperature = errors.real("temperature", dto.temperature, 1.0, 1e-3, 100.0);
        let supercondition_factor = errors.real(
            "supercondition_factor",
            dto.supercondition_factor,
            16.0,
            0.0,
            1000.0,
        );
        let top_k = errors.whole("top_k", dto.top_k, 256, 1, 16384);
        DalleParams {
            temperature,
            top_k,
            supercondition_factor,
        }
    }

    pub(super) fn write(&self, dto: &mut ParamsDto) {
        dto.temperature = Some(self.temperature);
        dto.top_k = Some(self.top_k);
        dto.supercondition_factor = Some(self.supercondition_factor);
    }

    /// Softmax temperature of token sampling.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }
    /// Tokens sampled from the `top_k` most likely.
    pub fn top_k(&self) -> u32 {
        self.top_k
    }
    /// Classifier-free guidance weight (min-dalle's super-conditioning).
    pub fn supercondition_factor(&self) -> f64 {
        self.supercondition_factor
    }
}
