//! The submit request as the OpenAPI document states it: one request schema
//! per engine, whose parameters are closed and bounded by this dispatcher's
//! limits; `prompts` or `jobs`; the NDJSON body as a sequence of lines; the
//! bounds of `name`, `metadata` and each prompt.
//!
//! What JSON Schema cannot state is said in descriptions and checked on
//! intake only: a prompt's weights (`"a fox:1 | blurry:-0.5"`), `keep` at
//! most the job's `candidates`, and `retry_of` and `init_image` naming a
//! batch and an upload of the same tenant.

use super::intake::NDJSON;
use super::validate::{MAX_METADATA_ENTRIES, MAX_METADATA_KEY, MAX_METADATA_VALUE, MAX_NAME_CHARS};
use super::webhook;
use crate::config::Settings;
use kiln_protocol::api::webhook::MIN_SECRET_CHARS;
use kiln_protocol::spec::schema::params_schema;
use kiln_protocol::Engine;
use serde_json::{json, Map, Value};

/// No control character (Rust's `char::is_control`, category Cc), and a
/// character that is neither a control nor white space (Rust's `trim`).
const NOT_BLANK_NOR_CONTROL: &str = concat!(
    r"^[^\x00-\x1f\x7f-\x9f]*",
    r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]",
    r"[^\x00-\x1f\x7f-\x9f]*$"
);

/// No NUL character: PostgreSQL stores none in text or JSON.
const NO_NUL: &str = r"^[^\x00]*$";

fn component(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// `vqgan-clip` → `VqganClip`, the prefix of the engine's component names.
fn prefix(engine: Engine) -> String {
    engine
        .as_str()
        .split('-')
        .map(|w| w[..1].to_uppercase() + &w[1..])
        .collect()
}

/// Writes the request schemas into the document `doc`: `BatchRequest` as
/// one of the engines' requests, each engine's request, NDJSON header, job
/// and parameters, `Prompt`, and the NDJSON body of `POST /v1/batches`.
pub(crate) fn document(doc: &mut Value, settings: &Settings) {
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("the document has component schemas");
    let derived = schemas
        .remove("BatchRequest")
        .expect("BatchRequest is a component");
    let header = header_properties(&derived["properties"]);
    bound_webhook(schemas);
    let max_jobs = settings.max_batch_jobs;
    let mut requests = Vec::new();
    let mut lines = Vec::new();
    for engine in Engine::ALL {
        let p = prefix(engine);
        let mut props = header.clone();
        props.insert(
            "engine".into(),
            json!({ "type": "string", "const": engine.as_str() }),
        );
        props.insert("params".into(), or_null(component(&format!("{p}Params"))));
        // `null` stands for absent, in the header line as anywhere else.
        props.insert("prompts".into(), json!({ "type": "null" }));
        props.insert("jobs".into(), json!({ "type": "null" }));
        let mut header_line = closed(
            &format!("The NDJSON header line of a batch of engine {engine}."),
            props.clone(),
        );
        header_line["required"] = json!(["engine"]);
        schemas.insert(format!("{p}BatchHeader"), header_line);
        props.insert(
            "prompts".into(),
            json!({
                "type": ["array", "null"],
                "description": "One job per prompt, each with the batch's params.",
                "items": component("Prompt"),
                "minItems": 1,
                "maxItems": max_jobs,
            }),
        );
        props.insert(
            "jobs".into(),
            json!({
                "type": ["array", "null"],
                "description": "One job each; a job's params override the batch's.",
                "items": component(&format!("{p}Job")),
                "minItems": 1,
                "maxItems": max_jobs,
            }),
        );
        let mut request = closed(
            &format!("A batch of engine {engine}: prompts or jobs, not both."),
            props,
        );
        request["required"] = json!(["engine"]);
        let list = json!({ "type": "array" });
        request["oneOf"] = json!([
            { "required": ["prompts"], "properties": { "prompts": list } },
            { "required": ["jobs"], "properties": { "jobs": list } },
        ]);
        schemas.insert(format!("{p}Batch"), request);
        let mut job = Map::new();
        job.insert("prompt".into(), component("Prompt"));
        job.insert("params".into(), or_null(component(&format!("{p}Params"))));
        let mut job = closed(&format!("One job of engine {engine}."), job);
        job["required"] = json!(["prompt"]);
        schemas.insert(format!("{p}Job"), job);
        schemas.insert(
            format!("{p}Params"),
            params_schema(engine, &settings.limits()),
        );
        requests.push(component(&format!("{p}Batch")));
        lines.push(json!({
            "type": "array",
            "prefixItems": [component(&format!("{p}BatchHeader"))],
            "items": component(&format!("{p}Job")),
            "minItems": 2,
            "maxItems": max_jobs + 1,
        }));
    }
    schemas.insert(
        "BatchRequest".into(),
        json!({ "description": derived["description"], "oneOf": requests }),
    );
    schemas.insert("Prompt".into(), prompt_schema(settings.max_prompt_chars));
    // The protocol's `JobRequest` knows no engine; each engine's job replaces it.
    schemas.remove("JobRequest");
    let body = &mut doc["paths"]["/v1/batches"]["post"]["requestBody"]["content"];
    let ndjson = json!({
        "schema": {
            "description": "One JSON object per line: the batch's header line (a request \
                without prompts and jobs), then one job per line. Blank lines are skipped.",
            "oneOf": lines,
        },
        "example": [{ "engine": "test-pattern" }, { "prompt": "a red fox" }],
    });
    // Intake takes the same lines under three names.
    for media in NDJSON {
        body[media] = ndjson.clone();
    }
}

/// The request's own fields as the protocol's type documents them, with
/// the bounds intake checks.
fn header_properties(derived: &Value) -> Map<String, Value> {
    let mut props = Map::new();
    let mut name = derived["name"].clone();
    name["minLength"] = json!(1);
    name["maxLength"] = json!(MAX_NAME_CHARS);
    name["pattern"] = json!(NOT_BLANK_NOR_CONTROL);
    props.insert("name".into(), name);
    props.insert("priority".into(), derived["priority"].clone());
    let mut metadata = derived["metadata"].clone();
    metadata["maxProperties"] = json!(MAX_METADATA_ENTRIES);
    metadata["propertyNames"] = json!({
        "type": "string", "minLength": 1, "maxLength": MAX_METADATA_KEY, "pattern": NO_NUL,
    });
    metadata["additionalProperties"] =
        json!({"type": "string", "maxLength": MAX_METADATA_VALUE, "pattern": NO_NUL});
    props.insert("metadata".into(), metadata);
    let mut retry_of = derived["retry_of"].clone();
    retry_of["description"] = json!(
        "The batch this one retries (for example its failed jobs); a batch of the same tenant."
    );
    props.insert("retry_of".into(), retry_of);
    props.insert("webhook".into(), or_null(component("WebhookRequest")));
    props
}

/// The bounds intake checks on a webhook (`webhook::check`): the URL's form
/// and length, the secret's length, at least one event. Whether the URL's
/// host resolves to a public address is checked too, unless the server
/// allows private destinations, and is said in the description.
fn bound_webhook(schemas: &mut Map<String, Value>) {
    let w = schemas
        .get_mut("WebhookRequest")
        .expect("WebhookRequest is a component");
    w["additionalProperties"] = json!(false);
    let props = &mut w["properties"];
    props["url"]["pattern"] = json!(webhook::URL_PATTERN);
    props["url"]["maxLength"] = json!(webhook::MAX_URL_CHARS);
    props["url"]["description"] = json!(
        "An http or https URL: a host name whose last label starts with a letter, or a dotted \
         IPv4 address; an optional port; an optional path of visible ASCII. Unless the server \
         sets KILN_WEBHOOK_ALLOW_PRIVATE, its host must resolve, and only to public addresses \
         (not loopback, private, link-local or reserved): else 422."
    );
    props["secret"]["minLength"] = json!(MIN_SECRET_CHARS);
    props["secret"]["maxLength"] = json!(webhook::MAX_SECRET_CHARS);
    props["secret"]["pattern"] = json!(NO_NUL);
    props["events"]["minItems"] = json!(1);
}

/// `schema`, or `null` (which intake reads as absent).
fn or_null(schema: Value) -> Value {
    json!({ "oneOf": [{ "type": "null" }, schema] })
}

/// An object schema that takes only `props`.
fn closed(description: &str, props: Map<String, Value>) -> Value {
    json!({
        "type": "object",
        "description": description,
        "properties": props,
        "additionalProperties": false,
    })
}

/// What JSON Schema can state of a prompt (`Prompt::parse`).
fn prompt_schema(max_chars: usize) -> Value {
    json!({
        "type": "string",
        "description": "Text, with optional weighted parts: parts are separated by `|`, none \
            of them blank, and a part may end in `:weight` (`\"a red fox:1 | blurry:-0.5\"`); \
            at least one weight must be positive. What follows a part's last colon is its \
            weight when it is made of digits, `.`, `+`, `-`, `e` and `E` with at least one \
            digit, and must then be a finite number (`\"fox:1e\"` is refused); `nan` and \
            `inf` are refused; anything else after a colon is text \
            (`\"portrait: oil on canvas\"`). White space around the prompt is trimmed; \
            control characters are refused.",
        "minLength": 1,
        "maxLength": max_chars,
        "pattern": NOT_BLANK_NOR_CONTROL,
    })
}
