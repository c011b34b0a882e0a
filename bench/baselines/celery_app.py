"""The Celery application of kiln-bench's baselines (cases 1 and 2).

Settings come from the environment, so that the submitting script and the
worker processes agree:

  BENCH_AMQP_URL        broker (a RabbitMQ virtual host of its own)
  BENCH_RESULT_BACKEND  e.g. db+postgresql://postgres@127.0.0.1:5432/NAME
  BENCH_CONFIRM         "1": publish with publisher confirms
  KILN_S3_ENDPOINT, KILN_S3_BUCKET, KILN_S3_REGION,
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   the bucket the render task writes to

The `render` task does what Kiln's `test-pattern` engine and worker do for
one job: the same pattern (same hash, same pixels), a PNG with text chunks,
and a metadata JSON, both put into the bucket at the same kind of key.
The broker and backend options are the usual reliable set: late acks,
prefetch 1, a persistent message in a durable queue, results in PostgreSQL.
"""
import hashlib
import json
import os
import struct
import time
import zlib

import numpy as np
from celery import Celery

app = Celery(
    "kiln_bench",
    broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("BENCH_RESULT_BACKEND") or None,
)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue="bench",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if os.environ.get("BENCH_CONFIRM") == "1":
    app.conf.broker_transport_options = {"confirm_publish": True}


@app.task(name="bench.noop")
def noop(prompt, params):
    """Never run: case 1 measures publishing alone."""
    return None


def pattern(prompt: str, seed: int, width: int, height: int) -> np.ndarray:
    """Kiln's test pattern (worker/src/engine/test_pattern.rs), pixel for pixel."""
    d = hashlib.sha256(prompt.encode() + b"\0" + struct.pack("<Q", seed)).digest()
    c0 = np.array(list(d[0:3]), dtype=np.uint32)
    c1 = np.array(list(d[3:6]), dtype=np.uint32)
    c2 = np.array(list(d[6:9]), dtype=np.uint32)
    cell = 4 + d[9] % 29
    flip = d[10] & 1 == 1
    span = max(width + height - 2, 1)
    y, x = np.mgrid[0:height, 0:width].astype(np.uint32)
    t = x + (height - 1 - y) if flip else x + y
    base = (c0[None, None, :] * (span - t)[..., None] + c1[None, None, :] * t[..., None]) // span
    other = (base + c2[None, None, :]) // 2
    checker = (((x // cell) + (y // cell)) % 2 == 0)[..., None]
    return np.where(checker, base, other).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(rgb: np.ndarray, text: dict) -> bytes:
    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[row].tobytes() for row in range(h))
    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))]
    for k, v in text.items():
        out.append(_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1", "replace")))
    out.append(_chunk(b"IDAT", zlib.compress(raw, 6)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


_s3 = None


def s3():
    global _s3
    if _s3 is None:
        import boto3
        from botocore.config import Config

        _s3 = boto3.client(
            "s3",
            endpoint_url=os.environ.get("KILN_S3_ENDPOINT", "http://127.0.0.1:3900"),
            region_name=os.environ.get("KILN_S3_REGION", "garage"),
            aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
        )
    return _s3


@app.task(name="bench.render", acks_late=True)
def render(prefix, prompt, seed, width, height):
    """One test-pattern job: render, encode, put the PNG and its metadata."""
    img = pattern(prompt, seed, width, height)
    params = {"width": width, "height": height, "seed": seed, "steps": 1}
    body = png(img, {"prompt": prompt, "seed": str(seed), "engine": "test-pattern",
                     "params": json.dumps(params)})
    bucket = os.environ.get("KILN_S3_BUCKET", "kiln")
    s3().put_object(Bucket=bucket, Key=f"{prefix}/0.png", Body=body, ContentType="image/png")
    meta = {"prompt": prompt, "engine": "test-pattern", "params": params,
            "results": [{"rank": 0, "seed": seed, "width": width, "height": height,
                         "key": f"{prefix}/0.png"}], "finished_at": time.time()}
    s3().put_object(Bucket=bucket, Key=f"{prefix}/metadata.json",
                    Body=json.dumps(meta).encode(), ContentType="application/json")
    return f"{prefix}/0.png"
