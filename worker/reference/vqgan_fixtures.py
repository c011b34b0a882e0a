"""Parity fixtures for Kiln's VQGAN (worker/src/models/vqgan.rs).

Builds tiny random-weight VQGANs from taming-transformers' own modules
(`Encoder`, `Decoder`, `VectorQuantizer`, plus the two 1x1 convolutions of
`VQModel`), writes each model in Kiln's layout (config.json with taming's
values, model.safetensors with taming's state-dict keys) and the reference
outputs the Rust tests compare against:

    worker/tests/fixtures/vqgan/<name>/config.json
    worker/tests/fixtures/vqgan/<name>/model.safetensors
    worker/tests/fixtures/vqgan/<name>/cases.safetensors
        x        [B,3,H,W] images in -1..1
        h        encoder + quant_conv of x (before quantization)
        z_q      quantized h (VectorQuantizer forward)
        indices  [B, h*w] int64 nearest-code indices of h
        z        [B,embed_dim,h,w] random latent
        dec      post_quant_conv + decoder of z
        codes    [B, h*w] int64 random code indices
        dec_codes  decoder output of the codebook entries of `codes`

Run from the repository root with the reference environment:
    ~/.cache/kiln/venv/bin/python worker/reference/vqgan_fixtures.py
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "vqgan")

CONFIGS = {
    # Two levels (f=2), two blocks per level, attention at the 8x8 level.
    "small": {
        "embed_dim": 8,
        "n_embed": 32,
        "ddconfig": {
            "double_z": False,
            "z_channels": 16,
            "resolution": 16,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 1],
            "num_res_blocks": 2,
            "attn_resolutions": [8],
            "dropout": 0.0,
        },
        "image": (2, 16, 16),
    },
    # Three levels (f=4), channel changes (nin_shortcut), one block per level,
    # attention at two resolutions, a non-square image.
    "deep": {
        "embed_dim": 4,
        "n_embed": 48,
        "ddconfig": {
            "double_z": False,
            "z_channels": 8,
            "resolution": 16,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [2, 1, 1],
            "num_res_blocks": 1,
            "attn_resolutions": [16, 4],
            "dropout": 0.0,
        },
        "image": (1, 16, 24),
    },
}


class TinyVQModel(torch.nn.Module):
    """taming's VQModel without the loss: the same submodules and key names."""

    def __init__(self, embed_dim, n_embed, ddconfig):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)

    def encode_latent(self, x):
        return self.quant_conv(self.encoder(x))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


def randomize(model, gen):
    """Moves every weight away from its default so that no term is trivial.

    Values are rounded to f16 (and stored so) to keep the fixtures small;
    the reference outputs are computed in f32 from exactly those values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name == "quantize.embedding.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in) ** 0.5)
            p.copy_(p.half().float())


def main():
    torch.set_grad_enabled(False)
    for seed, (name, spec) in enumerate(sorted(CONFIGS.items())):
        gen = torch.Generator().manual_seed(1000 + seed)
        cfg = {k: spec[k] for k in ("embed_dim", "n_embed", "ddconfig")}
        model = TinyVQModel(**cfg).eval()
        randomize(model, gen)
        b, hh, ww = spec["image"]
        f = 2 ** (len(cfg["ddconfig"]["ch_mult"]) - 1)
        x = torch.rand((b, 3, hh, ww), generator=gen) * 2 - 1
        h = model.encode_latent(x)
        z_q, _, (_, _, idx) = model.quantize(h)
        indices = idx.view(b, -1)
        z = torch.randn((b, cfg["embed_dim"], hh // f, ww // f), generator=gen)
        dec = model.decode(z)
        codes = torch.randint(0, cfg["n_embed"], (b, (hh // f) * (ww // f)), generator=gen)
        shape = (b, hh // f, ww // f, cfg["embed_dim"])
        dec_codes = model.decode(model.quantize.get_codebook_entry(codes.view(-1), shape))

        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2)
            fh.write("\n")
        state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(d, "model.safetensors"))
        cases = {
            "x": x,
            "h": h,
            "z_q": z_q,
            "indices": indices,
            "z": z,
            "dec": dec,
            "codes": codes,
            "dec_codes": dec_codes,
        }
        save_file({k: v.contiguous() for k, v in cases.items()}, os.path.join(d, "cases.safetensors"))
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters", file=sys.stderr)


if __name__ == "__main__":
    main()
