"""Registries of the network's components and their builders.

Configs name components by string (``backbone_type``, ``fpn_type``, ``model_name``); these
registries turn the names into modules. Unknown names raise a ``ConfigError`` listing the known ones.
The components register themselves when ``libs.modeling`` is imported (its ``__init__``), which
happens before this module whichever way it is reached; this module imports none of them.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..core.errors import ConfigError
from ..core.registry import Registry

BACKBONES = Registry("backbone")
NECKS = Registry("neck")
GENERATORS = Registry("generator")
META_ARCHS = Registry("meta_arch")


def register_backbone(name: str) -> Callable[[Any], Any]:
    return BACKBONES.register(name)


def register_neck(name: str) -> Callable[[Any], Any]:
    return NECKS.register(name)


def register_generator(name: str) -> Callable[[Any], Any]:
    return GENERATORS.register(name)


def register_meta_arch(name: str) -> Callable[[Any], Any]:
    return META_ARCHS.register(name)


def _build(registry: Registry, config_key: str, name: str, **kwargs: Any) -> nn.Module:
    if name not in registry:
        raise ConfigError(f"{config_key}: unknown {registry.kind} {name!r}; known: {registry.names()}")
    return registry.build(name, **kwargs)


def make_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` (config key ``model.backbone_type``)."""
    return _build(BACKBONES, "model.backbone_type", name, **kwargs)


def make_neck(name: str, **kwargs: Any) -> nn.Module:
    """Build the neck registered as ``name`` (config key ``model.fpn_type``)."""
    return _build(NECKS, "model.fpn_type", name, **kwargs)


def make_generator(name: str, **kwargs: Any) -> nn.Module:
    """Build the location generator registered as ``name`` (``"point"``)."""
    return _build(GENERATORS, "generator", name, **kwargs)


def make_meta_arch(name: str, **kwargs: Any) -> nn.Module:
    """Build the whole model registered as ``name`` (config key ``model_name``) from ``cfg["model"]``."""
    return _build(META_ARCHS, "model_name", name, **kwargs)
