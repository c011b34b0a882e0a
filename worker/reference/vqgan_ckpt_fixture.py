"""Fixture for converting taming's published VQGAN checkpoints
(worker/src/model_store/vqgan.rs, `convert`).

Writes worker/tests/fixtures/vqgan/ckpt/:
    last.ckpt          a checkpoint shaped like taming's Lightning `last.ckpt`:
                       `state_dict` with the model and loss networks (mostly
                       f16, one transposed view, one view at an offset into a
                       larger storage), optimizer state, callbacks keyed by a
                       class, hyper-parameters as an object
    model.yaml         a run config shaped like taming's `configs/model.yaml`
    expected.safetensors
        x, h           an image and its latent (encoder + quant_conv)
        z, dec         a latent and its decoding (post_quant_conv + decoder)
        codebook       quantize.embedding.weight

Run from the repository root:
    ~/.cache/kiln/venv/bin/python worker/reference/vqgan_ckpt_fixture.py
"""

import argparse
import collections
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vqgan_fixtures import OUT, TinyVQModel  # noqa: E402

YAML = """model:
  base_learning_rate: 4.5e-06
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 4
    n_embed: 8
    monitor: val/rec_loss
    ddconfig:
      double_z: false
      z_channels: 4
      resolution: 8
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult:
      - 1
      - 1
      num_res_blocks: 1
      attn_resolutions: [4]   # flow style, as some configs write it
      dropout: 0.0
    lossconfig:
      target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator
      params:
        disc_conditional: false
        disc_in_channels: 3
        disc_start: 0
        disc_weight: 0.75
        codebook_weight: 1.0
data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 12
    num_workers: 24
    train:
      target: taming.data.imagenet.ImageNetTrain
      params:
        config:
          size: 256
"""


class ModelCheckpoint:
    """Stands in for a Lightning callback class used as a dictionary key."""


def main():
    gen = torch.Generator().manual_seed(77)
    cfg = {
        "embed_dim": 4,
        "n_embed": 8,
        "ddconfig": {
            "double_z": False, "z_channels": 4, "resolution": 8, "in_channels": 3, "out_ch": 3,
            "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "attn_resolutions": [4], "dropout": 0.0,
        },
    }
    model = TinyVQModel(**cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(1, p[0].numel())) ** 0.5)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
            # Exactly representable in f16, as the checkpoint stores them.
            p.copy_(p.half().float())

    sd = collections.OrderedDict((k, v.detach().half().clone()) for k, v in model.state_dict().items())
    # A permuted (non-contiguous) view, kept in f32.
    w = model.decoder.conv_in.weight.detach()
    sd["decoder.conv_in.weight"] = w.permute(1, 0, 3, 2).contiguous().permute(1, 0, 3, 2)
    assert not sd["decoder.conv_in.weight"].is_contiguous()
    # A view at an offset into a larger storage.
    big = torch.randn((20, 4), generator=gen)
    big[3:11] = model.quantize.embedding.weight.detach()
    sd["quantize.embedding.weight"] = big[3:11]
    # The loss networks, which the conversion leaves out.
    sd["loss.logvar"] = torch.zeros(())
    sd["loss.discriminator.main.0.weight"] = torch.randn((8, 3, 4, 4), generator=gen)

    ckpt = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": sd,
        "optimizer_states": [
            {"state": {0: {"step": 10, "exp_avg": torch.ones(3)}},
             "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "eps": 1e-8, "params": [0, 1]}]},
        ],
        "lr_schedulers": [],
        "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.5), "monitor": None}},
        "hparams": argparse.Namespace(lr=4.5e-6, big=2**40, neg=-3, flag=True),
    }
    d = os.path.join(OUT, "ckpt")
    os.makedirs(d, exist_ok=True)
    torch.save(ckpt, os.path.join(d, "last.ckpt"))
    with open(os.path.join(d, "model.yaml"), "w") as fh:
        fh.write(YAML)

    with torch.no_grad():
        x = torch.rand((1, 3, 8, 8), generator=gen) * 2 - 1
        h = model.encode_latent(x)
        z = torch.randn((1, 4, 4, 4), generator=gen)
        dec = model.decode(z)
    codebook = model.quantize.embedding.weight.detach().contiguous()
    save_file({"x": x, "h": h, "z": z, "dec": dec, "codebook": codebook}, os.path.join(d, "expected.safetensors"))


if __name__ == "__main__":
    main()
