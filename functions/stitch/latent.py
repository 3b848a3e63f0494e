"""Latent blend of an overlap through a Wan causal VAE (``diffusers.AutoencoderKLWan``).

Both overlap clips are encoded (posterior mode), their latents are mixed with a per-latent-frame
ramp and the mix is decoded. The causal VAE maps ``4j+1`` frames onto ``j+1`` latent frames
(latent 0 holds frame 0, latent ``m >= 1`` frames ``4m-3..4m``); a clip of another length is padded
by repeating its last frame and the decode is cut back to ``O`` frames. A latent frame's weight is
the mean crossfade weight of the pixel frames it holds. Blending mixes content rather than
pixels, so a brightness or texture jump is resolved by the decoder instead of ghosted.
torch is imported lazily: the rest of the stitcher does not need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from functions.stitch.blend import crossfade_weights
from functions.stitch.errors import StitchError
from schemas.registry import latent_frames, round_up_window

if TYPE_CHECKING:
    import torch


def latent_weights(overlap: int, temporal: int = 4) -> np.ndarray:
    """Weight of the next clip for each latent frame of a ``temporal*j+1``-padded overlap."""
    pixel = crossfade_weights(overlap)
    latents = latent_frames(round_up_window(overlap, temporal), temporal)
    weights = [float(pixel[0])]
    for m in range(1, latents):
        held = pixel[temporal * (m - 1) + 1 : temporal * m + 1]
        weights.append(float(held.mean()) if len(held) else float(pixel[-1]))
    return np.asarray(weights, dtype=np.float32)


def _to_tensor(frames: np.ndarray, length: int, device: Any, dtype: Any) -> torch.Tensor:
    import torch

    if len(frames) < length:
        frames = np.concatenate([frames, np.repeat(frames[-1:], length - len(frames), axis=0)])
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device=device, dtype=dtype)
    return (x.permute(3, 0, 1, 2).unsqueeze(0) / 127.5) - 1.0  # (1, C, F, H, W) in [-1, 1]


def latent_blend(prev_frames: np.ndarray, next_frames: np.ndarray, vae: Any) -> np.ndarray:
    """Blend two overlap clips ``(O, H, W, 3)`` uint8 in ``vae``'s latent space; ``O`` frames out.

    ``vae`` is a ``diffusers.AutoencoderKLWan`` (any device/dtype). ``H`` and ``W`` must be
    multiples of its spatial factor.
    """
    import torch

    if prev_frames.shape != next_frames.shape or prev_frames.ndim != 4:
        raise StitchError(f"overlap clips differ: {prev_frames.shape} vs {next_frames.shape}")
    overlap = len(prev_frames)
    temporal = int(getattr(vae.config, "scale_factor_temporal", None) or 4)
    padded = round_up_window(overlap, temporal)
    param = next(vae.parameters())
    with torch.no_grad():
        z_prev = vae.encode(_to_tensor(prev_frames, padded, param.device, param.dtype)).latent_dist.mode()
        z_next = vae.encode(_to_tensor(next_frames, padded, param.device, param.dtype)).latent_dist.mode()
        w = torch.from_numpy(latent_weights(overlap, temporal)).to(z_prev.device, z_prev.dtype)
        w = w.view(1, 1, -1, 1, 1)
        video = vae.decode((1.0 - w) * z_prev + w * z_next).sample
    video = ((video[0, :, :overlap].clamp(-1, 1) + 1.0) * 127.5).round()
    return video.permute(1, 2, 3, 0).to(torch.uint8).cpu().numpy()
