//! Links between operations: what an answer's ids lead to, so that clients
//! and stateful fuzzers can walk real sequences (create a batch, read it,
//! list its jobs, read and cancel one of them, cancel the batch, list its
//! webhook deliveries; list the workers and drain one).

use serde_json::{json, Value};

/// `(operation, status, link name, target operation, id expression)`.
const LINKS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "createBatch",
        "201",
        "GetBatch",
        "getBatch",
        "$response.body#/id",
    ),
    (
        "createBatch",
        "201",
        "ListBatchJobs",
        "listBatchJobs",
        "$response.body#/id",
    ),
    (
        "createBatch",
        "201",
        "CancelBatch",
        "cancelBatch",
        "$response.body#/id",
    ),
    (
        "listBatches",
        "200",
        "GetBatch",
        "getBatch",
        "$response.body#/items/0/id",
    ),
    (
        "getBatch",
        "200",
        "ListBatchJobs",
        "listBatchJobs",
        "$response.body#/id",
    ),
    (
        "getBatch",
        "200",
        "CancelBatch",
        "cancelBatch",
        "$response.body#/id",
    ),
    (
        "listBatchJobs",
        "200",
        "GetJob",
        "getJob",
        "$response.body#/items/0/id",
    ),
    (
        "listBatchJobs",
        "200",
        "CancelJob",
        "cancelJob",
        "$response.body#/items/0/id",
    ),
    (
        "getJob",
        "200",
        "CancelJob",
        "cancelJob",
        "$response.body#/id",
    ),
    (
        "getJob",
        "200",
        "GetBatch",
        "getBatch",
        "$response.body#/batch_id",
    ),
    (
        "cancelJob",
        "200",
        "GetJob",
        "getJob",
        "$response.body#/job/id",
    ),
    (
        "getBatch",
        "200",
        "ListBatchWebhooks",
        "listBatchWebhooks",
        "$response.body#/id",
    ),
    (
        "cancelBatch",
        "200",
        "ListBatchWebhooks",
        "listBatchWebhooks",
        "$response.body#/batch/id",
    ),
    (
        "cancelBatch",
        "200",
        "GetBatch",
        "getBatch",
        "$response.body#/batch/id",
    ),
    (
        "listWorkers",
        "200",
        "DrainWorker",
        "drainWorker",
        "$response.body#/items/0/id",
    ),
];

/// Writes [`LINKS`] into the responses of `doc`.
pub fn document(doc: &mut Value) {
    for (from, status, name, to, id) in LINKS {
        let op = operation(doc, from);
        let response = &mut op["responses"][*status];
        assert!(response.is_object(), "{from} answers {status}");
        response["links"][*name] = json!({
            "operationId": to,
            "parameters": { "id": id },
        });
    }
}

/// The operation with id `id`.
fn operation<'d>(doc: &'d mut Value, id: &str) -> &'d mut Value {
    doc["paths"]
        .as_object_mut()
        .expect("paths")
        .values_mut()
        .flat_map(|item| item.as_object_mut().expect("a path item").values_mut())
        .find(|op| op["operationId"] == id)
        .unwrap_or_else(|| panic!("no operation {id}"))
}
