//! Bounds on a batch request, checked while it is read.
//!
//! A request body can hold far more elements than any batch may: 64 MiB of
//! `"",` is about 22 million empty prompts, and reading them all before
//! counting them costs gigabytes. A server that sets [`Bounds`] for the
//! current thread ([`with_bounds`]) makes the readers of `prompts`, `jobs`,
//! `metadata` and each prompt stop at the first element past a bound, so
//! memory follows what a batch may hold, never the body's element count.
//! Without bounds (the CLI, the tests) everything is read.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// What one request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Jobs (prompts, or entries of `jobs`) of one batch.
    pub max_jobs: usize,
    /// Characters of one prompt. Checked here in bytes, at four per
    /// character (a prompt longer than that is too long however it is
    /// encoded); the exact count is the validator's.
    pub max_prompt_chars: usize,
    /// Entries of `metadata`.
    pub max_metadata_entries: usize,
}

thread_local! {
    static BOUNDS: Cell<Option<Bounds>> = const { Cell::new(None) };
    /// Whether a list of jobs went past `max_jobs` since `with_bounds` began.
    static OVER_JOBS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (which reads requests) with `bounds` in force on this thread.
pub fn with_bounds<R>(bounds: Bounds, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Bounds>);
    impl Drop for Restore {
        fn drop(&mut self) {
            BOUNDS.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BOUNDS.with(|b| b.replace(Some(bounds))));
    OVER_JOBS.with(|o| o.set(false));
    f()
}

/// Inside [`with_bounds`]: whether a list of jobs was cut short at
/// `max_jobs` (the error the reader returned is that one).
pub fn over_max_jobs() -> bool {
    OVER_JOBS.with(Cell::get)
}

fn current() -> Option<Bounds> {
    BOUNDS.with(Cell::get)
}

/// The message for a batch with more than `max` jobs.
pub fn too_many_jobs(max: usize) -> String {
    format!("a batch holds at most {max} jobs (KILN_MAX_BATCH_JOBS)")
}

/// A list of jobs read up to `max` elements; one more is an error.
struct Bounded<T> {
    max: Option<usize>,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let max = self.max.unwrap_or(usize::MAX);
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max).min(4096));
        loop {
            if out.len() == max {
                return match seq.next_element::<IgnoredAny>()? {
                    Some(_) => {
                        OVER_JOBS.with(|o| o.set(true));
                        Err(de::Error::custom(too_many_jobs(max)))
                    }
                    None => Ok(out),
                };
            }
            match seq.next_element()? {
                Some(v) => out.push(v),
                None => return Ok(out),
            }
        }
    }
}

fn bounded_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(Bounded {
        max: current().map(|b| b.max_jobs),
        _t: PhantomData,
    })
}

/// A list of jobs (prompts, or `jobs` entries), at most `max_jobs`.
pub(crate) struct JobList<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JobList<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bounded_list(d).map(JobList)
    }
}

/// `prompts`: an optional list of prompts, at most `max_jobs`.
pub(crate) fn prompts<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Ok(Option::<JobList<PromptText>>::deserialize(d)?
        .map(|l| l.0.into_iter().map(|p| p.0).collect()))
}

/// One prompt, refused unread past four bytes per allowed character.
pub(crate) struct PromptText(pub String);

impl<'de> Deserialize<'de> for PromptText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text(Option<usize>);
        impl Text {
            fn check<E: de::Error>(&self, s: &str) -> Result<(), E> {
                match self.0 {
                    Some(max) if s.len() > max.saturating_mul(4) => Err(E::custom(format!(
                        "prompt is more than {} bytes long; the limit is {max} characters",
                        max.saturating_mul(4)
                    ))),
                    _ => Ok(()),
                }
            }
        }
        impl<'de> Visitor<'de> for Text {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
                self.check(s)?;
                Ok(s.to_owned())
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<String, E> {
                self.check(&s)?;
                Ok(s)
            }
        }
        d.deserialize_string(Text(current().map(|b| b.max_prompt_chars)))
            .map(PromptText)
    }
}

/// `prompt` of a job request.
pub(crate) fn prompt<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    PromptText::deserialize(d).map(|p| p.0)
}

/// `metadata`: an optional map of strings, at most `max_metadata_entries`.
pub(crate) fn metadata<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Entries(Option<usize>);
    impl<'de> Visitor<'de> for Entries {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let max = self.0.unwrap_or(usize::MAX);
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                out.insert(k, v);
                if out.len() > max {
                    return Err(de::Error::custom(format!(
                        "has more than {max} entries; the limit is {max}"
                    )));
                }
            }
            Ok(out)
        }
    }
    struct Optional(Option<usize>);
    impl<'de> Visitor<'de> for Optional {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of strings or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(Entries(self.0)).map(Some)
        }
    }
    d.deserialize_option(Optional(current().map(|b| b.max_metadata_entries)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BatchRequest;

    const BOUNDS: Bounds = Bounds {
        max_jobs: 3,
        max_prompt_chars: 2,
        max_metadata_entries: 1,
    };

    fn read(body: &str) -> Result<BatchRequest, String> {
        with_bounds(BOUNDS, || serde_json::from_str(body)).map_err(|e| e.to_string())
    }

    #[test]
    fn lists_maps_and_prompts_stop_at_their_bounds() {
        let ok = read(r#"{"engine":"x","prompts":["a","b","c"],"metadata":{"k":"v"}}"#).unwrap();
        assert_eq!(ok.prompts.unwrap().len(), 3);
        let e = read(r#"{"engine":"x","prompts":["a","b","c",""]}"#).unwrap_err();
        assert!(e.contains("at most 3 jobs"), "{e}");
        let over = |body: &str| {
            with_bounds(BOUNDS, || {
                let _ = serde_json::from_str::<BatchRequest>(body);
                over_max_jobs()
            })
        };
        assert!(over(r#"{"engine":"x","prompts":["a","b","c",""]}"#));
        assert!(!over(
            r#"{"engine":"x","prompts":["a"],"metadata":{"a":"1","b":"2"}}"#
        ));
        let e = read(r#"{"engine":"x","jobs":[{"prompt":"a"},{"prompt":"b"},{"prompt":"c"},{}]}"#)
            .unwrap_err();
        assert!(e.contains("at most 3 jobs"), "{e}");
        let e = read(r#"{"engine":"x","metadata":{"a":"1","b":"2"}}"#).unwrap_err();
        assert!(e.contains("more than 1 entries"), "{e}");
        // 2 characters may take 8 bytes; 9 bytes are too many however read.
        assert!(read(r#"{"engine":"x","prompts":["ééé"]}"#).is_ok());
        let e = read(r#"{"engine":"x","prompts":["aaaaaaaaa"]}"#).unwrap_err();
        assert!(e.contains("the limit is 2 characters"), "{e}");
        let e = read(r#"{"engine":"x","jobs":[{"prompt":"aaaa\naaaa\n"}]}"#).unwrap_err();
        assert!(e.contains("the limit is 2 characters"), "{e}");
    }

    #[test]
    fn without_bounds_everything_is_read() {
        let body = format!(
            r#"{{"engine":"x","prompts":[{}"z"]}}"#,
            r#""a","#.repeat(10)
        );
        with_bounds(BOUNDS, || {
            assert!(serde_json::from_str::<BatchRequest>(&body).is_err())
        });
        let r: BatchRequest = serde_json::from_str(&body).unwrap();
        assert_eq!(r.prompts.unwrap().len(), 11);
    }
}
