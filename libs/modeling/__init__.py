"""The GroundNLQ network. Importing the package registers every component."""
from . import backbones, loc_generators, meta_archs, necks  # noqa: F401  (registration)
from .meta_archs import HeadOutputs, LocPointTransformer  # noqa: F401
from .models import make_backbone, make_generator, make_meta_arch, make_neck  # noqa: F401
