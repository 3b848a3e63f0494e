"""Tiled VAE decode split across the ranks of a runner (issue 17: rank 0 must not decode alone).

After denoising every rank holds the same latents. With tiled decode on (``runner_vae_tiling``)
and world size > 1, the tiles are dealt round-robin to the ranks: each rank decodes only its own
tiles (the causal decoder, frame by frame, as diffusers' ``AutoencoderKLWan.tiled_decode`` does),
the others' are zeros, and one ``all_reduce`` (sum) per tile gives every rank every tile exactly —
then the same blending as diffusers. The result equals the 1-rank tiled decode; each rank does
1/world of the decoder work and holds one tile's activations at a time.

The loop mirrors diffusers 0.42.1's ``AutoencoderKLWan.tiled_decode`` (only the tile assignment and
the reduction are new); ``install`` replaces that method on one VAE instance.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.distributed as dist

from gpu_runner.distributed import DistContext
from runtime.logging import get_logger

log = get_logger(component="vae_split")


def split_tiled_decode(vae: Any, z: torch.Tensor, ctx: DistContext, return_dict: bool = True) -> Any:
    from diffusers.models.autoencoders.vae import DecoderOutput

    _, _, num_frames, height, width = z.shape
    ratio = vae.spatial_compression_ratio
    sample_height, sample_width = height * ratio, width * ratio
    tile_h, tile_w = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio
    stride_h, stride_w = vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio
    out_stride_h, out_stride_w = vae.tile_sample_stride_height, vae.tile_sample_stride_width
    patch = vae.config.patch_size
    if patch is not None:
        sample_height, sample_width = sample_height // patch, sample_width // patch
        out_stride_h, out_stride_w = out_stride_h // patch, out_stride_w // patch
        blend_h = vae.tile_sample_min_height // patch - out_stride_h
        blend_w = vae.tile_sample_min_width // patch - out_stride_w
    else:
        blend_h = vae.tile_sample_min_height - out_stride_h
        blend_w = vae.tile_sample_min_width - out_stride_w

    rows: list[list[torch.Tensor]] = []
    index = 0
    mine = 0  # tiles this rank decoded
    for i in range(0, height, stride_h):
        row: list[torch.Tensor] = []
        for j in range(0, width, stride_w):
            latent = z[:, :, :, i: i + tile_h, j: j + tile_w]
            if index % ctx.world_size == ctx.rank:
                vae.clear_cache()
                frames = []
                for k in range(num_frames):
                    vae._conv_idx = [0]
                    tile = vae.post_quant_conv(latent[:, :, k: k + 1])
                    frames.append(vae.decoder(tile, feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                              first_chunk=(k == 0)))
                decoded = torch.cat(frames, dim=2)
                mine += 1
            else:  # another rank's tile
                decoded = None
            row.append(decoded)  # type: ignore[arg-type]
            index += 1
        rows.append(row)
    vae.clear_cache()
    # every rank learns every tile's shape from its owner (one object all-gather), then gets every
    # tile: the owner's values, zeros elsewhere, summed (exact)
    shapes = {(r, c): (tuple(t.shape), str(t.dtype)) for r, row in enumerate(rows) for c, t in enumerate(row)
              if t is not None}
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, shapes, group=ctx.group)
    for part in gathered:
        shapes.update(part)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            if tile is None:
                shape, dtype = shapes[(r, c)]
                tile = torch.zeros(shape, dtype=getattr(torch, dtype.removeprefix("torch.")), device=z.device)
            dist.all_reduce(tile, group=ctx.group)
            row[c] = tile

    result_rows = []
    for r, row in enumerate(rows):
        result_row = []
        for c, tile in enumerate(row):
            if r > 0:
                tile = vae.blend_v(rows[r - 1][c], tile, blend_h)
            if c > 0:
                tile = vae.blend_h(row[c - 1], tile, blend_w)
            result_row.append(tile[:, :, :, :out_stride_h, :out_stride_w])
        result_rows.append(torch.cat(result_row, dim=-1))
    dec = torch.cat(result_rows, dim=3)[:, :, :, :sample_height, :sample_width]
    if patch is not None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        dec = unpatchify(dec, patch_size=patch)
    dec = torch.clamp(dec, min=-1.0, max=1.0)
    vae._videogen_tiles_decoded = getattr(vae, "_videogen_tiles_decoded", 0) + mine
    if not return_dict:
        return (dec,)
    return DecoderOutput(sample=dec)


def install(vae: Any, ctx: DistContext) -> None:
    """Decode ``vae``'s tiles across ``ctx``'s ranks (only with tiling enabled and world size > 1)."""
    if not ctx.distributed:
        return

    def tiled_decode(self: Any, z: torch.Tensor, return_dict: bool = True) -> Any:
        return split_tiled_decode(self, z, ctx, return_dict=return_dict)

    vae.tiled_decode = types.MethodType(tiled_decode, vae)
    log.info("vae_decode_split", world_size=ctx.world_size, rank=ctx.rank)
