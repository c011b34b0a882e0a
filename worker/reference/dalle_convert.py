"""Converts min-dalle's published checkpoint into Kiln's dalle directory.

min-dalle publishes pickled state dicts (https://huggingface.co/kuprel/min-dalle:
encoder[_mini].pt, decoder[_mini].pt, detoker.pt, vocab[_mini].json,
merges[_mini].txt). Kiln loads safetensors with the same key names, so this
only re-serialises them:

    python worker/reference/dalle_convert.py --src DIR --out $KILN_MODELS/dalle [--mini]

- encoder.safetensors, decoder.safetensors: min-dalle's keys, float32;
- detokenizer.safetensors: taming's keys (`embedding.weight` becomes
  `quantize.embedding.weight`; `decoder.*` and `post_quant_conv.*` are
  unchanged), with detokenizer.json, taming's f16/16384 configuration with
  min-dalle's GroupNorm eps 1e-5;
- config.json: the mini or mega values of min_dalle.MinDalle;
- vocab.json, merges.txt copied.
"""
import argparse
import json
import os
import shutil

import torch
from safetensors.torch import save_file

MINI = dict(layer_count=12, embed_count=1024, attention_head_count=16, glu_embed_count=2730,
            text_vocab_count=50264, image_vocab_count=16384, text_token_count=64, image_token_count=256)
MEGA = dict(layer_count=24, embed_count=2048, attention_head_count=32, glu_embed_count=4096,
            text_vocab_count=50272, image_vocab_count=16415, text_token_count=64, image_token_count=256)
DETOKENIZER = dict(embed_dim=256, n_embed=16384, ddconfig=dict(
    double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
    ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0,
    norm_eps=1e-5))  # min-dalle's GroupNorms keep PyTorch's eps (taming's is 1e-6)


def taming_key(key: str) -> str:
    return "quantize.embedding.weight" if key == "embedding.weight" else key


def tensors(path, rename=lambda k: k):
    state = torch.load(path, map_location="cpu")
    return {rename(k): v.to(torch.float32).contiguous() for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mini", action="store_true")
    a = ap.parse_args()
    suffix = "_mini" if a.mini else ""
    os.makedirs(a.out, exist_ok=True)
    src = lambda name: os.path.join(a.src, name)  # noqa: E731
    save_file(tensors(src(f"encoder{suffix}.pt")), os.path.join(a.out, "encoder.safetensors"))
    save_file(tensors(src(f"decoder{suffix}.pt")), os.path.join(a.out, "decoder.safetensors"))
    save_file(tensors(src("detoker.pt"), taming_key), os.path.join(a.out, "detokenizer.safetensors"))
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(MINI if a.mini else MEGA, f, indent=1)
    with open(os.path.join(a.out, "detokenizer.json"), "w") as f:
        json.dump(DETOKENIZER, f, indent=1)
    shutil.copy(src(f"vocab{suffix}.json"), os.path.join(a.out, "vocab.json"))
    shutil.copy(src(f"merges{suffix}.txt"), os.path.join(a.out, "merges.txt"))


if __name__ == "__main__":
    main()
