#!/usr/bin/env python3
"""`transformers`' eager CLIP image-encoder throughput, the baseline for
`cargo run -p kiln-worker --example clip_bench` (same random-weight ViT-B/32,
same batch sizes, same device and dtype; run both on the same machine).

    ~/.cache/kiln/venv/bin/python worker/reference/clip_bench.py --device cpu --batch 1 --batch 8
    python3 worker/reference/clip_bench.py --device cuda --dtype f16 --batch 1 --batch 64 --batch 512

Prints one JSON line per batch size, with the fields the Rust example prints.
"""

import argparse
import json
import time

import torch
from transformers import CLIPConfig, CLIPModel

PRESETS = {
    "b32": dict(vision_config=dict(patch_size=32)),
    "b16": dict(vision_config=dict(patch_size=16)),
    "l14": dict(text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
                vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                   num_attention_heads=16, patch_size=14),
                projection_dim=768),
}
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="b32", choices=PRESETS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=DTYPES)
    p.add_argument("--batch", type=int, action="append")
    p.add_argument("--iters", type=int, default=5)
    a = p.parse_args()
    dtype = DTYPES[a.dtype or ("f16" if a.device.startswith("cuda") else "f32")]
    cfg = CLIPConfig(**PRESETS[a.model])
    cfg._attn_implementation = "eager"
    model = CLIPModel(cfg).eval().to(a.device, dtype)
    size = cfg.vision_config.image_size
    for b in a.batch or [1, 8]:
        x = torch.randn(b, 3, size, size, device=a.device, dtype=dtype)

        def run():
            with torch.no_grad():
                model.get_image_features(pixel_values=x)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()

        run()
        times = []
        for _ in range(max(1, a.iters)):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        times.sort()
        median = times[len(times) // 2]
        print(json.dumps({"model": a.model, "device": a.device, "kind": str(dtype), "threads": torch.get_num_threads(),
                          "batch": b, "ms_per_batch": median * 1e3, "ms_per_batch_min": times[0] * 1e3,
                          "images_per_s": b / median, "impl": "transformers-eager"}))


if __name__ == "__main__":
    main()
