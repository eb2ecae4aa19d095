"""OpenAI CLIP weights files as ``transformers`` CLIP models, and CLIP's tokenizer, offline.

The reference's text features come from OpenAI's CLIP ViT-B/32 (``ViT-B-32.pt``, a TorchScript
archive its users already hold). ``transformers`` maintains the CLIP architecture but reads its
own folders; this module maps an OpenAI state dict onto ``CLIPTextModel`` and
``CLIPVisionModelWithProjection`` (shapes read from the weights, so any CLIP ViT size works) and
builds ``CLIPTokenizer`` from OpenAI's BPE vocabulary, shipped with this package
(``assets/clip_bpe_simple_vocab_16e6.txt.gz``, MIT, from openai/CLIP). Nothing is downloaded.

Parity with OpenAI's own code is tested against a fixture made with the ``openai-clip`` package
(``tests/fixtures/clip``): token ids equal, token features and image embeddings within 1e-5.
"""
from __future__ import annotations

import gzip
import html
import os
import warnings
import zipfile
from functools import lru_cache
from typing import Any, Dict, List, Tuple

from libs.core.errors import CheckpointError, GroundNLQError, missing_package

BPE_VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                              "clip_bpe_simple_vocab_16e6.txt.gz")
# OpenAI's tokenizer keeps the first 48,894 merges of the file (49,408 ids = 512 byte symbols +
# merges + <|startoftext|> + <|endoftext|>)
NUM_MERGES = 49152 - 256 - 2
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
HEAD_WIDTH = 64  # OpenAI's CLIP: one attention head per 64 channels
INSTALL_HINT = "pip install -e .[text]"


def _is_torchscript_archive(path: str) -> bool:
    """TorchScript zips hold compiled code (``<name>/code/...``); ``torch.save`` zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def read_openai_clip_weights(path: str) -> Dict[str, Any]:
    """The state dict of an OpenAI CLIP file: the TorchScript archive (``ViT-B-32.pt``) or a
    ``torch.save``d state dict (optionally under ``"state_dict"``)."""
    import torch

    if not os.path.isfile(path):
        raise CheckpointError(f"CLIP weights file {path} does not exist; expected a local "
                              f"ViT-B-32.pt (weights are never downloaded at run time)")
    if _is_torchscript_archive(path):
        with warnings.catch_warnings():  # the archive format is deprecated, OpenAI's files use it
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                state = torch.jit.load(path, map_location="cpu").state_dict()
            except RuntimeError as e:
                raise CheckpointError(f"cannot read CLIP TorchScript weights {path}: {e}") from e
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read CLIP weights {path}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "ln_final.weight" not in state:
        raise CheckpointError(f"CLIP weights {path}: expected a CLIP state dict with "
                              f"'ln_final.weight', 'token_embedding.weight', ...")
    return dict(state)


def _count_blocks(state: Dict[str, Any], prefix: str) -> int:
    return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})


def _blocks(state: Dict[str, Any], src: str, num_layers: int, width: int) -> Dict[str, Any]:
    """OpenAI residual attention blocks ``{src}{i}.*`` -> ``transformers`` ``encoder.layers.{i}.*``
    (the packed q/k/v projection split in three)."""
    out = {}
    for i in range(num_layers):
        old, new = f"{src}{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            for name, chunk in zip("qkv", state[f"{old}attn.in_proj_{kind}"].split(width, dim=0)):
                out[f"{new}self_attn.{name}_proj.{kind}"] = chunk
            for src_name, dst_name in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                       ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                                       ("mlp.c_proj", "mlp.fc2")):
                out[f"{new}{dst_name}.{kind}"] = state[f"{old}{src_name}.{kind}"]
    return out


def _load_exactly(module: Any, state: Dict[str, Any], what: str) -> None:
    """Load ``state`` into ``module`` (float32), every parameter covered; non-persistent buffers
    such as ``position_ids`` are left as the module made them."""
    state = {key: value.float() for key, value in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise CheckpointError(f"{what}: converted weights do not fit the transformers model "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")


def text_model_from_openai(state: Dict[str, Any], path: str = "CLIP weights") -> Any:
    """``transformers.CLIPTextModel`` (float32, eval) holding the text tower of an OpenAI state dict.

    Its ``last_hidden_state`` is OpenAI's ``ln_final`` output (token features before the projection).
    """
    try:
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError as e:
        raise missing_package("transformers", "CLIP", INSTALL_HINT) from e
    try:
        vocab_size, width = state["token_embedding.weight"].shape
        context = state["positional_embedding"].shape[0]
        layers = _count_blocks(state, "transformer.resblocks.")
        config = CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=width, intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=layers, num_attention_heads=width // HEAD_WIDTH, max_position_embeddings=context,
            projection_dim=state["text_projection"].shape[1], hidden_act="quick_gelu", layer_norm_eps=1e-5,
            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
        converted = {"embeddings.token_embedding.weight": state["token_embedding.weight"],
                     "embeddings.position_embedding.weight": state["positional_embedding"],
                     "final_layer_norm.weight": state["ln_final.weight"],
                     "final_layer_norm.bias": state["ln_final.bias"],
                     **_blocks(state, "transformer.resblocks.", layers, width)}
    except KeyError as e:
        raise CheckpointError(f"{path}: not an OpenAI CLIP text tower (no {e.args[0]!r})") from e
    model = CLIPTextModel(config)
    _load_exactly(getattr(model, "text_model", model), converted, path)
    return model.float().eval()


def vision_model_from_openai(state: Dict[str, Any], path: str = "CLIP weights") -> Any:
    """``transformers.CLIPVisionModelWithProjection`` (float32, eval) holding the ViT image tower
    of an OpenAI state dict; its ``image_embeds`` are OpenAI's ``encode_image``."""
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    except ImportError as e:
        raise missing_package("transformers", "CLIP", INSTALL_HINT) from e
    try:
        width, _, patch, _ = state["visual.conv1.weight"].shape
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        layers = _count_blocks(state, "visual.transformer.resblocks.")
        config = CLIPVisionConfig(
            hidden_size=width, intermediate_size=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=layers, num_attention_heads=width // HEAD_WIDTH, image_size=patch * grid,
            patch_size=patch, projection_dim=state["visual.proj"].shape[1], hidden_act="quick_gelu",
            layer_norm_eps=1e-5)
        tower = {"embeddings.class_embedding": state["visual.class_embedding"],
                 "embeddings.patch_embedding.weight": state["visual.conv1.weight"],
                 "embeddings.position_embedding.weight": state["visual.positional_embedding"],
                 "pre_layrnorm.weight": state["visual.ln_pre.weight"], "pre_layrnorm.bias": state["visual.ln_pre.bias"],
                 "post_layernorm.weight": state["visual.ln_post.weight"],
                 "post_layernorm.bias": state["visual.ln_post.bias"],
                 **_blocks(state, "visual.transformer.resblocks.", layers, width)}
        projection = state["visual.proj"].t()  # OpenAI: x @ proj; a Linear stores proj transposed
    except KeyError as e:
        raise CheckpointError(f"{path}: not an OpenAI CLIP ViT image tower (no {e.args[0]!r})") from e
    model = CLIPVisionModelWithProjection(config)
    _load_exactly(model.vision_model, tower, path)
    _load_exactly(model.visual_projection, {"weight": projection}, path)
    return model.float().eval()


def vit_b32_vision_model(seed: int) -> Any:
    """CLIP ViT-B/32's image tower with seeded random weights (``transformers``' initialisation):
    the real architecture, offline, for demos and tests. The global RNG is left as it was."""
    import torch

    try:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    except ImportError as e:
        raise missing_package("transformers", "CLIP", INSTALL_HINT) from e
    config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, image_size=224, patch_size=32, projection_dim=512,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config)
    return model.float().eval()


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character table, in its order (the first 256 ids)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@lru_cache(maxsize=2)
def bpe_vocabulary(path: str = BPE_VOCAB_PATH) -> Tuple[Dict[str, int], List[Tuple[str, str]]]:
    """``(vocab, merges)`` of OpenAI's CLIP tokenizer from its gzipped BPE merges file.

    Ids: the 256 byte symbols in ``_bytes_to_unicode`` order, the same with ``</w>``, one per
    merge (its two parts joined), then ``<|startoftext|>`` and ``<|endoftext|>``.
    """
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise GroundNLQError(f"CLIP BPE vocabulary {path} cannot be read: {e}") from e
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]  # line 0 is a version header
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START_TOKEN, END_TOKEN]
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer() -> Any:
    """``transformers.CLIPTokenizer`` over OpenAI's vocabulary (ids equal to ``clip.tokenize``'s
    for text cleaned by ``clean_text``)."""
    try:
        from transformers import CLIPTokenizer
    except ImportError as e:
        raise missing_package("transformers", "CLIP", INSTALL_HINT) from e
    vocab, merges = bpe_vocabulary()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges))


def clean_text(text: str) -> str:
    """OpenAI's ``basic_clean``: ftfy's repairs (mojibake, curly quotes, ...), HTML entities
    unescaped twice, outer whitespace stripped. The tokenizer then collapses whitespace and
    lower-cases, as OpenAI's ``whitespace_clean(...).lower()``."""
    try:
        import ftfy
    except ImportError as e:
        raise missing_package("ftfy", "CLIP", INSTALL_HINT) from e
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()
