//! Reading a submitted batch: content negotiation, then the JSON or NDJSON
//! body into a header and its jobs, with syntax errors as 400 and type or
//! field errors as 422 with a JSON pointer (and the NDJSON line).

use crate::error::{ApiError, FieldProblem};
use axum::http::{header, HeaderMap};

pub use kiln_protocol::api::{BatchRequest, JobRequest};

/// The body's media type.
#[derive(Clone, Copy)]
pub enum Format {
    Json,
    Ndjson,
}

/// Where a job came from in the request, for pointers in errors.
#[derive(Clone, Copy)]
pub enum Origin {
    Prompts,
    Jobs,
    /// NDJSON: the job at this 1-based line.
    Line(usize),
}

/// A body read whole: the batch's fields (without `prompts` and `jobs`)
/// and its jobs.
pub struct Parsed {
    pub header: BatchRequest,
    pub jobs: Vec<(Origin, JobRequest)>,
}

/// The media types of an NDJSON body.
pub const NDJSON: [&str; 3] = [
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
];

/// The body's format from `Content-Type`; 415 for anything else.
pub fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        m if NDJSON.contains(&m) => Ok(Format::Ndjson),
        "" => Err(ApiError::UnsupportedMediaType(
            "missing Content-Type; send application/json or application/x-ndjson".into(),
        )),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {other} is not supported; send application/json or application/x-ndjson"
        ))),
    }
}

/// Reads the body in its format; `max_jobs` bounds an NDJSON body early
/// (a JSON body is bounded by the reader's `Bounds`).
pub fn parse(format: Format, body: &[u8], max_jobs: usize) -> Result<Parsed, ApiError> {
    let parsed = match format {
        Format::Json => parse_json(body),
        Format::Ndjson => parse_ndjson(body, max_jobs),
    };
    // A list cut short at the bound answers as a list over it always has.
    parsed.map_err(|e| match e {
        ApiError::Validation { .. } if kiln_protocol::api::bounds::over_max_jobs() => {
            too_many(max_jobs)
        }
        e => e,
    })
}

/// A key as one JSON-pointer token (`~` and `/` escaped).
pub fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `serde_path_to_error`'s path as a JSON pointer.
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => out.push_str(&format!("/{}", pointer_token(key))),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// Deserializes `bytes` as `T`, mapping syntax errors to 400 and type or
/// field errors to 422 with a pointer (prefixed by `prefix`).
fn from_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    prefix: &str,
    line: Option<usize>,
) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let at = |msg: String| match line {
        Some(l) => format!("line {l}: {msg}"),
        None => msg,
    };
    // Serde would also read a struct from an array; only objects are meant.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            return Err(ApiError::validation(vec![FieldProblem {
                pointer: prefix.to_string(),
                message: at("invalid type: expected a JSON object".into()),
                line,
            }]))
        }
        Some(_) => {}
    }
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let ptr = format!("{prefix}{}", pointer(e.path()));
            let inner = e.into_inner();
            return Err(match inner.classify() {
                serde_json::error::Category::Data => ApiError::validation(vec![FieldProblem {
                    pointer: ptr,
                    message: at(inner.to_string()),
                    line,
                }]),
                _ => ApiError::BadRequest(at(format!("malformed JSON: {inner}"))),
            });
        }
    };
    de.end()
        .map_err(|e| ApiError::BadRequest(at(format!("malformed JSON: {e}"))))?;
    Ok(value)
}

/// One JSON object holding `prompts` or `jobs`.
pub fn parse_json(body: &[u8]) -> Result<Parsed, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    let mut header: BatchRequest = from_json(body, "", None)?;
    let invalid = |pointer: &str, message: &str| {
        Err(ApiError::validation(vec![FieldProblem::new(
            pointer, message,
        )]))
    };
    let jobs = match (header.prompts.take(), header.jobs.take()) {
        (Some(_), Some(_)) => return invalid("/jobs", "give either prompts or jobs, not both"),
        (None, None) => return invalid("/prompts", "a batch needs prompts (or jobs)"),
        (Some(prompts), None) => {
            if prompts.is_empty() {
                return invalid("/prompts", "is empty");
            }
            prompts
                .into_iter()
                .map(|prompt| {
                    let job = JobRequest {
                        prompt,
                        params: None,
                    };
                    (Origin::Prompts, job)
                })
                .collect()
        }
        (None, Some(list)) => {
            if list.is_empty() {
                return invalid("/jobs", "is empty");
            }
            list.into_iter().map(|j| (Origin::Jobs, j)).collect()
        }
    };
    Ok(Parsed { header, jobs })
}

/// A header line, then one job per line; blank lines are skipped.
pub fn parse_ndjson(body: &[u8], max_jobs: usize) -> Result<Parsed, ApiError> {
    let lines = body
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l));
    let mut header = None;
    let mut jobs = Vec::new();
    for (n, line) in lines {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if header.is_none() {
            header = Some(ndjson_header(line, n)?);
            continue;
        }
        if jobs.len() >= max_jobs {
            return Err(too_many(max_jobs));
        }
        let index = jobs.len();
        let job: JobRequest = from_json(line, &format!("/jobs/{index}"), Some(n))?;
        jobs.push((Origin::Line(n), job));
    }
    let Some(header) = header else {
        return Err(ApiError::BadRequest(
            "the NDJSON body is empty; expected a header line then one job per line".into(),
        ));
    };
    if jobs.is_empty() {
        return Err(ApiError::validation(vec![FieldProblem::new(
            "/jobs",
            "the NDJSON body has a header line but no job lines",
        )]));
    }
    Ok(Parsed { header, jobs })
}

/// The first NDJSON line (number `n`): the batch without jobs.
fn ndjson_header(line: &[u8], n: usize) -> Result<BatchRequest, ApiError> {
    let h: BatchRequest = from_json(line, "", Some(n))?;
    if h.prompts.is_some() || h.jobs.is_some() {
        return Err(ApiError::validation(vec![FieldProblem {
            pointer: if h.prompts.is_some() {
                "/prompts"
            } else {
                "/jobs"
            }
            .into(),
            message: format!(
                "line {n}: in NDJSON the header line holds no jobs; put one job per line after it"
            ),
            line: Some(n),
        }]));
    }
    Ok(h)
}

/// 422: more jobs than a batch may hold.
pub fn too_many(max: usize) -> ApiError {
    ApiError::validation(vec![FieldProblem::new(
        "/jobs",
        kiln_protocol::api::bounds::too_many_jobs(max),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_escape_keys() {
        let e = from_json::<BatchRequest>(
            br#"{"engine":"dalle","prompts":["a"],"metadata":{"a/b":1}}"#,
            "",
            None,
        )
        .unwrap_err();
        let ApiError::Validation { errors, .. } = e else {
            panic!("{e}")
        };
        assert_eq!(errors[0].pointer, "/metadata/a~1b");
    }

    #[test]
    fn syntax_errors_are_bad_requests_and_type_errors_are_validation() {
        assert!(matches!(
            parse_json(b"{\"engine\":"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json(br#"{"engine":"dalle","prompts":["a"]} trailing"#),
            Err(ApiError::BadRequest(_))
        ));
        let e = parse_json(br#"{"engine":"dalle","jobs":[{"prompt":"a","params":{"widht":3}}]}"#)
            .err()
            .unwrap();
        let ApiError::Validation { errors, .. } = e else {
            panic!()
        };
        assert_eq!(errors[0].pointer, "/jobs/0/params/widht");
    }
}
