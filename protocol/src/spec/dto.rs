//! [`ParamsDto`]: parameters as they travel, every field optional. The one
//! list of every parameter's name and type.

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;

/// Declares [`ParamsDto`] from one list of fields, with the functions that
/// must cover every field (`overlay`, `set_fields`), so the list is written once.
macro_rules! params_dto {
    ($(#[$sm:meta])* pub struct ParamsDto { $($(#[$m:meta])* $f:ident: Option<$t:ty>,)* }) => {
        $(#[$sm])*
        pub struct ParamsDto {
            $($(#[$m])* #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "param")] pub $f: Option<$t>,)*
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

/// How a parameter is read from JSON: whole numbers also from a number
/// written with a zero fraction (`864.0`), which JSON Schema counts as an
/// integer; the others as serde reads them.
trait ParamWire: Sized {
    fn from_wire<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

/// Reads an optional parameter (`null` is absent) through [`ParamWire`].
fn param<'de, D: Deserializer<'de>, T: ParamWire>(d: D) -> Result<Option<T>, D::Error> {
    struct Wire<T>(T);
    impl<'de, T: ParamWire> Deserialize<'de> for Wire<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            T::from_wire(d).map(Wire)
        }
    }
    Ok(Option::<Wire<T>>::deserialize(d)?.map(|w| w.0))
}

/// Accepts a JSON number that is a whole number within `T`'s range.
struct Whole<T>(PhantomData<T>);

impl<T: TryFrom<u64> + Into<u64> + Bounded> Visitor<'_> for Whole<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a whole number from 0 to {}", T::MAX.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        // Exact: a whole f64 below 2^64 converts to u64 without rounding.
        if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
            T::try_from(v as u64).map_err(|_| E::invalid_value(Unexpected::Float(v), &self))
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

/// The largest value of an unsigned parameter type.
trait Bounded: Copy {
    const MAX: Self;
}
impl Bounded for u32 {
    const MAX: u32 = u32::MAX;
}
impl Bounded for u64 {
    const MAX: u64 = u64::MAX;
}

impl ParamWire for u32 {
    fn from_wire<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        d.deserialize_any(Whole(PhantomData))
    }
}

impl ParamWire for u64 {
    fn from_wire<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Whole(PhantomData))
    }
}

impl ParamWire for f64 {
    fn from_wire<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        f64::deserialize(d)
    }
}

impl ParamWire for String {
    fn from_wire<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        String::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::ParamsDto;

    #[test]
    fn whole_parameters_take_a_zero_fraction_and_nothing_else() {
        let dto: ParamsDto =
            serde_json::from_str(r#"{"width": 864.0, "seed": 9007199254740991.0, "lr": 1}"#)
                .unwrap();
        assert_eq!(
            (dto.width, dto.seed, dto.lr),
            (Some(864), Some(9_007_199_254_740_991), Some(1.0))
        );
        let null: ParamsDto = serde_json::from_str(r#"{"width": null}"#).unwrap();
        assert_eq!(null.width, None);
        for (body, says) in [
            (
                r#"{"width": 864.5}"#,
                "invalid value: floating point `864.5`",
            ),
            (r#"{"width": -1.0}"#, "invalid value"),
            (
                r#"{"width": 4294967296}"#,
                "invalid value: integer `4294967296`",
            ),
            (r#"{"width": 4294967296.0}"#, "invalid value"),
            (
                r#"{"width": "64"}"#,
                "invalid type: string \"64\", expected a whole number",
            ),
            (r#"{"width": -64}"#, "invalid value: integer `-64`"),
        ] {
            let e = serde_json::from_str::<ParamsDto>(body).unwrap_err();
            assert!(e.to_string().contains(says), "{body}: {e}");
        }
    }
}
