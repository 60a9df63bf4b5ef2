"""The toy model's configuration: an SD1.x-family UNet, a CLIP text encoder without layers and a TAESD-format VAE.

* UNet (ComfyUI's ``UNetModel``, EPS prediction, the SD1 discrete noise schedule): three levels (latent, latent/2,
  latent/4) with attention at latent/4 (the input block, the middle block and the output blocks there) and at
  latent/2 (its input block and output blocks), none at full latent size, as in SD1 the text enters only through
  cross-attention. The pack's guidance reads latent/4 (6x6 at 192 px); latent/2 (12x12) gives the words a finer grid
  to act through and is where Divide & Bind's binding reads the colour words. With latent/4 alone (an earlier
  model) single subjects came out right in 87.5 % of images (here 97 %), and most images with a shape missing
  showed one subject drawn in the other's shape. 32 base channels (64 at latent/2 in 2 heads, 128 at latent/4 in 4
  heads, heads of 32).
* Text encoder (ComfyUI's CLIP text model under the SD1 CLIP node, the SD1 BPE tokenizer): 64-wide trainable token
  and position embeddings and CLIP's final layer norm, no self-attention layer, so each output row is its own word
  at its own place. With one causal layer (an earlier model) the ~70 padding rows after the prompt summed up the
  caption, took 79 % of the UNet's cross-attention and carried the shape but hardly the colour: the model drew
  shapes from the padding and ignored colour words (colour right in 36 % of single-subject images after 5400
  steps; without the layer 72 % after 3800). Without it the words' own rows are the only way in, as the guidance
  methods assume, and which colour goes with which shape is left to the UNet (binding can fail, as in SD).
* VAE: TAESD's layout; its latent is the world's code of ``toyworld.latent`` (``vae_scale`` undoes SD1's latent
  scale factor, so the UNet sees that code as it is).
"""
from __future__ import annotations

from typing import Any

from .latent import LATENT_CHANNELS, LATENT_FACTOR
from .world import IMAGE_SIZE

LATENT_SIZE = IMAGE_SIZE // LATENT_FACTOR
TEXT_WIDTH = 64
SD1_LATENT_SCALE = 0.18215  # ComfyUI's SD1 latent format multiplies VAE latents by this before the UNet
ATTENTION_HEAD_CHANNELS = 32

UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False, "image_size": LATENT_SIZE, "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS, "model_channels": 32, "use_spatial_transformer": True, "legacy": False,
    "context_dim": TEXT_WIDTH, "use_temporal_attention": False, "use_temporal_resblock": False,
    "num_res_blocks": [1, 1, 1], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 1, 1], "transformer_depth_output": [0, 0, 1, 1, 1, 1],
    "transformer_depth_middle": 1, "adm_in_channels": None, "use_linear_in_transformer": True,
}

TEXT_CONFIG: dict[str, Any] = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": TEXT_WIDTH, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 4 * TEXT_WIDTH, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 2,
    "num_hidden_layers": 0, "pad_token_id": 1, "projection_dim": TEXT_WIDTH, "vocab_size": 49408,
}
