"""OFA model code for transformers 5; these files are copied into every converted OFA folder.

The classes load on first use: importing them pulls in transformers (seconds), which a conversion never needs
(converters/ofa_shapes.py states the shapes, converters/ofa_config_draft.py writes config.json).
"""

_MODELING = ("OFAForConditionalGeneration", "OFAModel", "OFAPreTrainedModel")
__all__ = ["OFAConfig", *_MODELING]


def __getattr__(name: str):
    if name == "OFAConfig":
        from .configuration_ofa import OFAConfig

        return OFAConfig
    if name in _MODELING:
        from . import modeling_ofa

        return getattr(modeling_ofa, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
