"""min-dalle-layout `.pt` state dicts for Kiln's DALL·E conversion test
(worker/tests/dalle_convert.rs, `model_store::dalle::convert`).

Reads a Kiln dalle directory (encoder/decoder/detokenizer safetensors, as
`model_store::dalle::write_synthetic` writes them) and writes what min-dalle
publishes, under the names `models fetch` gives them:

    encoder.pt       min-dalle's encoder keys, float16 storages
    decoder.pt       min-dalle's decoder keys, float32 storages; one weight
                     saved as a transposed view, one as a view at an offset
                     into a larger storage
    detoker.pt       min-dalle's detokenizer keys (`embedding.weight`),
                     float16
    vocab.src.json, merges.src.txt   copies of vocab.json, merges.txt

    python worker/reference/dalle_pt_fixture.py --src KILN_DIR --out DIR
"""
import argparse
import collections
import os
import shutil

import torch
from safetensors.torch import load_file


def min_dalle_key(key: str) -> str:
    return "embedding.weight" if key == "quantize.embedding.weight" else key


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    src = lambda name: os.path.join(a.src, name)  # noqa: E731
    out = lambda name: os.path.join(a.out, name)  # noqa: E731

    enc = load_file(src("encoder.safetensors"))
    torch.save(collections.OrderedDict((k, v.half()) for k, v in sorted(enc.items())),
               out("encoder.pt"))

    dec = collections.OrderedDict(sorted(load_file(src("decoder.safetensors")).items()))
    two_d = [k for k, v in dec.items() if v.dim() == 2]
    transposed, offset = two_d[0], two_d[1]
    dec[transposed] = dec[transposed].t().contiguous().t()  # same values, strides swapped
    big = torch.cat([torch.zeros(5), dec[offset].flatten()])
    dec[offset] = big[5:].view(dec[offset].shape)  # a view at offset 5
    torch.save(dec, out("decoder.pt"))

    det = load_file(src("detokenizer.safetensors"))
    torch.save(collections.OrderedDict((min_dalle_key(k), v.half()) for k, v in sorted(det.items())),
               out("detoker.pt"))

    shutil.copy(src("vocab.json"), out("vocab.src.json"))
    shutil.copy(src("merges.txt"), out("merges.src.txt"))


if __name__ == "__main__":
    main()
