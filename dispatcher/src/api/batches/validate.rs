//! Turning a parsed batch into job specs ready to store: every field is
//! checked (validation does not stop at the first error), and each error
//! carries a JSON pointer into the request and, for NDJSON, its line.

use super::intake::{pointer_token, too_many, JobRequest, Origin, Parsed};
use crate::error::{ApiError, ApiResult, FieldProblem};
use crate::store;
use kiln_protocol::spec::{FieldError, MAX_SEED};
use kiln_protocol::{Engine, JobSpec, Limits, ParamsDto, Priority};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Most field errors listed in one answer.
const MAX_ERRORS: usize = 100;
pub(crate) const MAX_NAME_CHARS: usize = 200;
pub(crate) const MAX_METADATA_ENTRIES: usize = 32;
pub(crate) const MAX_METADATA_KEY: usize = 64;
pub(crate) const MAX_METADATA_VALUE: usize = 512;

/// Validated, ready to store.
pub struct Intake {
    pub engine: Engine,
    pub priority: Priority,
    pub name: Option<String>,
    pub metadata: serde_json::Value,
    pub retry_of: Option<Uuid>,
    pub webhook: Option<store::batches::NewWebhook>,
    pub jobs: store::batches::NewJobs,
    /// Every init image the jobs name, checked against the store.
    pub uploads: Vec<InitImage>,
}

/// A job's `init_image`: an upload id that must exist.
pub struct InitImage {
    /// The job's index in the batch.
    pub index: usize,
    pub origin: Origin,
    pub upload: String,
    /// Whether the job named it itself (else it came from the batch's params).
    pub from_job: bool,
}

/// Field errors: the first [`MAX_ERRORS`] kept, the rest counted.
#[derive(Default)]
struct Problems {
    kept: Vec<FieldProblem>,
    overflow: usize,
}

impl Problems {
    fn push(&mut self, p: FieldProblem) {
        if self.kept.len() < MAX_ERRORS {
            self.kept.push(p);
        } else {
            self.overflow += 1;
        }
    }

    /// 422 listing the kept errors (and how many there were in all).
    fn into_result(self) -> Result<(), ApiError> {
        if self.kept.is_empty() {
            return Ok(());
        }
        let mut err = ApiError::validation(self.kept);
        if self.overflow > 0 {
            if let ApiError::Validation { detail, errors } = &mut err {
                *detail = format!(
                    "{} fields are invalid (the first {} are listed); nothing was stored",
                    errors.len() + self.overflow,
                    errors.len()
                );
            }
        }
        Err(err)
    }
}

/// Where a job's `field` is in the request, and the NDJSON line.
pub fn job_pointer(origin: Origin, index: usize, field: &str) -> (String, Option<usize>) {
    match (origin, field) {
        (Origin::Prompts, "prompt") => (format!("/prompts/{index}"), None),
        (Origin::Line(n), f) => (format!("/jobs/{index}/{f}"), Some(n)),
        (_, f) => (format!("/jobs/{index}/{f}"), None),
    }
}

/// Checks the whole batch and resolves each job's spec (drawing its seed).
pub fn validate(parsed: Parsed, limits: &Limits, max_jobs: usize) -> Result<Intake, ApiError> {
    let Parsed { header, jobs } = parsed;
    let mut problems = Problems::default();
    let engine = match header.engine.parse::<Engine>() {
        Ok(e) => Some(e),
        Err(msg) => {
            problems.push(FieldProblem::new("/engine", msg));
            None
        }
    };
    if let Some(name) = &header.name {
        check_name(name, &mut problems);
    }
    let metadata = header.metadata.unwrap_or_default();
    check_metadata(&metadata, &mut problems);
    let webhook = match header.webhook.as_ref().map(super::webhook::check) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(found)) => {
            found.into_iter().for_each(|p| problems.push(p));
            None
        }
    };
    if jobs.len() > max_jobs {
        return Err(too_many(max_jobs));
    }
    let base = header.params.unwrap_or_default();
    let (specs, uploads) = match engine {
        Some(engine) => resolve_jobs(engine, &base, &jobs, limits, &mut problems),
        None => Default::default(),
    };
    problems.into_result()?;
    Ok(Intake {
        engine: engine.expect("no errors means the engine parsed"),
        priority: header.priority.unwrap_or_default(),
        name: header.name.map(|n| n.trim().to_string()),
        metadata: serde_json::to_value(metadata).expect("metadata serializes"),
        retry_of: header.retry_of,
        webhook,
        jobs: specs,
        uploads,
    })
}

fn check_name(name: &str, problems: &mut Problems) {
    if name.trim().is_empty() {
        problems.push(FieldProblem::new("/name", "is empty"));
    } else if name.chars().count() > MAX_NAME_CHARS {
        problems.push(FieldProblem::new(
            "/name",
            format!("is longer than {MAX_NAME_CHARS} characters"),
        ));
    } else if name.chars().any(char::is_control) {
        problems.push(FieldProblem::new("/name", "contains a control character"));
    }
}

fn check_metadata(metadata: &BTreeMap<String, String>, problems: &mut Problems) {
    if metadata.len() > MAX_METADATA_ENTRIES {
        problems.push(FieldProblem::new(
            "/metadata",
            format!(
                "has {} entries; the limit is {MAX_METADATA_ENTRIES}",
                metadata.len()
            ),
        ));
    }
    for (k, v) in metadata {
        let ptr = format!("/metadata/{}", pointer_token(k));
        if k.is_empty() || k.chars().count() > MAX_METADATA_KEY {
            problems.push(FieldProblem::new(
                ptr,
                format!("keys are 1 to {MAX_METADATA_KEY} characters"),
            ));
        } else if v.chars().count() > MAX_METADATA_VALUE {
            problems.push(FieldProblem::new(
                ptr,
                format!("values are at most {MAX_METADATA_VALUE} characters"),
            ));
        } else if k.contains('\0') || v.contains('\0') {
            // PostgreSQL stores no NUL in text or JSON.
            problems.push(FieldProblem::new(
                ptr,
                "keys and values hold no NUL character",
            ));
        }
    }
}

/// Each job's own params over the batch's `base`, parsed into a spec with a
/// random seed; invalid fields go to `problems`.
fn resolve_jobs(
    engine: Engine,
    base: &ParamsDto,
    jobs: &[(Origin, JobRequest)],
    limits: &Limits,
    problems: &mut Problems,
) -> (store::batches::NewJobs, Vec<InitImage>) {
    let mut out = store::batches::NewJobs {
        ids: Vec::with_capacity(jobs.len()),
        prompts: Vec::with_capacity(jobs.len()),
        params: Vec::with_capacity(jobs.len()),
    };
    let mut uploads = Vec::new();
    let mut seen_batch_fields = BTreeSet::new();
    let mut rng = rand::thread_rng();
    for (index, (origin, job)) in jobs.iter().enumerate() {
        let own = job.params.clone().unwrap_or_default();
        let merged = base.overlay(&own);
        let seed = rng.gen_range(0..=MAX_SEED);
        match JobSpec::parse(engine, &job.prompt, &merged, seed, limits) {
            Ok(spec) => {
                if let Some(up) = spec.params().init_image() {
                    uploads.push(InitImage {
                        index,
                        origin: *origin,
                        upload: up.to_string(),
                        from_job: own.init_image.is_some(),
                    });
                }
                out.ids.push(Uuid::now_v7());
                out.prompts.push(spec.prompt().text().to_string());
                out.params
                    .push(serde_json::to_string(spec.params()).expect("params serialize"));
            }
            Err(e) => {
                let place = (*origin, index);
                job_problems(place, &own, e.errors, &mut seen_batch_fields, problems)
            }
        }
    }
    (out, uploads)
}

/// Points each error of a job at the job when the job set the field itself,
/// else at the batch's field, reported once for the whole batch.
fn job_problems(
    (origin, index): (Origin, usize),
    own: &ParamsDto,
    errors: Vec<FieldError>,
    seen_batch_fields: &mut BTreeSet<String>,
    problems: &mut Problems,
) {
    let own_json = serde_json::to_value(own).unwrap_or_default();
    for fe in errors {
        let field_name = fe.field.strip_prefix("params/");
        let from_job = field_name
            .map(|f| own_json.get(f).is_some_and(|v| !v.is_null()))
            .unwrap_or(true);
        if from_job {
            let (ptr, line) = job_pointer(origin, index, &fe.field);
            let message = match line {
                Some(n) => format!("line {n}: {}", fe.message),
                None => fe.message,
            };
            problems.push(FieldProblem {
                pointer: ptr,
                message,
                line,
            });
        } else if seen_batch_fields.insert(fe.field.clone()) {
            problems.push(FieldProblem::new(format!("/{}", fe.field), fe.message));
        }
    }
}

/// What the batch names in the store: the batch it retries and its init
/// images must belong to the tenant.
pub async fn check_references(
    tx: &mut store::Tx<'_>,
    tenant: &str,
    intake: &Intake,
) -> ApiResult<()> {
    let mut problems = Vec::new();
    if let Some(parent) = intake.retry_of {
        if !store::batches::hold(tx, tenant, parent).await? {
            problems.push(FieldProblem::new("/retry_of", format!("no batch {parent}")));
        }
    }
    if !intake.uploads.is_empty() {
        let ids: Vec<String> = intake
            .uploads
            .iter()
            .map(|u| u.upload.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let found: BTreeSet<String> = store::uploads::existing(tx, tenant, &ids)
            .await?
            .into_iter()
            .collect();
        let mut batch_level_reported = false;
        for u in &intake.uploads {
            if !found.contains(&u.upload) && problems.len() < MAX_ERRORS {
                let (ptr, line) = if u.from_job {
                    job_pointer(u.origin, u.index, "params/init_image")
                } else if batch_level_reported {
                    continue;
                } else {
                    batch_level_reported = true;
                    ("/params/init_image".to_string(), None)
                };
                problems.push(FieldProblem {
                    pointer: ptr,
                    message: format!(
                        "no upload {:?}; upload the image with POST /v1/uploads first",
                        u.upload
                    ),
                    line,
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::super::intake::{parse_json, parse_ndjson};
    use super::*;

    #[test]
    fn batch_level_errors_are_reported_once() {
        let parsed = parse_json(
            br#"{"engine":"test-pattern","params":{"width":17},"prompts":["a","b","c"]}"#,
        )
        .unwrap();
        let Err(ApiError::Validation { errors, .. }) = validate(parsed, &Limits::default(), 10)
        else {
            panic!()
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].pointer, "/params/width");
    }

    #[test]
    fn ndjson_errors_name_the_line() {
        let body = b"{\"engine\":\"test-pattern\"}\n{\"prompt\":\"a\"}\n\n{\"prompt\":\"\"}\n";
        let parsed = parse_ndjson(body, 10).unwrap();
        let Err(ApiError::Validation { errors, .. }) = validate(parsed, &Limits::default(), 10)
        else {
            panic!()
        };
        assert_eq!(errors[0].pointer, "/jobs/1/prompt");
        assert_eq!(errors[0].line, Some(4));
        assert!(
            errors[0].message.starts_with("line 4:"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn seeds_are_drawn_and_stored() {
        let parsed = parse_json(br#"{"engine":"test-pattern","prompts":["a","b"]}"#).unwrap();
        let intake = validate(parsed, &Limits::default(), 10).unwrap();
        let seeds: Vec<u64> = intake
            .jobs
            .params
            .iter()
            .map(|p| {
                serde_json::from_str::<serde_json::Value>(p).unwrap()["seed"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_ne!(seeds[0], seeds[1]);
        assert!(seeds.iter().all(|s| *s <= MAX_SEED));
    }
}
