"""OFA model code for transformers 5; these files are copied into every converted OFA folder.

The modelling classes load on first use: importing them pulls in transformers' modelling stack (seconds), which a
conversion never needs (converters/ofa_shapes.py states the shapes).
"""

from .configuration_ofa import OFAConfig

_MODELING = ("OFAForConditionalGeneration", "OFAModel", "OFAPreTrainedModel")
__all__ = ["OFAConfig", *_MODELING]


def __getattr__(name: str):
    if name in _MODELING:
        from . import modeling_ofa

        return getattr(modeling_ofa, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
