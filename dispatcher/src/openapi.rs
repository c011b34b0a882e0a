//! The OpenAPI document, generated from the handlers and types themselves.

use crate::api;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Kiln dispatcher", description = "Renders text prompts into images in bulk."),
    paths(
        api::batches::create,
        api::batches::list,
        api::batches::get,
        api::batches::jobs,
        api::batches::cancel,
        api::jobs::get,
        api::jobs::cancel,
        api::uploads::create,
        api::health::healthz,
        api::health::readyz,
        api::health::metrics,
        api::health::openapi,
    ),
    components(schemas(
        kiln_protocol::api::BatchRequest,
        kiln_protocol::api::JobRequest,
        kiln_protocol::api::Batch,
        kiln_protocol::api::Counts,
        kiln_protocol::api::Job,
        kiln_protocol::api::JobResult,
        kiln_protocol::api::Progress,
        kiln_protocol::api::BatchPage,
        kiln_protocol::api::JobPage,
        kiln_protocol::api::BatchCancel,
        kiln_protocol::api::JobCancel,
        kiln_protocol::api::Upload,
        kiln_protocol::api::JobState,
        api::health::Readiness,
        kiln_protocol::api::Problem,
        kiln_protocol::api::FieldProblem,
        kiln_protocol::ParamsDto,
        kiln_protocol::Priority,
        kiln_protocol::Engine,
    )),
    modifiers(&Bearer, &RequestConstraints)
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The request checks that JSON Schema can state, written into the
/// request schemas so that clients and fuzzers see them.
struct RequestConstraints;

impl Modify for RequestConstraints {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        constrain(
            components,
            "BatchRequest",
            api::batches::constrain_request_schema,
        );
        constrain(components, "JobRequest", |s| {
            api::batches::constrain_prompt_schema(&mut s["properties"]["prompt"])
        });
    }
}

/// Edits the component schema `name` as JSON.
fn constrain(
    components: &mut utoipa::openapi::Components,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let schema = components
        .schemas
        .get_mut(name)
        .unwrap_or_else(|| panic!("{name} is a component"));
    let mut value = serde_json::to_value(&*schema).expect("a schema serializes");
    edit(&mut value);
    *schema = serde_json::from_value(value).expect("the constrained schema is a schema");
}

/// The document as JSON text.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}
