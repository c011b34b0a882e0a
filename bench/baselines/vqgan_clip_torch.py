"""Case 4 baseline: one VQGAN+CLIP optimisation step in PyTorch, seconds per step.

  python vqgan_clip_torch.py --device cpu --sizes 256 --cutn 32 --steps 3

The step of the VQGAN-CLIP notebooks (nerdyrodent's generate.py, pixray)
written with taming-transformers' Decoder and VectorQuantizer (imagenet
f16/16384 sizes) and transformers' CLIPModel (ViT-B/32), random weights:
straight-through quantization of the latent, decode, clamp with gradient,
`cutn` random square cutouts resized (bilinear, antialiased) to 224 and
augmented (an affine and a perspective warp as one homography sampled with
grid_sample, saturation/contrast/brightness jitter, Gaussian noise), CLIP
normalisation, spherical distance to a text embedding, backward, Adam, and
the latent kept inside the codebook's range. The same operations as Kiln's
`vqgan-clip` engine, so the two timings compare the implementations.
Prints one JSON line: median seconds per step per size.
"""
import argparse
import json
import math
import random

import torch
import torch.nn.functional as F
import transformers
from taming.modules.diffusionmodules.model import Decoder
from taming.modules.vqvae.quantize import VectorQuantizer
from transformers import CLIPConfig, CLIPModel

from common import DTYPES, timed

DDCONFIG = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3,
                ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
EMBED_DIM, N_EMBED = 256, 16384
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class ClampWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (g * (x - x.clamp(ctx.lo, ctx.hi)) >= 0), None, None


class ReplaceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_forward, x_backward):
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, g):
        return None, g.sum_to_size(ctx.shape)


def vector_quantize(x, codebook):
    d = x.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * x @ codebook.T
    xq = F.one_hot(d.argmin(-1), codebook.shape[0]).to(d.dtype) @ codebook
    return ReplaceGrad.apply(xq, x)


def homography(src, dst):
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y]); b.append(u)
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y]); b.append(v)
    h = torch.linalg.solve(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    return torch.cat([h, torch.ones(1, dtype=torch.float64)]).view(3, 3)


def draw_cutouts(rng, w, h, cut_size, cutn, cut_pow=1.0, p=0.7):
    max_size = min(w, h)
    min_size = min(max_size, cut_size)
    cuts = []
    for _ in range(cutn):
        size = min(max(int(rng.random() ** cut_pow * (max_size - min_size)) + min_size, min_size), max_size)
        x, y = rng.randint(0, w - size), rng.randint(0, h - size)
        m = torch.eye(3, dtype=torch.float64)
        if rng.random() < p:
            ang = math.radians(rng.uniform(-15, 15)); sh = math.radians(rng.uniform(-5, 5))
            tx, ty = 2 * rng.uniform(-0.1, 0.1), 2 * rng.uniform(-0.1, 0.1)
            s, c, t = math.sin(ang), math.cos(ang), math.tan(sh)
            m = torch.tensor([[c, c * t - s, tx], [s, s * t + c, ty], [0, 0, 1]], dtype=torch.float64) @ m
        if rng.random() < p:
            corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
            moved = [(cx + rng.uniform(-0.25, 0.25), cy + rng.uniform(-0.25, 0.25)) for cx, cy in corners]
            m = m @ homography(corners, moved)
        bri, con, sat = 0.0, 1.0, 1.0
        if rng.random() < p:
            bri, con, sat = rng.uniform(-0.1, 0.1), 1 + rng.uniform(-0.1, 0.1), 1 + rng.uniform(-0.1, 0.1)
        cuts.append((x, y, size, m, bri, con, sat, rng.random() * 0.1))
    return cuts


def make_cutouts(img, cuts, s):
    dev = img.device
    x = torch.cat([F.interpolate(img[:, :, cy:cy + size, cx:cx + size], (s, s), mode="bilinear",
                                 align_corners=False, antialias=True)
                   for cx, cy, size, *_ in cuts])
    coords = (torch.arange(s, device=dev, dtype=torch.float32) * 2 + 1) / s - 1
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    base = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(-1, 3)
    hs = torch.stack([c[3] for c in cuts]).to(dev, torch.float32)
    out = base @ hs.transpose(1, 2)
    grid = (out[..., :2] / out[..., 2:]).view(-1, s, s, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    col = lambda i: torch.tensor([c[i] for c in cuts], device=dev, dtype=torch.float32).view(-1, 1, 1, 1)
    gray = x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114
    x = gray + (x - gray) * col(6)
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * col(5)
    x = x + col(4)
    return x + torch.randn_like(x) * col(7)


def spherical_dist(x, y):
    x = F.normalize(x, dim=-1).unsqueeze(1)
    y = F.normalize(y, dim=-1).unsqueeze(0)
    return (x - y).norm(dim=2).div(2).arcsin().pow(2).mul(2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--cutn", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0, help="timed seconds per size (at least 3 steps)")
    ap.add_argument("--clip-dtype", default="fp32", choices=DTYPES)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    decoder = Decoder(**DDCONFIG).to(dev).eval().requires_grad_(False)
    post_quant_conv = torch.nn.Conv2d(EMBED_DIM, DDCONFIG["z_channels"], 1).to(dev).requires_grad_(False)
    quantize = VectorQuantizer(N_EMBED, EMBED_DIM, beta=0.25).to(dev).requires_grad_(False)
    clip = CLIPModel(CLIPConfig()).to(dev, DTYPES[a.clip_dtype]).eval().requires_grad_(False)
    mean = torch.tensor(CLIP_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=dev).view(1, 3, 1, 1)
    codebook = quantize.embedding.weight
    z_min = codebook.min(0).values[None, :, None, None]
    z_max = codebook.max(0).values[None, :, None, None]
    with torch.no_grad():
        ids = torch.randint(0, 49408, (1, 77), device=dev)
        target = clip.get_text_features(input_ids=ids)
        if not torch.is_tensor(target):
            target = target.pooler_output
        target = target.float()
    rng = random.Random(0)
    out = {"transformers": transformers.__version__, "torch": torch.__version__,
           "device": a.device, "cutn": a.cutn, "clip_dtype": a.clip_dtype, "sizes": {}}
    for size in [int(s) for s in a.sizes.split(",")]:
        hw = size // 16
        tokens = torch.randint(0, N_EMBED, (1, hw * hw), device=dev)
        z = codebook[tokens].view(1, hw, hw, EMBED_DIM).permute(0, 3, 1, 2).clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=0.1)

        def step():
            opt.zero_grad(set_to_none=True)
            z_q = vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
            img = ClampWithGrad.apply(decoder(post_quant_conv(z_q)).add(1).div(2), 0, 1)
            cuts = make_cutouts(img, draw_cutouts(rng, size, size, 224, a.cutn), 224)
            emb = clip.get_image_features(pixel_values=((cuts - mean) / std).to(DTYPES[a.clip_dtype]))
            if not torch.is_tensor(emb):
                emb = emb.pooler_output
            loss = spherical_dist(emb.float(), target).mean()
            loss.backward()
            opt.step()
            with torch.no_grad():
                z.copy_(z.maximum(z_min).minimum(z_max))

        s = timed(step, dev, a.seconds, warmup=1)
        out["sizes"][str(size)] = {"seconds_per_step": s}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
