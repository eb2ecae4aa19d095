"""The dataset registry: ``dataset_name`` in a config -> the class that reads it.

Apart from ``datasets.py`` (the builders) so that dataset modules can register themselves without
importing the builders back.
"""
from libs.core.registry import Registry

DATASETS = Registry("dataset")
