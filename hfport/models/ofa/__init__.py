"""OFA model code for transformers 5; these files are copied into every converted OFA folder."""

from .configuration_ofa import OFAConfig
from .modeling_ofa import OFAForConditionalGeneration, OFAModel, OFAPreTrainedModel

__all__ = ["OFAConfig", "OFAForConditionalGeneration", "OFAModel", "OFAPreTrainedModel"]
