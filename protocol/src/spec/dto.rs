//! [`ParamsDto`]: parameters as they travel, every field optional. The one
//! list of every parameter's name and type.

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

            /// Unsets every field whose name `keep` refuses.
            pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
                $(if !keep(stringify!($f)) { self.$f = None; })*
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
