"""A tiny CLIP in OpenAI's state-dict layout, the same on every machine (seeded CPU generator).

Text tower: 2 blocks, width 64 (1 head), context 77, CLIP's 49,408-token vocabulary; image
tower: ViT with 32 px images, 16 px patches, 1 block of width 64; embedding 16. Values are
rounded to float16 as OpenAI's released weights are. ``tests/fixtures/clip/make_clip_fixture.py``
runs OpenAI's own code on these weights; the tests run this project's code on the same weights.
"""
from typing import Dict, List, Tuple

import torch

EMBED, IMAGE, PATCH, WIDTH, CONTEXT, VOCAB = 16, 32, 16, 64, 77, 49408
TEXT_LAYERS, VISION_LAYERS = 2, 1


def _block_shapes(prefix: str, width: int) -> List[Tuple[str, tuple]]:
    return [(f"{prefix}attn.in_proj_weight", (3 * width, width)), (f"{prefix}attn.in_proj_bias", (3 * width,)),
            (f"{prefix}attn.out_proj.weight", (width, width)), (f"{prefix}attn.out_proj.bias", (width,)),
            (f"{prefix}ln_1.weight", (width,)), (f"{prefix}ln_1.bias", (width,)),
            (f"{prefix}mlp.c_fc.weight", (4 * width, width)), (f"{prefix}mlp.c_fc.bias", (4 * width,)),
            (f"{prefix}mlp.c_proj.weight", (width, 4 * width)), (f"{prefix}mlp.c_proj.bias", (width,)),
            (f"{prefix}ln_2.weight", (width,)), (f"{prefix}ln_2.bias", (width,))]


def shapes() -> List[Tuple[str, tuple]]:
    """Every tensor of the tiny CLIP's OpenAI state dict, in a fixed order."""
    grid = IMAGE // PATCH
    out = [("positional_embedding", (CONTEXT, WIDTH)), ("text_projection", (WIDTH, EMBED)),
           ("logit_scale", ()), ("token_embedding.weight", (VOCAB, WIDTH)),
           ("ln_final.weight", (WIDTH,)), ("ln_final.bias", (WIDTH,)),
           ("visual.class_embedding", (WIDTH,)), ("visual.positional_embedding", (grid * grid + 1, WIDTH)),
           ("visual.proj", (WIDTH, EMBED)), ("visual.conv1.weight", (WIDTH, 3, PATCH, PATCH)),
           ("visual.ln_pre.weight", (WIDTH,)), ("visual.ln_pre.bias", (WIDTH,)),
           ("visual.ln_post.weight", (WIDTH,)), ("visual.ln_post.bias", (WIDTH,))]
    for i in range(TEXT_LAYERS):
        out += _block_shapes(f"transformer.resblocks.{i}.", WIDTH)
    for i in range(VISION_LAYERS):
        out += _block_shapes(f"visual.transformer.resblocks.{i}.", WIDTH)
    return out


def tiny_openai_clip_state_dict(seed: int = 0) -> Dict[str, torch.Tensor]:
    """Layer-norm gains near 1, everything else N(0, 0.1^2) (large enough that every layer
    changes the features), float16-exact float32 values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes():
        values = torch.randn(shape, generator=generator)
        is_gain = ".ln_" in f".{name}" and name.endswith("weight")
        state[name] = ((1.0 + 0.1 * values) if is_gain else 0.1 * values).half().float()
    return state
