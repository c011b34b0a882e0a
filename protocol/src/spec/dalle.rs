//! The parameters of the `dalle` engine.

use super::check::{Defaults, Errors, RealField, WholeField};
use super::dto::ParamsDto;
use serde_json::{Map, Value};

const TEMPERATURE: RealField = RealField {
    name: "temperature",
    about: "Softmax temperature of token sampling.",
    default: 1.0,
    min: 1e-3,
    max: 100.0,
};
const SUPERCONDITION_FACTOR: RealField = RealField {
    name: "supercondition_factor",
    about: "Classifier-free guidance weight.",
    default: 16.0,
    min: 0.0,
    max: 1000.0,
};
const TOP_K: WholeField = WholeField {
    name: "top_k",
    about: "Tokens are sampled from the top_k most likely.",
    default: 256,
    min: 1,
    max: 16384,
};

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
        let temperature = errors.real(&TEMPERATURE, dto.temperature);
        let supercondition_factor = errors.real(&SUPERCONDITION_FACTOR, dto.supercondition_factor);
        let top_k = errors.whole(&TOP_K, dto.top_k);
        DalleParams {
            temperature,
            top_k,
            supercondition_factor,
        }
    }

    /// The JSON Schemas of this engine's own fields.
    pub(super) fn schema(props: &mut Map<String, Value>) {
        for f in [TEMPERATURE, SUPERCONDITION_FACTOR] {
            props.insert(f.name.into(), f.schema());
        }
        props.insert(TOP_K.name.into(), TOP_K.schema());
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
