"""Stitcher: decoded or encoded segments -> one MP4 of exactly T frames (pure functions + local files).

``blend``: overlap handling on decoded frames (cut / crossfade / callable); ``latent``: Wan VAE
latent blend; ``video``: PyAV encode/decode/probe; ``remux``: packet-level concatenation;
``assemble``: encoded segments -> output, re-encoding only blended overlaps.
"""

from functions.stitch.blend import Stitcher, crossfade, hard_cut, iter_stitch, stitch_frames
from functions.stitch.errors import StitchError

__all__ = ["StitchError", "Stitcher", "crossfade", "hard_cut", "iter_stitch", "stitch_frames"]
