"""Seconds per image of min-dalle (mini or mega, random weights), measured as
worker/examples/dalle_bench.rs measures Kiln: one prompt × `batch` images
decoded by MinDalle.generate_raw_image_stream's loop (top_k 256,
supercondition_factor 16), then the VQGanDetokenizer.

    python worker/reference/dalle_bench.py --preset mini --batch 1,8 [--device cuda] [--tokens 256]

`--tokens N < 256` decodes only the first N tokens and scales the decoding
time to 256. Prints one JSON line per batch size.
"""
import argparse
import json
import time

import torch
from min_dalle.models import DalleBartDecoder, DalleBartEncoder, VQGanDetokenizer

torch.set_grad_enabled(False)

PRESETS = {
    "mini": dict(layer_count=12, attention_head_count=16, embed_count=1024, glu_embed_count=2730,
                 text_vocab_count=50264, image_vocab_count=16384),
    "mega": dict(layer_count=24, attention_head_count=32, embed_count=2048, glu_embed_count=4096,
                 text_vocab_count=50272, image_vocab_count=16415),
}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    p = PRESETS[a.preset]
    torch.manual_seed(0)
    encoder = DalleBartEncoder(
        layer_count=p["layer_count"], embed_count=p["embed_count"],
        attention_head_count=p["attention_head_count"], text_vocab_count=p["text_vocab_count"],
        text_token_count=64, glu_embed_count=p["glu_embed_count"], device=a.device).eval().to(a.device)
    decoder = DalleBartDecoder(
        image_vocab_count=p["image_vocab_count"], embed_count=p["embed_count"],
        attention_head_count=p["attention_head_count"], glu_embed_count=p["glu_embed_count"],
        layer_count=p["layer_count"], device=a.device).eval().to(a.device)
    detokenizer = VQGanDetokenizer().eval().to(a.device)
    tokens = [0, 1000, 2000, 3000, 4000, 2]
    steps = min(a.tokens, 256)
    for image_count in [int(b) for b in a.batch.split(",")]:
        sync(a.device)
        cpu0 = time.process_time()
        start = time.perf_counter()
        text_tokens = torch.ones((2, 64), dtype=torch.long)
        text_tokens[0, :2] = torch.tensor([tokens[0], tokens[-1]])
        text_tokens[1, :len(tokens)] = torch.tensor(tokens)
        text_tokens = text_tokens.to(a.device)
        encoder_state = encoder.forward(text_tokens)
        expanded = [0] * image_count + [1] * image_count
        text_tokens = text_tokens[expanded]
        encoder_state = encoder_state[expanded]
        attention_mask = text_tokens.not_equal(1)[:, None, None, :]
        attention_state = torch.zeros(
            size=(p["layer_count"], image_count * 4, 256, p["embed_count"]), device=a.device)
        image_tokens = torch.full((image_count, 257), 2 ** 14 - 1, dtype=torch.long, device=a.device)
        token_indices = torch.arange(256, device=a.device)
        settings = torch.tensor([1.0, 256, 16.0], dtype=torch.float32, device=a.device)
        for i in range(steps):
            image_tokens[:, i + 1], attention_state = decoder.sample_tokens(
                settings=settings, attention_mask=attention_mask, encoder_state=encoder_state,
                attention_state=attention_state, prev_tokens=image_tokens[:, [i]],
                token_index=token_indices[[i]])
        sync(a.device)
        decode_s = (time.perf_counter() - start) * 256 / steps
        start = time.perf_counter()
        images = detokenizer.forward(False, image_tokens[:, 1:]) if image_count in (1, 4, 9, 16) else \
            torch.cat([detokenizer.forward(False, image_tokens[[k], 1:]) for k in range(image_count)])
        sync(a.device)
        detok_s = time.perf_counter() - start
        cpu_s = time.process_time() - cpu0
        del images
        print(json.dumps({"impl": "min-dalle", "preset": a.preset, "device": a.device,
                          "batch": image_count, "tokens_timed": steps, "decode_s": decode_s,
                          "detokenize_s": detok_s, "s_per_image": (decode_s + detok_s) / image_count, "cpu_s": cpu_s,
                          "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
