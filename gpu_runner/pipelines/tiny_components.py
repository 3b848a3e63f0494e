"""Tiny random-weight components of the real Wan architecture, built locally (no hub access).

Every builder is deterministic: the same ``seed`` gives bit-identical weights, and the global
torch RNG is left untouched (``torch.random.fork_rng``). The Wan family files (t2v, i2v, animate)
assemble their tiny pipelines from these parts, so the code path is the real diffusers one.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
)

if TYPE_CHECKING:
    from transformers import CLIPImageProcessor

T = TypeVar("T")
M = TypeVar("M", bound=torch.nn.Module)

# Tiny dimensions shared by the components (text_dim of the transformer = d_model of the encoder).
TEXT_DIM = 32
NUM_HEADS = 2
HEAD_DIM = 12
FFN_DIM = 32
NUM_LAYERS = 2
Z_DIM = 16
TEXT_MAX_LENGTH = 512  # Wan's text context length (the i2v processor hard-codes 512)

# Offsets so that components built from one seed do not share random streams.
_SEED_OFFSETS = {"text_encoder": 1, "vae": 2, "transformer": 3, "image_encoder": 4}

_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in (U)MT5
_WORDS = [
    "a", "the", "of", "and", "in", "on", "with", "to", "at", "is", "are", "an", "by", "for", "from", "his", "her",
    "their", "it", "its", "cat", "dog", "man", "woman", "person", "people", "car", "city", "street", "sky", "sun",
    "night", "day", "water", "sea", "forest", "tree", "mountain", "river", "beach", "snow", "rain", "fire", "light",
    "red", "blue", "green", "white", "black", "walking", "running", "dancing", "flying", "sitting", "standing",
    "looking", "smiling", "slow", "fast", "camera", "shot", "view", "close", "up", "wide", "video", "scene",
    "background", "style", "cinematic", "realistic",
]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the CPU torch RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_seeded(seed: int, component: str, factory: Callable[[], T]) -> T:
    """Call ``factory`` under a seed derived from ``seed`` and the component's name."""
    with seeded(seed * 1000 + _SEED_OFFSETS.get(component, 0)):
        return factory()


def cast_like_from_pretrained(model: M, dtype: torch.dtype) -> M:
    """Cast parameters to ``dtype`` except the model's ``_keep_in_fp32_modules`` (kept float32).

    This is what ``from_pretrained(torch_dtype=...)`` does; a plain ``.to(dtype)`` would also cast
    the modules Wan keeps in float32 (rope, time embedder, norms, scale/shift tables).
    """
    if dtype == torch.float32:
        return model
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    with torch.no_grad():
        for name, param in model.named_parameters():
            target = torch.float32 if any(k in name.split(".") for k in keep) else dtype
            param.data = param.data.to(target)
    return model


def tiny_tokenizer(max_length: int = TEXT_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """A small Unigram tokenizer (T5 conventions: pad=0, eos=1, unk=2, ``▁`` word boundaries).

    The vocabulary is fixed in code (special tokens, ``▁word`` pieces for a few common words,
    every printable ASCII character with and without ``▁``), so it is deterministic and needs no
    training data. It round-trips through ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    pieces: list[tuple[str, float]] = [(tok, 0.0) for tok in _SPECIAL_TOKENS]
    pieces += [("▁" + w, -2.0) for w in _WORDS]
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces += [("▁", -6.0)] + [("▁" + c, -7.0) for c in chars] + [(c, -8.0) for c in chars]
    seen: set[str] = set()
    vocab = [(p, s) for p, s in pieces if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]

    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
        padding_side="right",
    )


def tiny_text_encoder(seed: int, vocab_size: int, d_model: int = TEXT_DIM) -> UMT5EncoderModel:
    """A 2-layer UMT5 encoder whose output width matches the tiny transformer's ``text_dim``."""
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = build_seeded(seed, "text_encoder", lambda: UMT5EncoderModel(config))
    return model.eval()


def tiny_vae(seed: int) -> AutoencoderKLWan:
    """The causal Wan VAE (temporal factor 4, spatial factor 8, 16 latent channels), 3 base channels."""
    vae = build_seeded(
        seed,
        "vae",
        lambda: AutoencoderKLWan(
            base_dim=3,
            z_dim=Z_DIM,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ),
    )
    return vae.eval()


def tiny_transformer(
    seed: int,
    *,
    in_channels: int = Z_DIM,
    image_dim: int | None = None,
    added_kv_proj_dim: int | None = None,
) -> WanTransformer3DModel:
    """A 2-block ``WanTransformer3DModel`` (2 heads × 12 dims); ``image_dim`` etc. for i2v variants."""
    model = build_seeded(
        seed,
        "transformer",
        lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=NUM_HEADS,
            attention_head_dim=HEAD_DIM,
            in_channels=in_channels,
            out_channels=Z_DIM,
            text_dim=TEXT_DIM,
            freq_dim=256,
            ffn_dim=FFN_DIM,
            num_layers=NUM_LAYERS,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
        ),
    )
    return model.eval()


def tiny_scheduler(flow_shift: float = 3.0) -> UniPCMultistepScheduler:
    """The scheduler Wan ships with: UniPC on flow-matching sigmas."""
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=flow_shift,
        num_train_timesteps=1000,
    )


def tiny_clip_vision(seed: int, hidden_size: int = 4, image_size: int = 32) -> CLIPVisionModelWithProjection:
    """A tiny CLIP vision tower (for the i2v / animate families' image conditioning)."""
    config = CLIPVisionConfig(
        hidden_size=hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        intermediate_size=16,
        patch_size=1,
    )
    model = build_seeded(seed, "image_encoder", lambda: CLIPVisionModelWithProjection(config))
    return model.eval()


def tiny_clip_image_processor(image_size: int = 32) -> CLIPImageProcessor:
    """The image processor matching ``tiny_clip_vision`` (resize + center crop to ``image_size``)."""
    from transformers import (
        CLIPImageProcessor,  # lazy: warns about torchvision when first touched
    )

    return CLIPImageProcessor(crop_size=image_size, size=image_size)
