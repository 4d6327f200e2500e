"""Source-family converters (OFA from fairseq, METER from Lightning) and the shared conversion driver."""

from hfport.converters.pipeline import convert_checkpoint, detect_family

__all__ = ["convert_checkpoint", "detect_family"]
