"""Case 3 baseline: transformers' CLIPModel image embedding, images per second.

  python clip_hf.py --device cpu --batches 1,8 --dtype fp32 --seconds 5

ViT-B/32 (CLIPConfig's defaults are openai/clip-vit-base-patch32's sizes)
with random weights, eager PyTorch (no torch.compile), under no_grad.
Prints one JSON line: images/s per batch size.
"""
import argparse
import json
import time

import torch
import transformers
from transformers import CLIPConfig, CLIPModel

from common import DTYPES, sync, timed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=DTYPES)
    ap.add_argument("--batches", default="1,64,512")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per batch size (at least 3 runs)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = CLIPModel(CLIPConfig()).eval().to(dev, DTYPES[a.dtype])
    out = {"transformers": transformers.__version__, "torch": torch.__version__,
           "device": a.device, "dtype": a.dtype,
           "attn_implementation": model.config._attn_implementation, "batches": {}}
    for b in [int(x) for x in a.batches.split(",")]:
        x = torch.rand(b, 3, 224, 224, device=dev).to(DTYPES[a.dtype])

        def run():
            with torch.no_grad():
                f = model.get_image_features(pixel_values=x)
                if not torch.is_tensor(f):  # transformers 5 may return an output object
                    f = f.pooler_output if hasattr(f, "pooler_output") else f[0]
            return f

        s = timed(run, dev, a.seconds)
        out["batches"][str(b)] = {"seconds_per_batch": s, "images_per_s": b / s}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
