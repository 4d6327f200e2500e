"""hfport: turn OFA and METER research checkpoints into verified Hugging Face models."""

__version__ = "0.1.0"
