//! The OpenAPI document, generated from the handlers and types themselves.

mod links;

use crate::api;
use crate::config::Settings;
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
        api::batches::webhooks,
        api::stream::batch_events,
        api::stream::tenant_events,
        api::jobs::get,
        api::jobs::cancel,
        api::uploads::create,
        api::workers::list,
        api::workers::drain,
        api::health::healthz,
        api::health::readyz,
        api::health::metrics,
        api::health::openapi,
    ),
    components(schemas(
        kiln_protocol::api::BatchRequest,
        kiln_protocol::api::Batch,
        kiln_protocol::api::Counts,
        kiln_protocol::api::Job,
        kiln_protocol::api::JobResult,
        kiln_protocol::api::Progress,
        kiln_protocol::api::JobEvent,
        kiln_protocol::api::ProgressEvent,
        api::stream::StreamEvent,
        kiln_protocol::api::BatchPage,
        kiln_protocol::api::JobPage,
        kiln_protocol::api::BatchCancel,
        kiln_protocol::api::JobCancel,
        kiln_protocol::api::WebhookRequest,
        kiln_protocol::api::Webhook,
        kiln_protocol::api::WebhookEvent,
        kiln_protocol::api::WebhookDelivery,
        kiln_protocol::api::WebhookDeliveryPage,
        kiln_protocol::api::DeliveryState,
        kiln_protocol::api::Upload,
        kiln_protocol::api::JobState,
        kiln_protocol::api::Worker,
        kiln_protocol::api::WorkerList,
        kiln_protocol::api::WorkerDrain,
        kiln_protocol::api::WorkerState,
        api::health::Readiness,
        kiln_protocol::api::Problem,
        kiln_protocol::api::FieldProblem,
        kiln_protocol::ParamsDto,
        kiln_protocol::Priority,
        kiln_protocol::Engine,
    )),
    modifiers(&Bearer)
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

/// An upload's body is the image's bytes, as they are.
fn binary_uploads(doc: &mut serde_json::Value) {
    let content = &mut doc["paths"]["/v1/uploads"]["post"]["requestBody"]["content"];
    for media in ["image/png", "image/jpeg"] {
        content[media]["schema"] = serde_json::json!({ "type": "string", "format": "binary" });
    }
}

/// Every authenticated operation reads PostgreSQL (the token first): while
/// it is out of reach, each answers 503 with `Retry-After`.
fn unavailable_answers(doc: &mut serde_json::Value) {
    let answer = serde_json::json!({
        "description": "PostgreSQL (or, for uploads, the bucket; for a drain, the broker) is \
            out of reach; try again after the seconds Retry-After gives",
        "headers": { "Retry-After": { "schema": { "type": "integer", "minimum": 0 } } },
        "content": { "application/problem+json": {
            "schema": { "$ref": "#/components/schemas/Problem" }
        } },
    });
    let paths = doc["paths"].as_object_mut().expect("paths");
    for op in paths
        .values_mut()
        .flat_map(|item| item.as_object_mut().expect("a path item").values_mut())
    {
        if op.get("security").is_some() {
            op["responses"]["503"] = answer.clone();
        }
    }
}

/// The document as JSON text, stating the intake limits of `settings`.
pub fn openapi_json(settings: &Settings) -> String {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    api::batches::schema::document(&mut doc, settings);
    links::document(&mut doc);
    binary_uploads(&mut doc);
    unavailable_answers(&mut doc);
    serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes")
}
