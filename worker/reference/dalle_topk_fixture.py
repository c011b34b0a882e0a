"""DALL·E sampling with top_k > 1 and a temperature != 1, from min-dalle.

Writes worker/tests/fixtures/dalle/tiny_a_topk.safetensors for
worker/tests/dalle_parity.rs (`top_k_8_sampling_matches_min_dalle...`).

min-dalle's loop (`DalleBartDecoder.sample_tokens` inside
`MinDalle.generate_raw_image_stream`) runs on the `tiny_a` configuration of
dalle_fixtures.py (same weights, `dalle_weights.fill_module` with its seed)
for the first prompt, two images at once. Everything up to the draw is
min-dalle's own code: the supercondition blend, the top_k mask
(`logits >= sorted[top_k - 1]`), the shift by the maximum, the division by
the temperature and the exponential. Only the random draw is replaced:
`torch.multinomial(weights, 1)` becomes an inverse-CDF draw with stored
uniforms, so that a Rust test can replay it. The draw orders the kept codes
by weight, largest first (as Kiln's `sampling::draw` orders them, by
`topk`), accumulates the weights in float32 and takes the first code whose
running sum exceeds `u * total` (u rounded to float32). That order is a
convention both sides share; the weights it reads are min-dalle's.

Tensors:
    text_tokens [2, 64] int64     the prompt's two encoder rows
    settings [3] float64          temperature, top_k, supercondition factor
    uniform [256, 2] float64      one number in [0, 1) per step and image
    tokens [2, 256] int64         the image tokens min-dalle's loop picks
    not_best_share [1]       share of picks that are not the best code

Run from the repository root with the reference environment's python:
    python worker/reference/dalle_topk_fixture.py
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dalle_fixtures import CONFIGS, IMAGE_TOKEN_COUNT, MODEL_PROMPTS, text_rows  # noqa: E402
from dalle_weights import fill_module  # noqa: E402

from min_dalle.models import DalleBartDecoder, DalleBartEncoder  # noqa: E402
from min_dalle.text_tokenizer import TextTokenizer  # noqa: E402

torch.set_grad_enabled(False)
OUT = "worker/tests/fixtures/dalle"
TEMPERATURE = 2.5
TOP_K = 8
SUPERCONDITION = 3.0
IMAGES = 2


class InverseCdf:
    """Stands in for `torch.multinomial(weights, 1)` with stored uniforms."""

    def __init__(self, uniform):
        self.uniform = uniform  # [steps, images] float64
        self.step = 0
        self.not_best = 0

    def __call__(self, weights, num_samples):
        assert num_samples == 1
        u = self.uniform[self.step].to(torch.float32)
        self.step += 1
        kept = (weights > 0).sum(-1)
        assert bool((kept <= TOP_K).all()), kept
        w, order = weights.sort(stable=True, dim=-1, descending=True)
        cumulative = w[:, :TOP_K].cumsum(-1)
        target = (u * cumulative[:, -1]).unsqueeze(1).contiguous()
        pick = torch.searchsorted(cumulative.contiguous(), target, right=True).clamp(max=TOP_K - 1)
        self.not_best += int((pick != 0).sum())
        return order.gather(1, pick)


def main():
    name = "tiny_a"
    cfg = CONFIGS[name]
    with open(os.path.join(OUT, "vocab.json"), "r", encoding="utf8") as f:
        vocab = json.load(f)
    with open(os.path.join(OUT, "merges.txt"), "r", encoding="utf8") as f:
        merges = f.read().split("\n")[1:-1]
    tokenizer = TextTokenizer(vocab, merges)

    encoder = DalleBartEncoder(
        layer_count=cfg["layer_count"], embed_count=cfg["embed_count"],
        attention_head_count=cfg["attention_head_count"], text_vocab_count=cfg["text_vocab_count"],
        text_token_count=64, glu_embed_count=cfg["glu_embed_count"], device="cpu",
    ).eval()
    decoder = DalleBartDecoder(
        image_vocab_count=cfg["image_vocab_count"], embed_count=cfg["embed_count"],
        attention_head_count=cfg["attention_head_count"], glu_embed_count=cfg["glu_embed_count"],
        layer_count=cfg["layer_count"], device="cpu",
    ).eval()
    fill_module(encoder, cfg["seed"])
    fill_module(decoder, cfg["seed"])

    rows = torch.tensor(text_rows(tokenizer.tokenize(MODEL_PROMPTS[0])), dtype=torch.long)
    encoder_state = encoder.forward(rows)
    gen = torch.Generator().manual_seed(8)
    uniform = torch.rand((IMAGE_TOKEN_COUNT, IMAGES), generator=gen, dtype=torch.float64)
    draw = InverseCdf(uniform)

    # MinDalle.generate_raw_image_stream with torch.multinomial replaced.
    expanded = [0] * IMAGES + [1] * IMAGES
    text_tokens = rows[expanded]
    enc = encoder_state[expanded]
    attention_mask = text_tokens.not_equal(1)[:, None, None, :]
    attention_state = torch.zeros(
        size=(cfg["layer_count"], IMAGES * 4, IMAGE_TOKEN_COUNT, cfg["embed_count"]))
    image_tokens = torch.full((IMAGES, IMAGE_TOKEN_COUNT + 1), 2 ** 14 - 1, dtype=torch.long)
    token_indices = torch.arange(IMAGE_TOKEN_COUNT)
    settings = torch.tensor([TEMPERATURE, TOP_K, SUPERCONDITION], dtype=torch.float32)
    multinomial = torch.multinomial
    torch.multinomial = draw
    try:
        for i in range(IMAGE_TOKEN_COUNT):
            image_tokens[:, i + 1], attention_state = decoder.sample_tokens(
                settings=settings, attention_state=attention_state, attention_mask=attention_mask,
                encoder_state=enc, prev_tokens=image_tokens[:, [i]], token_index=token_indices[[i]])
    finally:
        torch.multinomial = multinomial
    assert draw.step == IMAGE_TOKEN_COUNT
    tokens = image_tokens[:, 1:].contiguous()
    share = draw.not_best / (IMAGES * IMAGE_TOKEN_COUNT)
    assert not torch.equal(tokens[0], tokens[1]), "the two images draw differently"
    save_file({
        "text_tokens": rows.contiguous(),
        "settings": torch.tensor([TEMPERATURE, TOP_K, SUPERCONDITION], dtype=torch.float64),
        "uniform": uniform,
        "tokens": tokens,
        "not_best_share": torch.tensor([share], dtype=torch.float64),
    }, os.path.join(OUT, f"{name}_topk.safetensors"))
    print(f"{name}: {share:.2f} of the picks are not the best code; first tokens",
          tokens[:, :8].tolist())


if __name__ == "__main__":
    main()
