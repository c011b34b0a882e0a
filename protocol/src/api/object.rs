//! Structs read from JSON objects only. Serde also reads a struct from an
//! array of its fields in order (`"params": [64, 64]` as width and height),
//! which the API's document does not allow and no client means; the request
//! fields that hold structs read them through these functions instead.

use super::bounds::JobList;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;

/// A `T` read from a map (a JSON object), never from a sequence.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Fields(PhantomData)).map(Object)
    }
}

/// An optional struct, from an object or `null`.
pub(crate) fn optional<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Object<T>>::deserialize(d)?.map(|o| o.0))
}

/// An optional list of jobs, each from an object, at most the bound's
/// `max_jobs`.
pub(crate) fn optional_list<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    // A list of jobs: bounded while it is read (see `bounds`).
    Ok(Option::<JobList<Object<T>>>::deserialize(d)?
        .map(|l| l.0.into_iter().map(|o| o.0).collect()))
}
