"""Writes the DALL·E parity fixtures of Kiln's worker tests from min-dalle.

Run from the repository root with the reference environment's python:
    python worker/reference/dalle_fixtures.py [--out worker/tests/fixtures/dalle]

What it writes (all from min-dalle's own modules and tokenizer):
- vocab.json, merges.txt: a small byte-pair vocabulary trained here on a
  fixed corpus (the published BART vocabulary cannot be downloaded here);
- tokenizer.json: >= 200 varied prompts with min-dalle's TextTokenizer ids
  and the two 64-token rows min-dalle builds from them;
- tiny_a.* and tiny_b.*: two tiny random configurations (weights from
  dalle_weights.synthetic): encoder states, the decoder's logits for the first
  steps with the key/value cache in use, and the top_k = 1 token sequences
  of three prompts decoded by min-dalle's sampling loop;
- detokenizer.safetensors: min-dalle's VQGanDetokenizer (synthetic weights)
  decoding one token grid: its raw decoder output and its final image.
"""
import argparse
import json
import os
import random
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dalle_weights import fill_module  # noqa: E402

from min_dalle.models import DalleBartDecoder, DalleBartEncoder, VQGanDetokenizer  # noqa: E402
from min_dalle.text_tokenizer import TextTokenizer  # noqa: E402

torch.set_grad_enabled(False)
IMAGE_TOKEN_COUNT = 256
TEXT_TOKEN_COUNT = 64

CORPUS = """
a painting of a red fox in the snow at dawn, oil on canvas
an astronaut riding a horse on the moon, digital art, highly detailed
the city skyline at night with neon lights and rain reflections
a bowl of ramen with eggs and green onions, studio photograph
portrait of an old sailor with a white beard, dramatic lighting
a small wooden cabin in a pine forest beside a frozen lake
a cat wearing sunglasses sitting on a beach chair under the sun
watercolor sketch of a lighthouse on a cliff above stormy waves
a futuristic train crossing a desert bridge at sunset
the mona lisa as a lego figure, product photo
an avocado armchair, a teapot shaped like a pumpkin, a glass of orange juice
children playing football in the street of an old town
a dragon made of clouds flying over mountains and rivers
blueprint of a spaceship engine with notes and measurements
a vintage poster for a jazz festival in new orleans
minimalist logo of a mountain and a sun, flat vector
close up of a bee on a yellow flower, macro photography
a medieval castle in the style of studio ghibli
the scream by edvard munch but it is a dog
three robots having tea in an english garden
"""


def train_bpe(corpus: str, merges_count: int):
    """Plain byte-pair training on words prefixed by min-dalle's space marker."""
    space = chr(ord(" ") + 256)
    words = {}
    for w in corpus.lower().split():
        key = tuple([space] + list(w))
        words[key] = words.get(key, 0) + 1
    merges = []
    for _ in range(merges_count):
        counts = {}
        for w, f in words.items():
            for a, b in zip(w[:-1], w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + f
        if not counts:
            break
        best = max(sorted(counts), key=lambda p: counts[p])
        merges.append(best)
        new_words = {}
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + f
        words = new_words
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    # Leave a few characters out so that unknown subwords occur.
    base = [space] + [chr(c) for c in range(33, 127) if chr(c) not in "~^`|"]
    for tok in base + [a + b for a, b in merges]:
        if tok not in vocab:
            vocab[tok] = len(vocab)
    # Merges whose result is missing from the vocabulary give <unk>, as in
    # any hand-edited vocabulary.
    for tok in list(vocab)[-5:]:
        del vocab[tok]
    return vocab, merges


def varied_prompts(count: int):
    from emoji import unicode_codes

    unicode_codes.load_from_json("en")
    emoji_keys = sorted(unicode_codes.EMOJI_DATA)
    rng = random.Random(20240607)
    words = CORPUS.split()
    extra = ["Café", "naïve", "İstanbul", "\u212a", "straße", "ΣΊΣΥΦΟΣ", "東京", "x²", "½", "—",
             "don't", "#1", "100%", "e-mail", "C++", "~tilde~", "a^b", "`code`", "pipe|", "émigré"]
    fixed = [
        "a red fox",
        "A RED FOX",
        "  leading and trailing spaces  ",
        "many     spaces   between",
        "tab\tand\nnewline",
        "👍🏽 thumbs",
        "keycap #️⃣ and #⃣ and 1️⃣",
        "family 👨‍👩‍👧 here",
        "non-standard 👍‍🔥 join",
        "flag 🇺🇸🇫🇷",
        "❤️❤ hearts",
        "skin tone alone 🏽",
        "emoji🦊without spaces",
        "",
        "!!!",
        "Ünïcödé ÀÉÎÕÜ",
        "\u212a kelvin and \u0130 dotted",
        " ".join(words[:80]),
        "x" * 300,
    ]
    prompts = list(fixed)
    while len(prompts) < count:
        n = rng.randint(1, 25)
        parts = []
        for _ in range(n):
            r = rng.random()
            if r < 0.7:
                w = rng.choice(words)
            elif r < 0.85:
                w = rng.choice(emoji_keys)
            elif r < 0.95:
                w = rng.choice(extra)
            else:
                w = "".join(rng.choice(emoji_keys) for _ in range(rng.randint(2, 4)))
            if rng.random() < 0.2:
                w = w.upper() if rng.random() < 0.5 else w.capitalize()
            parts.append(w)
        sep = " " if rng.random() < 0.8 else rng.choice(["  ", ", ", " - ", ""])
        prompts.append(sep.join(parts))
    return prompts


def text_rows(tokens):
    """min-dalle's MinDalle.generate_raw_image_stream: the two encoder rows."""
    if len(tokens) > TEXT_TOKEN_COUNT:
        tokens = tokens[:TEXT_TOKEN_COUNT]
    rows = np.ones((2, 64), dtype=np.int32)
    rows[0, :2] = [tokens[0], tokens[-1]]
    rows[1, : len(tokens)] = tokens
    return rows


CONFIGS = {
    # Shaped like mini (image vocabulary 16384) and like mega (16415).
    "tiny_a": dict(layer_count=2, embed_count=32, attention_head_count=4, glu_embed_count=48,
                   text_vocab_count=700, image_vocab_count=16384, seed=11),
    "tiny_b": dict(layer_count=3, embed_count=48, attention_head_count=6, glu_embed_count=70,
                   text_vocab_count=720, image_vocab_count=16415, seed=12),
}
MODEL_PROMPTS = ["a red fox in the snow", "an astronaut riding a horse", "the city skyline at night"]
LOGIT_STEPS = 3


def model_fixture(name, cfg, tokenizer, out):
    seed = cfg["seed"]
    encoder = DalleBartEncoder(
        layer_count=cfg["layer_count"], embed_count=cfg["embed_count"],
        attention_head_count=cfg["attention_head_count"], text_vocab_count=cfg["text_vocab_count"],
        text_token_count=TEXT_TOKEN_COUNT, glu_embed_count=cfg["glu_embed_count"], device="cpu",
    ).eval()
    decoder = DalleBartDecoder(
        image_vocab_count=cfg["image_vocab_count"], embed_count=cfg["embed_count"],
        attention_head_count=cfg["attention_head_count"], glu_embed_count=cfg["glu_embed_count"],
        layer_count=cfg["layer_count"], device="cpu",
    ).eval()
    fill_module(encoder, seed)
    fill_module(decoder, seed)

    supercondition_factor = 16.0 if name == "tiny_a" else 3.0
    all_rows, all_states, sequences, logits_steps = [], [], [], []
    for p, prompt in enumerate(MODEL_PROMPTS):
        rows = torch.tensor(text_rows(tokenizer.tokenize(prompt)), dtype=torch.long)
        encoder_state = encoder.forward(rows)
        all_rows.append(rows)
        all_states.append(encoder_state)

        # MinDalle.generate_raw_image_stream, two images of the prompt, top_k = 1.
        image_count = 2
        expanded = [0] * image_count + [1] * image_count
        text_tokens = rows[expanded]
        enc = encoder_state[expanded]
        attention_mask = text_tokens.not_equal(1)[:, None, None, :]
        attention_state = torch.zeros(
            size=(cfg["layer_count"], image_count * 4, IMAGE_TOKEN_COUNT, cfg["embed_count"]))
        image_tokens = torch.full((image_count, IMAGE_TOKEN_COUNT + 1), 2 ** 14 - 1, dtype=torch.long)
        token_indices = torch.arange(IMAGE_TOKEN_COUNT)
        settings = torch.tensor([1.0, 1, supercondition_factor], dtype=torch.float32)
        for i in range(IMAGE_TOKEN_COUNT):
            kwargs = dict(attention_mask=attention_mask, encoder_state=enc,
                          prev_tokens=image_tokens[:, [i]], token_index=token_indices[[i]])
            if p == 0 and i < LOGIT_STEPS:
                logits, _ = decoder.forward(attention_state=attention_state.clone(), **kwargs)
                # rows: [uncond image 0, cond image 0]
                logits_steps.append(logits[[0, image_count], -1, :].numpy())
            image_tokens[:, i + 1], attention_state = decoder.sample_tokens(
                settings=settings, attention_state=attention_state, **kwargs)
        assert torch.equal(image_tokens[0], image_tokens[1])
        sequences.append(image_tokens[0, 1:].numpy())

    tensors = {
        "text_tokens": torch.cat(all_rows).numpy().astype(np.int64),
        "encoder_state": torch.cat(all_states).numpy(),
        "step_logits": np.stack(logits_steps).astype(np.float32),
        "tokens_top1": np.stack(sequences).astype(np.int64),
    }
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(out, f"{name}.safetensors"))
    meta = {k: v for k, v in cfg.items() if k != "seed"}
    meta["text_token_count"] = TEXT_TOKEN_COUNT
    meta["image_token_count"] = IMAGE_TOKEN_COUNT
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump({"config": meta, "seed": seed, "prompts": MODEL_PROMPTS,
                   "supercondition_factor": supercondition_factor, "logit_steps": LOGIT_STEPS},
                  f, indent=1)
    return tensors["tokens_top1"]


DETOKENIZER_SEED = 21


def detokenizer_fixture(tokens, out):
    detok = VQGanDetokenizer().eval()
    fill_module(detok, DETOKENIZER_SEED)
    z = torch.tensor(tokens, dtype=torch.long).reshape(1, IMAGE_TOKEN_COUNT)
    image = detok.forward(False, z)  # [256, 256, 3], clip(0, 1) * 255

    def raw_output():
        # VQGanDetokenizer.forward, stopped before clipping.
        e = detok.embedding.forward(z).view((1, 16, 16, 256)).permute(0, 3, 1, 2).contiguous()
        return detok.decoder.forward(detok.post_quant_conv.forward(e))

    raw = raw_output()
    assert torch.allclose(raw.permute(0, 2, 3, 1)[0].clip(0, 1) * 255, image)
    # min-dalle's GroupNorms keep PyTorch's eps 1e-5; so does Kiln's
    # detokenizer configuration (taming's VQGAN uses 1e-6).
    assert all(m.eps == 1e-5 for m in detok.modules() if isinstance(m, torch.nn.GroupNorm))
    save_file({"tokens": z.numpy(), "raw": raw.numpy().astype(np.float32),
               "image": image.to(torch.uint8).contiguous().numpy()},
              os.path.join(out, "detokenizer.safetensors"))
    print("detokenizer: raw range", float(raw.min()), float(raw.max()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="worker/tests/fixtures/dalle")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    vocab, merges = train_bpe(CORPUS, 400)
    with open(os.path.join(args.out, "vocab.json"), "w", encoding="utf8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(args.out, "merges.txt"), "w", encoding="utf8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    # Read back exactly as MinDalle.init_tokenizer does.
    with open(os.path.join(args.out, "vocab.json"), "r", encoding="utf8") as f:
        vocab = json.load(f)
    with open(os.path.join(args.out, "merges.txt"), "r", encoding="utf8") as f:
        merges = f.read().split("\n")[1:-1]
    tokenizer = TextTokenizer(vocab, merges)

    cases = []
    for prompt in varied_prompts(240):
        ids = tokenizer.tokenize(prompt)
        cases.append({"text": prompt, "ids": ids, "rows": text_rows(ids).tolist()})
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)
    print("tokenizer:", len(cases), "prompts,", len(vocab), "vocabulary entries,", len(merges), "merges")

    sequences = None
    for name, cfg in CONFIGS.items():
        assert cfg["text_vocab_count"] >= len(vocab) + 5
        sequences = model_fixture(name, cfg, tokenizer, args.out)
        print(name, "first tokens", sequences[0][:8].tolist())
    detokenizer_fixture(sequences[0], args.out)


if __name__ == "__main__":
    main()
