//! JSON Schemas of a job's parameters, one per engine, written from the
//! same bounds and defaults the checks use, so that the API's document
//! states what intake accepts.

use super::check::{Limits, RealField, WholeField, MAX_SEED};
use super::dalle::DalleParams;
use super::dto::ParamsDto;
use super::engine::Engine;
use super::params::{defaults_of, names_of, DEFAULT_KEEP};
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
/// which stands for absent (the default applies); the other engines' fields
/// may only be `null`. What it cannot state is
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
            "default": DEFAULT_KEEP,
            "minimum": 1,
            "maximum": limits.max_candidates,
        }),
    );
    match engine {
        Engine::VqganClip => VqganClipParams::schema(&mut props),
        Engine::Dalle => DalleParams::schema(&mut props),
        Engine::TestPattern => TestPatternParams::schema(&mut props),
    }
    // Another engine's field is refused when set; `null` is absent.
    let takes = names_of(engine);
    for name in ParamsDto::FIELDS.iter().filter(|n| !takes(n)) {
        props.insert(
            (*name).into(),
            json!({
                "type": "null",
                "description": format!("Not a parameter of engine {engine}."),
            }),
        );
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
    /// extremes are accepted and the values just past them refused; each
    /// default is the one intake fills in.
    #[test]
    fn the_schema_states_the_bounds_intake_enforces() {
        for engine in Engine::ALL {
            let schema = params_schema(engine, &limits());
            let props = schema["properties"].as_object().unwrap();
            let resolved = JobSpec::parse(engine, "a fox", &ParamsDto::default(), 7, &limits())
                .unwrap()
                .params()
                .to_dto();
            let resolved = serde_json::to_value(resolved).unwrap();
            for (name, field) in props {
                if field["type"] == "null" {
                    continue;
                }
                if let Some(default) = field.get("default") {
                    assert_eq!(default.as_f64(), resolved[name].as_f64(), "{engine} {name}");
                }
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
                assert!(accepts(engine, name, &fmt(min)), "{engine} {name}={min}");
                assert!(accepts(engine, name, &fmt(max)), "{engine} {name}={max}");
                // Just past each bound: the next whole number, or a real a
                // hair beyond (bounds are inclusive, never exclusive).
                let hair = |v: f64| (v.abs() * 1e-3).max(1e-9);
                let (above, below) = if integer {
                    (max + 1.0, min - 1.0)
                } else {
                    (max + hair(max), min - hair(min))
                };
                assert!(!accepts(engine, name, &fmt(above)), "{engine} {name} > max");
                if !integer || min > 0.0 {
                    assert!(!accepts(engine, name, &fmt(below)), "{engine} {name} < min");
                }
                if let Some(step) = field["multipleOf"].as_f64() {
                    assert!(!accepts(engine, name, &fmt(min + step / 2.0 + 1.0)));
                }
            }
        }
    }

    /// The schema of an engine lists every field: its own with their bounds,
    /// the others as `null` only, which intake also takes as absent.
    #[test]
    fn the_schema_lists_every_field_and_closes_the_rest() {
        for engine in Engine::ALL {
            let schema = params_schema(engine, &limits());
            assert_eq!(schema["additionalProperties"], false);
            let props = schema["properties"].as_object().unwrap();
            let takes = crate::spec::params::names_of(engine);
            for name in ParamsDto::FIELDS {
                let only_null = props[*name]["type"] == "null";
                assert_eq!(only_null, !takes(name), "{engine} {name}");
                let dto: ParamsDto = serde_json::from_value(json!({ *name: null })).unwrap();
                assert!(JobSpec::parse(engine, "a", &dto, 7, &limits()).is_ok());
            }
            assert_eq!(props.len(), ParamsDto::FIELDS.len());
        }
    }
}
