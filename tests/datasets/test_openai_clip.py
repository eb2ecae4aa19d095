"""OpenAI CLIP weights through ``transformers``: the tokenizer's ids and the image tower's
embeddings equal OpenAI's own code (fixtures made with the ``openai-clip`` package, see
``tests/fixtures/clip/make_clip_fixture.py``); bad weights files and missing packages are named."""
import gzip
import importlib.util
import json
import sys
import warnings

import numpy as np
import pytest
import torch

from libs.core.errors import CheckpointError, GroundNLQError
from libs.datasets import openai_clip
from tests.conftest import fixture_path
from tests.tiny_clip import VOCAB, tiny_openai_clip_state_dict

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("ftfy") is None,
    reason="text extra not installed (pip install -e .[text])")


def test_vocabulary_has_openai_ids():
    vocab, merges = openai_clip.bpe_vocabulary()
    assert len(vocab) == VOCAB == 49408 and len(merges) == 48894
    assert vocab["!"] == 0 and vocab["!</w>"] == 256  # byte symbols, then the same with </w>
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["".join(merges[0])] == 512  # merges follow, in file order


def test_token_ids_equal_openai_tokenizer_on_every_ego4d_query():
    """13,768 distinct normalised Ego4D-NLQ v2 queries and 14 texts that need ftfy's repairs
    (curly quotes, ligatures, full-width letters, mojibake), HTML unescaping, spacing, emoji."""
    with gzip.open(fixture_path("clip", "token_ids.json.gz"), "rt", encoding="utf-8") as f:
        table = json.load(f)
    assert len(table) == 13782
    tokenizer = openai_clip.clip_tokenizer()
    ours = tokenizer([openai_clip.clean_text(text) for text, _ in table])["input_ids"]
    mismatches = [(text, ids, list(mine)) for (text, ids), mine in zip(table, ours) if list(mine) != ids]
    assert mismatches == []


def test_clean_text_repairs_as_openai():
    assert openai_clip.clean_text("  the dog\u2019s m&amp;amp;ms ") == "the dog's m&ms"


def test_image_embeddings_equal_openai_encode_image():
    expected = torch.load(fixture_path("clip", "expected.pt"), weights_only=True)
    model = openai_clip.vision_model_from_openai(tiny_openai_clip_state_dict())
    assert model.config.image_size == 32 and model.config.patch_size == 16
    with torch.no_grad():
        embeds = model(pixel_values=expected["images"]).image_embeds  # (2, 16)
    np.testing.assert_allclose(embeds.numpy(), expected["image_embeds"].numpy(), atol=1e-5)


def test_text_model_shapes_come_from_the_weights():
    model = openai_clip.text_model_from_openai(tiny_openai_clip_state_dict())
    config = model.config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.max_position_embeddings, config.intermediate_size) == (49408, 64, 2, 1, 77, 256)


def test_weights_without_a_tower_are_named(tmp_path):
    state = tiny_openai_clip_state_dict()
    del state["transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(CheckpointError, match=r"mine\.pt: not an OpenAI CLIP text tower.*resblocks\.1\.mlp\.c_fc\.bias"):
        openai_clip.text_model_from_openai(state, "mine.pt")
    text_only = {k: v for k, v in state.items() if not k.startswith("visual.")}
    with pytest.raises(CheckpointError, match="not an OpenAI CLIP ViT image tower.*visual.conv1.weight"):
        openai_clip.vision_model_from_openai(text_only, "mine.pt")


def test_weights_files_are_checked(tmp_path):
    not_clip = str(tmp_path / "linear.pt")
    torch.save(torch.nn.Linear(2, 2).state_dict(), not_clip)
    assert not openai_clip._is_torchscript_archive(not_clip)
    with pytest.raises(CheckpointError, match="linear.pt.*ln_final"):
        openai_clip.read_openai_clip_weights(not_clip)
    # the TorchScript branch (OpenAI's ViT-B-32.pt is such an archive)
    scripted = str(tmp_path / "scripted.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    assert openai_clip._is_torchscript_archive(scripted)
    with pytest.raises(CheckpointError, match="scripted.pt.*ln_final"):
        openai_clip.read_openai_clip_weights(scripted)
    # a state dict saved under "state_dict" (training checkpoints) is unwrapped
    wrapped = str(tmp_path / "wrapped.pt")
    torch.save({"state_dict": {"ln_final.weight": torch.ones(3)}}, wrapped)
    assert list(openai_clip.read_openai_clip_weights(wrapped)) == ["ln_final.weight"]


def test_missing_ftfy_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ftfy", None)  # import ftfy raises ImportError
    with pytest.raises(GroundNLQError, match=r"'ftfy'.*pip install -e \.\[text\]"):
        openai_clip.clean_text("where?")
