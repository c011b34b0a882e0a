"""min-dalle's own state dicts, at a tiny size, for Kiln's DALL·E conversion
test (worker/tests/dalle_convert.rs, `model_store::dalle::convert`).

min-dalle's modules are instantiated and saved the way min-dalle's
published files are (`torch.save(model.state_dict())`, float16 storages),
so the key names and dtypes are min-dalle's, not Kiln's:

- `DalleBartEncoder` and `DalleBartDecoder` take their sizes as arguments:
  2 layers, embed 8, 2 heads, GLU 16, text vocabulary 512 and the image
  vocabulary of mini (16384, which Kiln requires).
- `VQGanDetokenizer` has its sizes written in (256-dim codes, 128 to 512
  channels). It is built here with the `nn` that its module sees replaced
  by one whose Conv2d, GroupNorm and Embedding divide every channel count
  of 8 or more by 4 (the 16384 codes and the RGB output stay): the same
  modules, names and structure as min-dalle's at a quarter of the width
  (32 to 128 channels, the least Kiln's 32 normalisation groups allow).
  Its 3.7M weights would take 7 MB, so its state dict holds views into one
  shared float16 storage of POOL values at distinct offsets (tensors larger
  than the pool overlap their rows): torch.save writes that storage once.
  The pool and each tensor's offset, shape and strides are stored too, so
  the test rebuilds every expected tensor without the pickle. min-dalle's
  detokenizer forward has its widths written in as well, so it cannot run
  at this width here; Kiln runs it in `verify` (its numerics at full width
  are checked by dalle_detokenizer.rs).

Encoder and decoder weights are drawn with a fixed generator and rounded to
float16. In decoder.pt one weight is saved as a transposed view and one as a
view at an offset into a larger storage (same values), as state dicts may
hold them.

Writes worker/tests/fixtures/dalle/convert/:
    encoder.pt, decoder.pt, detoker.pt   the state dicts (names as
        `models fetch` gives them)
    config.json, detokenizer.json        the tiny architecture in Kiln's
        DalleConfig and VqganConfig form
    detoker_layout.json   {key: [offset, shape, stride]} of every
        detokenizer tensor in the pool
    expected.safetensors
        encoder/<key>, decoder/<key>: every tensor of the two state dicts
            under min-dalle's key, float16 as saved
        detoker_pool [POOL]: the detokenizer's shared storage (float16)
        text_tokens [2, 64]: the encoder rows of "a red fox in the snow"
            (min-dalle's tokenizer on ../vocab.json, ../merges.txt)
        encoder_state [2, 64, 8]: min-dalle's encoder on them (float32)
        step_logits [2, 16385]: min-dalle's decoder, first step from the
            start token, unconditioned and conditioned rows (float32)

Run from the repository root with the reference environment's python:
    python worker/reference/dalle_convert_fixture.py
"""
import collections
import json
import os
import sys
import types

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dalle_fixtures import IMAGE_TOKEN_COUNT, TEXT_TOKEN_COUNT, text_rows  # noqa: E402

import min_dalle.models.vqgan_detokenizer as vqgan_detokenizer  # noqa: E402
from min_dalle.models import DalleBartDecoder, DalleBartEncoder, VQGanDetokenizer  # noqa: E402
from min_dalle.text_tokenizer import TextTokenizer  # noqa: E402

torch.set_grad_enabled(False)
FIXTURES = "worker/tests/fixtures/dalle"
OUT = os.path.join(FIXTURES, "convert")
CONFIG = dict(layer_count=2, embed_count=8, attention_head_count=2, glu_embed_count=16,
              text_vocab_count=512, image_vocab_count=16384,
              text_token_count=TEXT_TOKEN_COUNT, image_token_count=IMAGE_TOKEN_COUNT)
WIDTH_DIVISOR = 4
POOL = 200_003
DETOKENIZER = dict(embed_dim=256 // WIDTH_DIVISOR, n_embed=16384, ddconfig=dict(
    double_z=False, z_channels=256 // WIDTH_DIVISOR, resolution=256, in_channels=3, out_ch=3,
    ch=128 // WIDTH_DIVISOR, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16],
    dropout=0.0, norm_eps=1e-5))
PROMPT = "a red fox in the snow"


def narrow(n):
    return n // WIDTH_DIVISOR if n >= 8 and n % WIDTH_DIVISOR == 0 else n


def narrow_nn():
    """torch.nn with channel counts divided by WIDTH_DIVISOR."""
    ns = types.SimpleNamespace(**{k: getattr(nn, k) for k in dir(nn) if not k.startswith("_")})
    ns.Conv2d = lambda m, n, k, **kw: nn.Conv2d(narrow(m), narrow(n), k, **kw)
    ns.GroupNorm = lambda groups, n, **kw: nn.GroupNorm(groups, narrow(n), **kw)
    ns.Embedding = lambda count, dim: nn.Embedding(count, narrow(dim))
    return ns


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    for _, p in sorted(module.named_parameters()):
        p.copy_((torch.randn(p.shape, generator=gen) * 0.2).half().float())


def pooled_state(module, seed):
    """module's state dict as float16 views into one shared storage."""
    gen = torch.Generator().manual_seed(seed)
    pool = (torch.randn(POOL, generator=gen) * 0.2).half()
    state, layout, seen = collections.OrderedDict(), {}, set()
    for i, (k, v) in enumerate(module.state_dict().items()):
        shape = list(v.shape)
        stride = [1] * len(shape)
        for d in range(len(shape) - 2, -1, -1):
            stride[d] = stride[d + 1] * shape[d + 1]
        inner = v.numel() // shape[0] if shape else 1
        if v.numel() >= POOL // 2:  # overlapping rows
            stride[0] = (POOL // 2 - inner) // (shape[0] - 1)
            extent = (shape[0] - 1) * stride[0] + inner
        else:
            extent = v.numel()
        offset = (i * 7919) % (POOL - extent)
        assert (offset, tuple(shape)) not in seen
        seen.add((offset, tuple(shape)))
        state[k] = pool.as_strided(shape, stride, offset)
        layout[k] = [offset, shape, stride]
    return state, layout, pool


def half_state(module):
    return collections.OrderedDict((k, v.half()) for k, v in module.state_dict().items())


def main():
    os.makedirs(OUT, exist_ok=True)
    encoder = DalleBartEncoder(
        layer_count=CONFIG["layer_count"], embed_count=CONFIG["embed_count"],
        attention_head_count=CONFIG["attention_head_count"],
        text_vocab_count=CONFIG["text_vocab_count"], text_token_count=TEXT_TOKEN_COUNT,
        glu_embed_count=CONFIG["glu_embed_count"], device="cpu").eval()
    decoder = DalleBartDecoder(
        image_vocab_count=CONFIG["image_vocab_count"], embed_count=CONFIG["embed_count"],
        attention_head_count=CONFIG["attention_head_count"],
        glu_embed_count=CONFIG["glu_embed_count"], layer_count=CONFIG["layer_count"],
        device="cpu").eval()
    real_nn = vqgan_detokenizer.nn
    vqgan_detokenizer.nn = narrow_nn()
    try:
        detoker = VQGanDetokenizer().eval()
    finally:
        vqgan_detokenizer.nn = real_nn
    for seed, m in enumerate([encoder, decoder]):
        randomize(m, 100 + seed)

    enc_state = half_state(encoder)
    dec_state = half_state(decoder)
    det_state, det_layout, det_pool = pooled_state(detoker, 102)
    torch.save(enc_state, os.path.join(OUT, "encoder.pt"))
    saved = collections.OrderedDict(dec_state)
    two_d = [k for k, v in saved.items() if v.dim() == 2 and v.shape[0] != v.shape[1]]
    transposed, offset = two_d[0], two_d[1]
    saved[transposed] = saved[transposed].t().contiguous().t()  # same values, strides swapped
    big = torch.cat([torch.zeros(5, dtype=torch.float16), saved[offset].flatten()])
    saved[offset] = big[5:].view(saved[offset].shape)  # a view at offset 5
    torch.save(saved, os.path.join(OUT, "decoder.pt"))
    torch.save(det_state, os.path.join(OUT, "detoker.pt"))

    with open(os.path.join(FIXTURES, "vocab.json"), encoding="utf8") as f:
        vocab = json.load(f)
    with open(os.path.join(FIXTURES, "merges.txt"), encoding="utf8") as f:
        merges = f.read().split("\n")[1:-1]
    assert len(vocab) <= CONFIG["text_vocab_count"]
    rows = torch.tensor(text_rows(TextTokenizer(vocab, merges).tokenize(PROMPT)), dtype=torch.long)
    encoder_state = encoder.forward(rows)
    # MinDalle.generate_raw_image_stream's first decoder step, one image.
    attention_state = torch.zeros(
        size=(CONFIG["layer_count"], 4, IMAGE_TOKEN_COUNT, CONFIG["embed_count"]))
    logits, _ = decoder.forward(
        attention_mask=rows.not_equal(1)[:, None, None, :], encoder_state=encoder_state,
        attention_state=attention_state,
        prev_tokens=torch.full((1, 1), 2 ** 14 - 1, dtype=torch.long),
        token_index=torch.arange(1))

    expected = {}
    for prefix, state in [("encoder", enc_state), ("decoder", dec_state)]:
        for k, v in state.items():
            expected[f"{prefix}/{k}"] = v.contiguous()
    expected["detoker_pool"] = det_pool
    with open(os.path.join(OUT, "detoker_layout.json"), "w") as f:
        json.dump(det_layout, f)
        f.write("\n")
    expected["text_tokens"] = rows.contiguous()
    expected["encoder_state"] = encoder_state.float().contiguous()
    expected["step_logits"] = logits[:, -1, :].float().contiguous()
    save_file(expected, os.path.join(OUT, "expected.safetensors"))
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=1)
        f.write("\n")
    with open(os.path.join(OUT, "detokenizer.json"), "w") as f:
        json.dump(DETOKENIZER, f, indent=1)
        f.write("\n")
    sizes = {k: sum(v.numel() for v in s.values()) for k, s in
             [("encoder", enc_state), ("decoder", dec_state), ("detoker", det_state)]}
    print("parameters", sizes, "transposed", transposed, "offset", offset)


if __name__ == "__main__":
    main()
