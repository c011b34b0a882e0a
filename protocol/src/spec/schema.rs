//! JSON Schemas of a job's parameters, one per engine, written from the
//! same bounds and defaults the checks use, so that the API's document
//! states what intake accepts.

use super::check::{Limits, RealField, WholeField, MAX_SEED};
use super::dalle::DalleParams;
use super::engine::Engine;
use super::params::defaults_of;
use super::test_pattern::TestPatternParams;
use super::vqgan_clip::VqganClipParams;
use serde_json::{json, Map, Value};

impl RealField {
    /// `{"type": ["number", "null"], …}` with the field's bounds and default.
    pub fn schema(&self) -> Value {
        json!({
            "type": ["number", "null"],
            "description": self.about,
            "default": self.default,
            "minimum": self.min,
            "maximum": self.max,
        })
    }
}

impl WholeField {
    /// `{"type": ["integer", "null"], …}` with the field's bounds and default.
    pub fn schema(&self) -> Value {
        json!({
            "type": ["integer", "null"],
            "description": self.about,
            "default": self.default,
            "minimum": self.min,
            "maximum": self.max,
        })
    }
}

/// The parameters `engine` takes, as a closed JSON Schema object: the shared
/// fields within `limits`, then the engine's own. Every field may be `null`,
/// which stands for absent (the default applies). What it cannot state is
/// said in the descriptions: `keep` is at most the job's `candidates`, and
/// `init_image` names an existing upload of the same tenant.
pub fn params_schema(engine: Engine, limits: &Limits) -> Value {
    let defaults = defaults_of(engine);
    let mut props = Map::new();
    for side in ["width", "height"] {
        let schema = if engine == Engine::Dalle {
            json!({
                "type": ["integer", "null"],
                "enum": [DalleParams::SIDE, null],
                "description": "DALL·E renders 256×256.",
            })
        } else {
            json!({
                "type": ["integer", "null"],
                "description": "Pixels, a multiple of 16.",
                "default": defaults.side,
                "minimum": 16,
                "maximum": limits.max_side,
                "multipleOf": 16,
            })
        };
        props.insert(side.into(), schema);
    }
    if let Some(steps) = defaults.steps {
        props.insert(
            "steps".into(),
            json!({
                "type": ["integer", "null"],
                "description": "Steps the job runs and reports progress over.",
                "default": steps,
                "minimum": 1,
                "maximum": limits.max_steps,
            }),
        );
    }
    props.insert(
        "seed".into(),
        json!({
            "type": ["integer", "null"],
            "description": "Drawn at random when absent; the job's answer states it.",
            "minimum": 0,
            "maximum": MAX_SEED,
        }),
    );
    props.insert(
        "candidates".into(),
        json!({
            "type": ["integer", "null"],
            "description": "Images rendered, then ranked by CLIP.",
            "default": defaults.candidates,
            "minimum": 1,
            "maximum": limits.max_candidates,
        }),
    );
    props.insert(
        "keep".into(),
        json!({
            "type": ["integer", "null"],
            "description": "The best candidates kept; at most the job's candidates.",
            "default": 1,
            "minimum": 1,
            "maximum": limits.max_candidates,
        }),
    );
    match engine {
        Engine::VqganClip => VqganClipParams::schema(&mut props),
        Engine::Dalle => DalleParams::schema(&mut props),
        Engine::TestPattern => TestPatternParams::schema(&mut props),
    }
    json!({
        "type": "object",
        "description": format!("The parameters of engine {engine}; every field optional."),
        "properties": props,
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{JobSpec, ParamsDto};

    fn limits() -> Limits {
        Limits {
            max_prompt_chars: 100,
            max_side: 512,
            max_steps: 300,
            max_candidates: 8,
        }
    }

    /// Parses a job of `engine` with `field` set to `value` (and `candidates`
    /// at its largest, so that `keep` is bounded by its own schema alone).
    fn accepts(engine: Engine, field: &str, value: &str) -> bool {
        let mut dto = ParamsDto::default();
        if field != "candidates" && field != "keep" {
            dto.set_text("candidates", "1").unwrap();
        } else {
            dto.set_text("candidates", &limits().max_candidates.to_string())
                .unwrap();
        }
        if dto.set_text(field, value).is_err() {
            return false;
        }
        JobSpec::parse(engine, "a fox", &dto, 7, &limits()).is_ok()
    }

    /// Each bound the schema states is the bound intake enforces: its
    /// extremes are accepted and the values just past them refused.
    #[test]
    fn the_schema_states_the_bounds_intake_enforces() {
        for engine in Engine::ALL {
            let schema = params_schema(engine, &limits());
            let props = schema["properties"].as_object().unwrap();
            for (name, field) in props {
                let types = field["type"].as_array().unwrap();
                assert!(
                    types.contains(&json!("null")),
                    "{engine} {name} may be null"
                );
                let integer = types.contains(&json!("integer"));
                let fmt = |v: f64| {
                    if integer {
                        format!("{}", v as u64)
                    } else {
                        format!("{v}")
                    }
                };
                if let Some(c) = field["enum"].get(0).and_then(Value::as_f64) {
                    assert_eq!(field["enum"][1], Value::Null);
                    assert!(accepts(engine, name, &fmt(c)), "{engine} {name}={c}");
                    assert!(!accepts(engine, name, &fmt(c + 16.0)), "{engine} {name}");
                    continue;
                }
                let Some(min) = field["minimum"].as_f64() else {
                    assert_eq!(
                        field["pattern"], "^[A-Za-z0-9_-]{1,200}$",
                        "{engine} {name}"
                    );
                    assert!(accepts(engine, name, "an-upload_1"), "{engine} {name}");
                    assert!(!accepts(engine, name, "an upload"), "{engine} {name}");
                    assert!(!accepts(engine, name, &"a".repeat(201)), "{engine} {name}");
                    continue;
                };
                let max = field["maximum"].as_f64().unwrap();
                let step = field["multipleOf"].as_f64();
                assert!(accepts(engine, name, &fmt(min)), "{engine} {name}={min}");
                assert!(accepts(engine, name, &fmt(max)), "{engine} {name}={max}");
                let past = if integer { 1.0 } else { max * 1e-3 };
                assert!(
                    !accepts(engine, name, &fmt(max + past)),
                    "{engine} {name} > max"
                );
                if min > 0.0 {
                    let below = if integer { min - 1.0 } else { min / 2.0 - 1.0 };
                    assert!(!accepts(engine, name, &fmt(below)), "{engine} {name} < min");
                }
                if let Some(step) = step {
                    assert!(!accepts(engine, name, &fmt(min + step / 2.0 + 1.0)));
                }
            }
        }
    }

    /// The schema of an engine lists exactly the fields it takes; any other
    /// field of `ParamsDto` is refused.
    #[test]
    fn the_schema_lists_exactly_the_engines_fields() {
        for engine in Engine::ALL {
            let schema = params_schema(engine, &limits());
            assert_eq!(schema["additionalProperties"], false);
            let props = schema["properties"].as_object().unwrap();
            let takes = crate::spec::params::names_of(engine);
            for name in ParamsDto::FIELDS {
                assert_eq!(props.contains_key(*name), takes(name), "{engine} {name}");
            }
            assert!(props
                .keys()
                .all(|k| ParamsDto::FIELDS.contains(&k.as_str())));
        }
    }
}
