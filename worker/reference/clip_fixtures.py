#!/usr/bin/env python3
"""Reference fixtures for Kiln's CLIP (worker/src/models/clip).

Everything here comes from the reference packages, never from Kiln:
- `transformers`' CLIPModel (eager attention) for two tiny random-weight
  configurations: weights, inputs and the reference embeddings and logits;
- `clip-anytorch`'s `clip.tokenize` (OpenAI's tokenizer) for the token ids of
  a varied prompt list;
- `transformers`' CLIPImageProcessor, built with explicit parameters, for the
  pixel values of a few real-size images made here;
- `clip-anytorch`'s own CLIP (OpenAI's `model.py`) for a tiny checkpoint in
  OpenAI's released format (a traced TorchScript archive with fp16 weights,
  as `ViT-B-32.pt`) and its `encode_text`/`encode_image` outputs, to check
  the conversion to the Hugging Face layout;
- Python's `html.entities.html5`, the table behind `html.unescape`, which the
  tokenizer's text cleaning uses (written next to the bundled vocabulary).

Regenerate everything with one command from the repository root:

    ~/.cache/kiln/venv/bin/python worker/reference/clip_fixtures.py

Deterministic: fixed seeds, no downloads.
"""

import html.entities
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import clip  # clip-anytorch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "clip"
VOCAB_DIR = ROOT / "src" / "models" / "clip" / "vocab"

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Two tiny configurations that differ in every dimension the code branches on.
CONFIGS = {
    # Legacy text config (eos_token_id == 2): pooling at the argmax of the ids.
    "tiny_a": dict(
        text=dict(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                  layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision=dict(hidden_size=40, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                    image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=24,
        batch_text=3,
        batch_image=2,
    ),
    # Current text config: pooling at the first eos_token_id, padded with eos.
    "tiny_b": dict(
        text=dict(vocab_size=700, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                  num_attention_heads=3, max_position_embeddings=20, hidden_act="gelu",
                  layer_norm_eps=1e-6, bos_token_id=698, eos_token_id=5, pad_token_id=5),
        vision=dict(hidden_size=24, intermediate_size=56, num_hidden_layers=3, num_attention_heads=2,
                    image_size=36, patch_size=12, hidden_act="gelu", layer_norm_eps=1e-6),
        projection_dim=16,
        batch_text=4,
        batch_image=3,
    ),
}


def make_model(name, spec, seed):
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=spec["text"], vision_config=spec["vision"],
                        projection_dim=spec["projection_dim"], logit_scale_init_value=2.6592)
    config._attn_implementation = "eager"
    model = CLIPModel(config).eval()
    # HF's init leaves biases at 0 and norms at 1; draw every parameter so that
    # each weight (and each bias) matters for the outputs.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname == "logit_scale":
                p.fill_(1.7 + 0.5 * torch.rand(()).item())
            elif p.dim() == 1 and ("layer_norm" in pname or "layrnorm" in pname or "layernorm" in pname):
                if pname.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                else:
                    p.copy_(0.1 * torch.randn_like(p))
            elif pname.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
            elif pname.endswith("class_embedding"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else p.shape[0]
                if p.dim() == 4:
                    fan_in = p[0].numel()
                scale = 0.5 if "embedding" in pname else 1.0 / fan_in**0.5
                p.copy_(scale * torch.randn_like(p))
    return model


def text_ids(spec, gen):
    t = spec["text"]
    vocab, length = t["vocab_size"], t["max_position_embeddings"]
    eos = t["eos_token_id"]
    rows = []
    for i in range(spec["batch_text"]):
        n = [3, length - 2, 7, 1][i % 4]  # includes a full-length row
        if eos == 2:
            # OpenAI layout: SOT, tokens, EOT (the largest id), zero padding.
            body = torch.randint(3, vocab - 2, (n,), generator=gen)
            row = torch.cat([torch.tensor([vocab - 2]), body, torch.tensor([vocab - 1])])
            row = torch.cat([row, torch.zeros(length - row.numel(), dtype=torch.long)])
        else:
            # eos is a small id and also pads; larger ids occur before it, so
            # argmax pooling would pick the wrong position.
            body = torch.randint(6, vocab - 2, (n,), generator=gen)
            row = torch.cat([torch.tensor([t["bos_token_id"]]), body, torch.tensor([eos])])
            row = torch.cat([row, torch.full((length - row.numel(),), eos, dtype=torch.long)])
        rows.append(row[:length])
    return torch.stack(rows).long()


def write_models():
    for k, (name, spec) in enumerate(CONFIGS.items()):
        model = make_model(name, spec, seed=1000 + k)
        d = OUT / name
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        gen = torch.Generator().manual_seed(2000 + k)
        ids = text_ids(spec, gen)
        size = spec["vision"]["image_size"]
        pixels = torch.randn(spec["batch_image"], 3, size, size, generator=gen)
        with torch.no_grad():
            text = model.get_text_features(input_ids=ids).pooler_output
            image = model.get_image_features(pixel_values=pixels).pooler_output
            out = model(input_ids=ids, pixel_values=pixels)
        save_file(
            {
                "input_ids": ids.contiguous(),
                "pixel_values": pixels.contiguous(),
                "text_embeds": text.contiguous(),
                "image_embeds": image.contiguous(),
                "logits_per_image": out.logits_per_image.contiguous(),
                "logit_scale": model.logit_scale.detach().clone().reshape(()),
            },
            str(d / "reference.safetensors"),
        )
        print(f"{name}: text {tuple(text.shape)}, image {tuple(image.shape)}")


def prompts():
    """At least 200 varied prompts; deterministic."""
    fixed = [
        "", " ", "a", "A photo of a cat", "a photo of a dog.", "An astronaut riding a horse on Mars",
        "a red fox:1 | blurry:-0.5", "hello, world!!!", "what's up? it's fine; we'll see. I'M here, they've gone, she'd go",
        "DON'T STOP", "rock'n'roll", "3.14159", "1,000,000 dollars", "2023-10-01T12:30:00Z", "route 66",
        "R2-D2 and C-3PO", "4k 8K HDR 1080p", "#hashtag @mention $100 50% off & more",
        "email me at someone@example.com", "https://example.com/path?query=1&x=2", "C:\\Users\\kiln\\image.png",
        "a+b=c; x*y/z; (1 + 2) * [3 - 4] {5}", "<html><body>tags</body></html>", "~!@#$%^&*()_+`-=[]\\{}|;':\",./<>?",
        "...", "!!!???", "—— dashes – and hyphens -", "tabs\tand\nnewlines\r\nand   many    spaces",
        "café", "naïve résumé", "Ångström", "Zürich über Straße", "São Paulo à noite", "Œuvre d'art, Ærø",
        "crème brûlée façade", "piñata jalapeño", "Dvořák Łódź", "e\u0301 combining accent", "ﬁne ﬂower ﬀ",
        "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ １２３", "ｶﾀｶﾅ halfwidth", "“curly quotes” and ‘single’ ones", "it’s a dog’s life",
        "&amp; &lt;b&gt; &quot;quoted&quot; &#39;apos&#39; &#x263A; &eacute;t&eacute; &copy 2024 &notin; &notit;",
        "&amp;amp; double escaped", "AT&T and R&D", "fish &chips", "&#0; &#128; &#x110000; &#65;&#66;",
        "🦊 fox emoji", "👩‍👩‍👧 family", "🇯🇵 flag 🇫🇷", "👍🏽 thumbs", "❤️ love ☕ coffee ✨ sparkles", "🙂🙃😀😁😂🤣",
        "日本語のテキスト", "中文提示词：一只猫", "한국어 프롬프트", "Привет, мир", "Ελληνικά ΟΔΟΣ ΣΟΦΟΣ",
        "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก", "עברית", "Tiếng Việt có dấu", "ქართული",
        "İstanbul ıı İİ", "ǅemal ǈubljana", "ß ẞ ﬆ", "Ⅻ roman numeral Ⅳ", "½ ¾ ² ³ ⁴", "٣ ٤ ५ ६ 七",
        "x²+y²=z²", "H₂O CO₂", "€100 £50 ¥1000 ₹20", "°C ±5 µm Ω", "™ ® ©", "• bullet · middot",
        "<|startoftext|>", "a <|endoftext|> b", "<|ENDOFTEXT|>", "zero\u200bwidth", "soft\u00adhyphen",
        "non\u00a0breaking\u00a0space", "ideographic\u3000space", "bom\ufefftext", "trailing space   ",
        "   leading space", "MiXeD CaSe WoRdS", "ALLCAPS PROMPT", "snake_case_words and kebab-case-words",
        "camelCaseWords PascalCase", "repeated repeated repeated repeated", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
        "1234567890123456789012345678901234567890", "0.000001 1e-10 6.02e23",
    ]
    subjects = ["a cat", "two dogs", "an old lighthouse", "a neon city", "the Eiffel Tower", "a bowl of ramen",
                "a robot", "a dragon", "mountains at dawn", "a vintage car", "a jellyfish", "a forest spirit"]
    styles = ["oil on canvas", "trending on artstation", "by Studio Ghibli", "8k, octane render",
              "watercolor", "pixel art", "35mm photo, f/1.8", "low-poly 3D", "ukiyo-e woodblock print",
              "in the style of Van Gogh's 'Starry Night'"]
    rng = random.Random(5)
    generated = []
    for i in range(110):
        s = rng.choice(subjects)
        st = rng.choice(styles)
        w = rng.choice(["", ":1", ":0.5", ":-1", ":2.25"])
        extra = rng.choice(["", "!", "?", " ...", " #art", " (detailed)", " [hq]", " — wow", " 😀", " 猫"])
        generated.append(f"{s} {st}{w}{extra}" if i % 3 else f"{s.upper()}, {st}{extra}")
    # Random character soup over several scripts.
    pools = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " .,;:!?'\"-()&",
             "éèêëàâäôöûüçñøå", "日本語中文漢字かなカナ", "한국어", "абвгдежз", "αβγδεζ", "🦊🐱🌈🔥✨"]
    for i in range(40):
        n = rng.randint(1, 60)
        generated.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
    # Very long prompts (truncated at 77 tokens).
    words = "the quick brown fox jumps over the lazy dog while a painter paints the sunset sky".split()
    for n in (60, 120, 400):
        generated.append(" ".join(rng.choice(words) for _ in range(n)))
    generated.append("x" * 2000)
    generated.append("🦊" * 100)
    generated.append("日本" * 200)
    return fixed + generated


def write_tokens():
    texts = prompts()
    assert len(texts) >= 200, len(texts)
    ids = clip.tokenize(texts, context_length=77, truncate=True)
    rows = []
    for text, row in zip(texts, ids.tolist()):
        while row and row[-1] == 0:
            row.pop()
        rows.append({"text": text, "ids": row})
    (OUT / "tokens.json").write_text(json.dumps(rows, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"tokens: {len(rows)} prompts")


def make_image(w, h, seed):
    """A synthetic photo-sized image: gradients, sharp discs and stripes (compresses well as PNG)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * (x / w)
    g = 255 * (y / h)
    b = 127 + 100 * np.sin(x / (7 + seed) + y / 11)
    img = np.stack([r, g, b], axis=-1)
    for _ in range(6):
        cx, cy, rad = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(min(w, h) / 20, min(w, h) / 4)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < rad**2
        img[mask] = rng.uniform(0, 255, 3)
    stripes = ((x // 3 + y // 5) % 2 == 0) & (x < w / 3) & (y > h / 2)
    img[stripes] = [250, 250, 250]
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB")


def write_preprocess():
    d = OUT / "preprocess"
    d.mkdir(parents=True, exist_ok=True)
    cases = [("landscape", 640, 480, 224), ("portrait", 375, 500, 224), ("wide", 1024, 683, 64),
             ("small", 160, 120, 96)]
    tensors, index = {}, []
    for k, (name, w, h, size) in enumerate(cases):
        img = make_image(w, h, seed=10 + k)
        img.save(d / f"{name}.png", optimize=True)
        proc = CLIPImageProcessor(
            do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,
            crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255,
            do_normalize=True, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, do_convert_rgb=True,
        )
        pv = proc(images=Image.open(d / f"{name}.png"), return_tensors="pt")["pixel_values"]
        tensors[name] = pv[0].to(torch.float16).contiguous()
        index.append({"image": f"{name}.png", "size": size})
    save_file(tensors, str(d / "reference.safetensors"))
    (d / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"preprocess: {len(cases)} images")


def write_openai():
    """A tiny CLIP as OpenAI publishes it: traced TorchScript, fp16 weights."""
    from clip.model import CLIP, convert_weights

    d = OUT / "openai_tiny"
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3000)
    # Text width 128 → 2 heads and vision width 64 → 1 head (OpenAI derives
    # heads as width // 64 when loading).
    model = CLIP(embed_dim=24, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                 context_length=16, vocab_size=120, transformer_width=128, transformer_heads=2,
                 transformer_layers=1).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(2.1)
            elif p.dim() == 1 and (".ln_" in name or "ln_" in name.split(".")[-2]):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    convert_weights(model)  # fp16, as released
    gen = torch.Generator().manual_seed(3001)
    ids = torch.randint(1, 118, (3, 16), generator=gen)
    for i, n in enumerate([4, 15, 9]):
        ids[i, 0] = 118  # SOT
        ids[i, n] = 119  # EOT: the largest id, where OpenAI pools
        ids[i, n + 1:] = 0
    pixels = torch.randn(2, 3, 32, 32, generator=gen)
    traced = torch.jit.trace(model, (pixels.half(), ids))
    traced.save(str(d / "model.pt"))
    # Reference outputs in fp32 from the same (fp16-rounded) weights.
    ref = CLIP(embed_dim=24, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
               context_length=16, vocab_size=120, transformer_width=128, transformer_heads=2,
               transformer_layers=1).eval()
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    with torch.no_grad():
        text = ref.encode_text(ids)
        image = ref.encode_image(pixels)
        logits_per_image, _ = ref(pixels, ids)
    save_file(
        {"input_ids": ids.contiguous(), "pixel_values": pixels.contiguous(), "text_features": text.contiguous(),
         "image_features": image.contiguous(), "logits_per_image": logits_per_image.contiguous()},
        str(d / "reference.safetensors"),
    )
    print(f"openai_tiny: {os.path.getsize(d / 'model.pt')} bytes")


def write_entities():
    lines = []
    for name, value in sorted(html.entities.html5.items()):
        lines.append(name + "\t" + " ".join(f"{ord(c):X}" for c in value))
    (VOCAB_DIR / "html5_entities.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"html5 entities: {len(lines)}")


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    OUT.mkdir(parents=True, exist_ok=True)
    VOCAB_DIR.mkdir(parents=True, exist_ok=True)
    write_models()
    write_tokens()
    write_preprocess()
    write_openai()
    write_entities()
