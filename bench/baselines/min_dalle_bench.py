"""Case 5 baseline: min-dalle, seconds per image for mini and mega.

  python min_dalle_bench.py --device cpu --models mini --batches 1,2 --runs 1

min-dalle's own modules (DalleBartEncoder, DalleBartDecoder,
VQGanDetokenizer) with random weights at the published sizes (the values of
MinDalle.__init__), driven by the loop of MinDalle.generate_raw_image_stream
copied here with one change: the image count is any number rather than a
square grid, so that batches of 8 can be measured. Its dtype handling
(weights in --dtype, autocast on CUDA) and per-token cache emptying are
kept as they are. Tokenization is left out (a fixed prompt of 12 tokens).
Prints one JSON line: seconds per call and per image for each model and batch.
"""
import argparse
import json
import statistics
import time

import numpy
import torch
from min_dalle.models import DalleBartDecoder, DalleBartEncoder, VQGanDetokenizer

from common import DTYPES, sync

IMAGE_TOKEN_COUNT = 256
SIZES = {
    "mini": dict(layer_count=12, attention_head_count=16, embed_count=1024, glu_embed_count=2730,
                 text_vocab_count=50264, image_vocab_count=16384),
    "mega": dict(layer_count=24, attention_head_count=32, embed_count=2048, glu_embed_count=4096,
                 text_vocab_count=50272, image_vocab_count=16415),
}


class Dalle:
    def __init__(self, name, device, dtype):
        s = SIZES[name]
        self.s, self.device, self.dtype = s, device, dtype
        self.encoder = DalleBartEncoder(
            attention_head_count=s["attention_head_count"], embed_count=s["embed_count"],
            glu_embed_count=s["glu_embed_count"], text_token_count=64,
            text_vocab_count=s["text_vocab_count"], layer_count=s["layer_count"], device=device,
        ).to(dtype).eval().to(device)
        self.decoder = DalleBartDecoder(
            image_vocab_count=s["image_vocab_count"], attention_head_count=s["attention_head_count"],
            embed_count=s["embed_count"], glu_embed_count=s["glu_embed_count"],
            layer_count=s["layer_count"], device=device,
        ).to(dtype).eval().to(device)
        self.detokenizer = VQGanDetokenizer().eval().to(device)

    def autocast(self, dtype):
        return torch.autocast("cuda", dtype=dtype, enabled=torch.device(self.device).type == "cuda")

    @torch.no_grad()
    def generate(self, image_count, seed=7, temperature=1.0, top_k=256, supercondition_factor=16):
        tokens = [0] + list(range(100, 110)) + [2]
        text_tokens = numpy.ones((2, 64), dtype=numpy.int32)
        text_tokens[0, :2] = [tokens[0], tokens[-1]]
        text_tokens[1, :len(tokens)] = tokens
        text_tokens = torch.tensor(text_tokens, dtype=torch.long, device=self.device)
        with self.autocast(self.dtype):
            encoder_state = self.encoder.forward(text_tokens)
        torch.cuda.empty_cache()
        with self.autocast(self.dtype):
            expanded_indices = [0] * image_count + [1] * image_count
            text_tokens = text_tokens[expanded_indices]
            encoder_state = encoder_state[expanded_indices]
            attention_mask = text_tokens.not_equal(1)[:, None, None, :]
            attention_state = torch.zeros(
                size=(self.s["layer_count"], image_count * 4, IMAGE_TOKEN_COUNT, self.s["embed_count"]),
                device=self.device,
            )
            image_tokens = torch.full((image_count, IMAGE_TOKEN_COUNT + 1), 2 ** 14 - 1,
                                      dtype=torch.long, device=self.device)
            if seed > 0:
                torch.manual_seed(seed)
        token_indices = torch.arange(IMAGE_TOKEN_COUNT, device=self.device)
        settings = torch.tensor([temperature, top_k, supercondition_factor], dtype=torch.float32,
                                device=self.device)
        for i in range(IMAGE_TOKEN_COUNT):
            torch.cuda.empty_cache()
            with self.autocast(self.dtype):
                image_tokens[:, i + 1], attention_state = self.decoder.sample_tokens(
                    settings=settings, attention_mask=attention_mask, encoder_state=encoder_state,
                    attention_state=attention_state, prev_tokens=image_tokens[:, [i]],
                    token_index=token_indices[[i]],
                )
        with self.autocast(torch.float32):
            return self.detokenize(image_tokens[:, 1:])

    def detokenize(self, z):
        # VQGanDetokenizer.forward without its square-grid reshape.
        d = self.detokenizer
        z = d.embedding.forward(z).view((z.shape[0], 2 ** 4, 2 ** 4, 2 ** 8))
        z = z.permute(0, 3, 1, 2).contiguous()
        z = d.decoder.forward(d.post_quant_conv.forward(z))
        return z.permute(0, 2, 3, 1).clip(0.0, 1.0) * 255


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=DTYPES)
    ap.add_argument("--models", default="mini,mega")
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--runs", type=int, default=1, help="timed runs per batch")
    ap.add_argument("--warmup", type=int, default=1, help="1: one untimed run at batch 1 first")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    if a.device.startswith("cuda"):
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.allow_tf32 = True
    dev = torch.device(a.device)
    import importlib.metadata as md

    out = {"min_dalle": md.version("min-dalle"), "torch": torch.__version__, "device": a.device,
           "dtype": a.dtype, "models": {}}
    for name in a.models.split(","):
        model = Dalle(name, a.device, DTYPES[a.dtype])
        if a.warmup:
            model.generate(1)
            sync(dev)
        res = {}
        for b in [int(x) for x in a.batches.split(",")]:
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                img = model.generate(b)
                img.to("cpu")
                sync(dev)
                times.append(time.perf_counter() - t)
            s = statistics.median(times)
            res[str(b)] = {"seconds_per_call": s, "seconds_per_image": s / b}
        out["models"][name] = res
        del model
        torch.cuda.empty_cache()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
