"""The embedded tiny FLUX.2 [klein]: the real diffusers/transformers classes at toy sizes, built in code.

Like the FLUX.1 ``tiny`` model (pipeline/models/base_model.py) it is seeded, built once under
``data_dir/base_models/tiny-klein`` with a version file and from then on loaded with
``Flux2KleinPipeline.from_pretrained`` exactly as FLUX.2 [klein] base 4B is, so both share one path. Its images are
noise: it proves the pipeline, not the likeness.

The sizes keep what the klein code paths depend on (measured in issue 35's prototype): Qwen3 with
its 36 layers (only 32 wide) so the pipeline's hidden-state taps (9, 18, 27) work unchanged; 32 VAE latent channels,
128 after the 2x2 patchify, with non-trivial BatchNorm running statistics (the latent normalisation); 4-axis RoPE; no
guidance embedding; ``is_distilled`` False, so guidance above 1 runs real CFG as base klein does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.models.built_models import ensure_built, stored_version

if TYPE_CHECKING:
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen2TokenizerFast

logger = logging.getLogger(__name__)

TINY_KLEIN_MODEL = "tiny-klein"
# Bumped when the layout changes, so an old saved copy is rebuilt rather than half-loaded.
TINY_KLEIN_VERSION = "1"
TINY_KLEIN_FOLDER = "tiny-klein"
# Not the FLUX.1 tiny model's version file: ``is_tiny_klein`` and the FLUX.1 ``tiny`` checks tell them apart by it.
TINY_KLEIN_VERSION_FILE = "likeness_tiny_klein_version.txt"

# Qwen3 hidden states the klein pipeline stacks into its prompt embeddings (BFL's OUTPUT_LAYERS_QWEN3).
KLEIN_TEXT_LAYERS = (9, 18, 27)
TINY_TEXT: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=36, num_attention_heads=2, num_key_value_heads=1,
    head_dim=16, vocab_size=320, max_position_embeddings=1024, tie_word_embeddings=True, rope_theta=1_000_000)
TINY_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1, in_channels=128, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
    joint_attention_dim=3 * 32, timestep_guidance_channels=256, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4),
    rope_theta=2000, guidance_embeds=False)
TINY_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
    latent_channels=32, norm_num_groups=4, sample_size=64, use_quant_conv=True, use_post_quant_conv=True,
    mid_block_add_attention=True)
# FLUX.2's scheduler config (FLUX.2-dev's file; klein's was not found offline). The pipeline computes mu itself.
TINY_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")
# Qwen3's chat template reduced to what the pipeline uses: one user turn, generation prompt, thinking off.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")


def is_tiny_klein(spec: str) -> bool:
    """True for the embedded tiny klein, by name or by its folder."""
    return spec == TINY_KLEIN_MODEL or (Path(spec) / TINY_KLEIN_VERSION_FILE).is_file()


def qwen_tokenizer() -> Qwen2TokenizerFast:
    """Byte-level BPE in Qwen2's layout with no merges (one token per byte, so any text tokenizes), Qwen's special
    tokens and a Qwen3 chat template: built in code, so nothing is downloaded."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2TokenizerFast(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 512
    return tokenizer


def build_tiny_klein_pipeline(seed: int = 0, *, distilled: bool = False) -> Flux2KleinPipeline:
    """A tiny random Flux2KleinPipeline, seeded so every machine builds the same weights. ``distilled`` sets
    ``is_distilled`` (klein 4B/9B: True; the *base* models, which LoRAs are trained on: False)."""
    import torch
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(**TINY_TRANSFORMER)
        torch.manual_seed(seed + 1)
        text_encoder = Qwen3ForCausalLM(Qwen3Config(**TINY_TEXT))
        torch.manual_seed(seed + 2)
        vae = AutoencoderKLFlux2(**TINY_VAE)
    # The BatchNorm holds the latent normalisation (read by the pipeline, never run in forward): non-trivial values
    # so a path that skips it is seen.
    generator = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.1 * torch.randn(vae.bn.num_features, generator=generator))
        vae.bn.running_var.copy_(0.5 + torch.rand(vae.bn.num_features, generator=generator))
    for module in (transformer, text_encoder, vae):
        module.eval()
    return Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**TINY_SCHEDULER), vae=vae,
                              text_encoder=text_encoder, tokenizer=qwen_tokenizer(), transformer=transformer,
                              is_distilled=distilled)


def tiny_klein_version(path: str | Path) -> str:
    """The build saved in ``path`` ("" where there is none)."""
    return stored_version(path, TINY_KLEIN_VERSION_FILE)


def ensure_tiny_klein(data_dir: Path) -> Path:
    """The folder of the embedded tiny klein under ``data_dir/base_models``, built there on first use (0.2 s)."""
    return ensure_built(Path(data_dir) / "base_models" / TINY_KLEIN_FOLDER, version=TINY_KLEIN_VERSION,
                        version_file=TINY_KLEIN_VERSION_FILE, build=build_tiny_klein_pipeline,
                        what="tiny FLUX.2 [klein] model")
