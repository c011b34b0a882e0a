"""Parity fixture for one step of Kiln's vqgan-clip loop
(worker/src/engine/vqgan_clip.rs, `loss_and_grad` + `Adam` + the latent clamp).

The step is written here the way the VQGAN+CLIP notebooks write it
(nerdyrodent's generate.py: `vector_quantize` with `ReplaceGrad`,
`ClampWithGrad`, the `Prompt` spherical distance, `torch.optim.Adam`, the
clamp to the codebook's range) on taming's modules (the `small` fixture
VQGAN of vqgan_fixtures.py) and transformers' `CLIPModel`. Randomness is
taken out: the script draws the cutouts (boxes, homographies, colour
jitter, noise factors and the noise itself) and stores them, and Kiln
replays exactly those.

What is NOT independent of Kiln: the cutout augmentation. The notebooks
augment with kornia's random transforms, which cannot be replayed from
stored parameters; `draw_cutouts` and `make_cutouts` below are a Python
copy of Kiln's own `Cutout` (crop, antialiased resize, homography warp,
saturation/contrast/brightness jitter, noise) written to match Kiln, not
taken from the notebooks. The fixture therefore checks the quantiser, the
VQGAN decode, CLIP's image tower, the spherical distance loss, the init
pull, the gradient, Adam and the clamp against the reference, and checks
that Kiln applies its augmentation as written here; it does not check that
this augmentation is the notebooks'.

The text side is an input computed by the reference as well: `targets` are
transformers' `CLIPModel.get_text_features` of the prompt ids `text_ids`
(the tiny CLIP's vocabulary of 64 ids cannot hold the OpenAI tokenizer, so
the prompts are given as ids); the Rust test computes Kiln's own text
features from `text_ids`, checks them against `targets`, and runs the step
on Kiln's.

Writes worker/tests/fixtures/vqgan/step/:
    clip/config.json, clip/model.safetensors   tiny random CLIP (HF layout)
    step.safetensors
        z0 [B,e,h,w], z_orig (the init latent), init_weight, lr
        boxes [N,4] int64 (candidate, x, y, size), homography [N,9] float64,
        jitter [N,3] float64 (brightness, contrast, saturation),
        noise_fac [N] float64, noise [N,3,S,S]
        text_ids [P,77] int64 prompt ids, targets [P,D] transformers' text
        features of text_ids, weights [P]
        loss [B], grad [B,e,h,w], z1 [B,e,h,w]

Run from the repository root after vqgan_fixtures.py:
    ~/.cache/kiln/venv/bin/python worker/reference/vqgan_clip_step.py
"""

import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vqgan_fixtures import OUT, TinyVQModel  # noqa: E402

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# --- the notebooks' building blocks -------------------------------------

class ReplaceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_forward, x_backward):
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, grad_in):
        return None, grad_in.sum_to_size(ctx.shape)


replace_grad = ReplaceGrad.apply


class ClampWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, min, max):
        ctx.min = min
        ctx.max = max
        ctx.save_for_backward(input)
        return input.clamp(min, max)

    @staticmethod
    def backward(ctx, grad_in):
        (input,) = ctx.saved_tensors
        return grad_in * (grad_in * (input - input.clamp(ctx.min, ctx.max)) >= 0), None, None


clamp_with_grad = ClampWithGrad.apply


def vector_quantize(x, codebook):
    d = x.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * x @ codebook.T
    indices = d.argmin(-1)
    x_q = F.one_hot(indices, codebook.shape[0]).to(d.dtype) @ codebook
    return replace_grad(x_q, x)


def prompt_dists(input, embed):
    input_normed = F.normalize(input.unsqueeze(1), dim=2)
    embed_normed = F.normalize(embed.unsqueeze(0), dim=2)
    return input_normed.sub(embed_normed).norm(dim=2).div(2).arcsin().pow(2).mul(2)


# --- fixed cutouts --------------------------------------------------------

def homography(src, dst):
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        b.append(u)
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.append(v)
    h = torch.linalg.solve(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    return torch.cat([h, torch.ones(1, dtype=torch.float64)])


def draw_cutouts(gen, batch, cutn, width, height, cut_size):
    boxes, hs, jitter, facs = [], [], [], []
    max_size = min(width, height)
    min_size = min(width, height, cut_size)
    for b in range(batch):
        for _ in range(cutn):
            size = int(torch.rand([], generator=gen) * (max_size - min_size) + min_size)
            x = int(torch.randint(0, width - size + 1, (), generator=gen))
            y = int(torch.randint(0, height - size + 1, (), generator=gen))
            u = lambda half: float((torch.rand([], generator=gen) * 2 - 1) * half)  # noqa: E731
            ang, sh = math.radians(u(15)), math.radians(u(5))
            tx, ty = 2 * u(0.1), 2 * u(0.1)
            c, s, t = math.cos(ang), math.sin(ang), math.tan(sh)
            aff = torch.tensor([[c, c * t - s, tx], [s, s * t + c, ty], [0, 0, 1]], dtype=torch.float64)
            corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
            moved = [(cx + u(0.25), cy + u(0.25)) for cx, cy in corners]
            per = homography(corners, moved).view(3, 3)
            hs.append((aff @ per).flatten())
            boxes.append([b, x, y, size])
            jitter.append([u(0.1), 1 + u(0.1), 1 + u(0.1)])
            facs.append(float(torch.rand([], generator=gen) * 0.1))
    return (
        torch.tensor(boxes, dtype=torch.int64),
        torch.stack(hs),
        torch.tensor(jitter, dtype=torch.float64),
        torch.tensor(facs, dtype=torch.float64),
    )


def make_cutouts(img, boxes, hs, jitter, facs, noise, s):
    cut = []
    for b, x, y, size in boxes.tolist():
        crop = img[b : b + 1, :, y : y + size, x : x + size]
        cut.append(F.interpolate(crop, size=(s, s), mode="bilinear", antialias=True, align_corners=False))
    x = torch.cat(cut)
    coords = (torch.arange(s, dtype=torch.float32) * 2 + 1) / s - 1
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    base = torch.stack([xs, ys, torch.ones(s, s)], -1).reshape(s * s, 3)
    out = base @ hs.float().view(-1, 3, 3).transpose(1, 2)
    grid = (out[..., :2] / out[..., 2:3]).view(-1, s, s, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    col = lambda v: v.float().view(-1, 1, 1, 1)  # noqa: E731
    gray = x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114
    x = gray + (x - gray) * col(jitter[:, 2])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * col(jitter[:, 1])
    x = x + col(jitter[:, 0])
    return x + noise * col(facs)


def main():
    gen = torch.Generator().manual_seed(2024)
    vq_dir = os.path.join(OUT, "small")
    with open(os.path.join(vq_dir, "config.json")) as fh:
        vq_cfg = json.load(fh)
    vq = TinyVQModel(**vq_cfg).eval()
    vq.load_state_dict({k: v.float() for k, v in load_file(os.path.join(vq_dir, "model.safetensors")).items()})
    for p in vq.parameters():
        p.requires_grad_(False)

    clip_cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0,
                         eos_token_id=63, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, image_size=16, patch_size=4),
        projection_dim=16,
    )
    torch.manual_seed(7)
    clip = CLIPModel(clip_cfg).eval()
    with torch.no_grad():
        for name, p in clip.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02, generator=gen)
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1, generator=gen)
            p.copy_(p.half().float())
        for p in clip.parameters():
            p.requires_grad_(False)
    step_dir = os.path.join(OUT, "step")
    clip_dir = os.path.join(step_dir, "clip")
    clip.half().save_pretrained(clip_dir, safe_serialization=True)
    clip.float()
    for extra in ("generation_config.json",):
        path = os.path.join(clip_dir, extra)
        if os.path.exists(path):
            os.remove(path)

    def features(out):
        return out if torch.is_tensor(out) else out.pooler_output

    batch, cutn, width, height, s = 2, 4, 48, 32, 16
    f = 2 ** (len(vq_cfg["ddconfig"]["ch_mult"]) - 1)
    e = vq_cfg["embed_dim"]
    codebook = vq.quantize.embedding.weight
    tokens = torch.randint(0, vq_cfg["n_embed"], (batch, (height // f) * (width // f)), generator=gen)
    z0 = codebook[tokens].view(batch, height // f, width // f, e).permute(0, 3, 1, 2).contiguous()
    z0 = z0 + 0.05 * torch.randn(z0.shape, generator=gen)
    z_orig = z0 + 0.2 * torch.randn(z0.shape, generator=gen)
    init_weight, lr = 0.5, 0.05

    boxes, hs, jitter, facs = draw_cutouts(gen, batch, cutn, width, height, s)
    noise = torch.randn((batch * cutn, 3, s, s), generator=gen)
    ids = torch.randint(1, 60, (2, 77), generator=gen)
    ids[:, 0] = 0
    ids[0, 9:] = 63
    ids[1, 5:] = 63
    with torch.no_grad():
        targets = features(clip.get_text_features(input_ids=ids))
    weights = torch.tensor([1.0, -0.5])

    z = z0.clone().requires_grad_(True)
    z_min = codebook.min(dim=0).values[None, :, None, None]
    z_max = codebook.max(dim=0).values[None, :, None, None]
    opt = torch.optim.Adam([z], lr=lr)
    opt.zero_grad(set_to_none=True)
    z_q = vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
    out = clamp_with_grad(vq.decode(z_q).add(1).div(2), 0, 1)
    cut = make_cutouts(out, boxes, hs, jitter, facs, noise, s)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    iii = features(clip.get_image_features(pixel_values=(cut - mean) / std)).float()
    losses = []
    for b in range(batch):
        mine = iii[b * cutn : (b + 1) * cutn]
        total = F.mse_loss(z[b], z_orig[b]) * init_weight / 2
        for p in range(len(weights)):
            w = weights[p]
            dists = prompt_dists(mine, targets[p : p + 1]) * w.sign()
            total = total + w.abs() * replace_grad(dists, torch.maximum(dists, torch.tensor(float("-inf")))).mean()
        losses.append(total)
    loss = torch.stack(losses)
    loss.sum().backward()
    grad = z.grad.detach().clone()
    opt.step()
    with torch.no_grad():
        z.copy_(z.maximum(z_min).minimum(z_max))

    tensors = {
        "z0": z0,
        "z_orig": z_orig,
        "init_weight": torch.tensor([init_weight], dtype=torch.float64),
        "lr": torch.tensor([lr], dtype=torch.float64),
        "boxes": boxes,
        "homography": hs,
        "jitter": jitter,
        "noise_fac": facs,
        "noise": noise,
        "text_ids": ids,
        "targets": targets,
        "weights": weights,
        "loss": loss.detach(),
        "grad": grad,
        "z1": z.detach(),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(step_dir, "step.safetensors"))
    print(f"loss {loss.tolist()}, |grad| max {grad.abs().max():.3e}", file=sys.stderr)


if __name__ == "__main__":
    main()
