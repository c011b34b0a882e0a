//! The parameters of the `vqgan-clip` engine.

use super::check::{Defaults, Errors, RealField, WholeField};
use super::dto::ParamsDto;
use serde_json::{json, Map, Value};

const LR: RealField = RealField {
    name: "lr",
    about: "Adam's learning rate.",
    default: 0.1,
    min: 1e-6,
    max: 10.0,
};
const CUT_POW: RealField = RealField {
    name: "cut_pow",
    about: "How cutout sizes are drawn (size = min_side × u^cut_pow).",
    default: 1.0,
    min: 0.0,
    max: 10.0,
};
const INIT_WEIGHT: RealField = RealField {
    name: "init_weight",
    about: "Weight of the loss that keeps the image near the init image.",
    default: 0.0,
    min: 0.0,
    max: 100.0,
};
const CUTN: WholeField = WholeField {
    name: "cutn",
    about: "Random cutouts per step.",
    default: 32,
    min: 1,
    max: 256,
};
/// An upload id: 1 to 200 letters, digits, `-` and `_`.
const UPLOAD_ID: &str = "^[A-Za-z0-9_-]{1,200}$";

/// VQGAN+CLIP: optimise a VQGAN latent towards the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct VqganClipParams {
    steps: u32,
    lr: f64,
    cutn: u32,
    cut_pow: f64,
    init_image: Option<String>,
    init_weight: f64,
}

impl VqganClipParams {
    /// The fields of [`ParamsDto`] this engine takes beyond the shared ones.
    pub const NAMES: &'static [&'static str] = &[
        "steps",
        "lr",
        "cutn",
        "cut_pow",
        "init_image",
        "init_weight",
    ];
    pub(super) const DEFAULTS: Defaults = Defaults {
        side: 256,
        steps: Some(200),
        candidates: 1,
    };

    pub(super) fn parse(dto: &ParamsDto, steps: u32, errors: &mut Errors) -> VqganClipParams {
        let lr = errors.real(&LR, dto.lr);
        let cut_pow = errors.real(&CUT_POW, dto.cut_pow);
        let init_weight = errors.real(&INIT_WEIGHT, dto.init_weight);
        let cutn = errors.whole(&CUTN, dto.cutn);
        if let Some(init) = &dto.init_image {
            if !is_upload_id(init) {
                errors.push(
                    "params/init_image",
                    "must be the id of an upload (letters, digits, '-' and '_')".into(),
                );
            }
        }
        VqganClipParams {
            steps,
            lr,
            cutn,
            cut_pow,
            init_image: dto.init_image.clone(),
            init_weight,
        }
    }

    /// The JSON Schemas of this engine's own fields.
    pub(super) fn schema(props: &mut Map<String, Value>) {
        for f in [LR, CUT_POW, INIT_WEIGHT] {
            props.insert(f.name.into(), f.schema());
        }
        props.insert(CUTN.name.into(), CUTN.schema());
        props.insert(
            "init_image".into(),
            json!({
                "type": ["string", "null"],
                "pattern": UPLOAD_ID,
                "description": "The id of an upload of the same tenant (POST /v1/uploads) \
                    that the latent starts from.",
            }),
        );
    }

    pub(super) fn write(&self, dto: &mut ParamsDto) {
        dto.steps = Some(self.steps);
        dto.lr = Some(self.lr);
        dto.cutn = Some(self.cutn);
        dto.cut_pow = Some(self.cut_pow);
        dto.init_image = self.init_image.clone();
        dto.init_weight = Some(self.init_weight);
    }

    /// Optimisation steps.
    pub fn steps(&self) -> u32 {
        self.steps
    }
    /// Adam's learning rate.
    pub fn lr(&self) -> f64 {
        self.lr
    }
    /// Random cutouts per step.
    pub fn cutn(&self) -> u32 {
        self.cutn
    }
    /// How cutout sizes are drawn (`size = min_side × u^cut_pow`).
    pub fn cut_pow(&self) -> f64 {
        self.cut_pow
    }
    /// The upload the latent starts from, if any.
    pub fn init_image(&self) -> Option<&str> {
        self.init_image.as_deref()
    }
    /// Weight of the loss that keeps the image near the init image.
    pub fn init_weight(&self) -> f64 {
        self.init_weight
    }
}

/// Whether `s` is an upload id, as [`UPLOAD_ID`] states.
fn is_upload_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
