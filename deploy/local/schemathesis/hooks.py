"""Schemathesis hooks for Kiln's dispatcher (loaded by deploy/local/schemathesis/run).

- The NDJSON body of POST /v1/batches: the document describes it as a sequence
  (header line, then jobs); this serializer writes one JSON value per line.
- Rules the document states in words because JSON Schema cannot, applied to
  requests generated as valid (positive) so that they are valid for the server
  too: a prompt's weight grammar, `keep` at most the job's `candidates`,
  `retry_of` and `init_image` naming a batch and an upload of the tenant (the
  ones the run script made first), a drain naming the worker the run script
  reported. Requests generated as invalid are sent as generated.
- Uploads: valid bodies are decodable images (PNGs of random size and colour,
  and Schemathesis's own JPEG sample; the server tells them by their bytes).
- `other_tenant_gets_404`: every request that reached one of the first
  tenant's batches or jobs by id is sent again with the second tenant's token,
  which must get 404 (beside Schemathesis's object_level_authorization, which
  checks that the second tenant never gets the same object).
"""

import json
import os
import struct
import zlib

import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.core.file_samples import FILE_SAMPLES



@schemathesis.serializer("application/x-ndjson", "application/ndjson", "application/jsonl")
def ndjson(ctx, value):
    lines = value if isinstance(value, list) else [value]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@schemathesis.hook
def before_call(context, case, kwargs):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    label = case.operation.label
    if label == "POST /v1/batches":
        document = case.operation.schema.raw_schema
        if isinstance(case.body, dict):
            batch_as_sent(document, case.body, case.body.get("prompts"), case.body.get("jobs"))
        elif isinstance(case.body, list) and case.body and isinstance(case.body[0], dict):
            batch_as_sent(document, case.body[0], None, case.body[1:])
    elif label == "POST /v1/workers/{id}/drain":
        case.path_parameters["id"] = os.environ["KILN_ST_WORKER"]


# Requests that name one of the tenant's objects by id.
BY_ID = {
    "GET /v1/batches/{id}",
    "GET /v1/batches/{id}/jobs",
    "POST /v1/batches/{id}/cancel",
    "GET /v1/batches/{id}/webhooks",
    "GET /v1/jobs/{id}",
    "POST /v1/jobs/{id}/cancel",
}


@schemathesis.check
def other_tenant_gets_404(ctx, response, case):
    if case.operation.label not in BY_ID or not 200 <= response.status_code < 300:
        return None
    sent = response.request
    headers = {k: v for k, v in sent.headers.items() if k.lower() != "authorization"}
    headers["Authorization"] = "Bearer " + os.environ["KILN_ST_PEER"]
    peer = requests.request(sent.method, sent.url, headers=headers, data=sent.body, timeout=10)
    if peer.status_code != 404:
        raise AssertionError(
            f"the other tenant got {peer.status_code}, not 404, for {sent.method} {sent.url}"
        )
    return None


def default_candidates(document, engine):
    """The engine's default `candidates`, as the document states it."""
    name = "".join(word.capitalize() for word in engine.split("-")) + "Params"
    return document["components"]["schemas"][name]["properties"]["candidates"]["default"]


def batch_as_sent(document, header, prompts, jobs):
    """Makes a schema-valid batch valid for the server too, in place."""
    if header.get("retry_of") is not None:
        header["retry_of"] = os.environ["KILN_ST_BATCH"]
    base = header.get("params") or {}
    if base.get("init_image") is not None:
        base["init_image"] = os.environ["KILN_ST_UPLOAD"]
    if isinstance(prompts, list):
        prompts[:] = [plain(p) for p in prompts]
    default = base.get("candidates") or default_candidates(document, header["engine"])
    fewest = default
    for job in jobs or []:
        job["prompt"] = plain(job["prompt"])
        own = job.get("params") or {}
        if own.get("init_image") is not None:
            own["init_image"] = os.environ["KILN_ST_UPLOAD"]
        candidates = own.get("candidates") or default
        if own.get("keep") is not None:
            own["keep"] = min(own["keep"], candidates)
        elif own.get("candidates") is not None:
            fewest = min(fewest, candidates)
    if base.get("keep") is not None:
        base["keep"] = min(base["keep"], fewest)


def plain(prompt):
    """A prompt without `|` and `:`, so that its weight grammar holds: one
    part of weight 1 (the grammar itself is tested in protocol/src/spec/prompt.rs)."""
    if "|" not in prompt and ":" not in prompt:
        return prompt
    text = prompt.replace("|", " ").replace(":", " ")
    return text if text.strip(" \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
                              "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000") else "a prompt"


def png(width, height, rgb):
    """An RGB PNG of one colour."""
    raw = (b"\x00" + bytes(rgb) * width) * height

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


pngs = st.builds(png, st.integers(1, 48), st.integers(1, 48),
                 st.tuples(*[st.integers(0, 255)] * 3))
schemathesis.openapi.media_type("image/png", pngs)
schemathesis.openapi.media_type("image/jpeg", st.just(FILE_SAMPLES["jpg"]) | pngs)
