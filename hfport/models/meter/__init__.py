"""METER model code; copied verbatim into every converted METER folder (imports only torch and transformers)."""

from .configuration_meter import MeterConfig
from .modeling_meter import (
    MeterForImageTextMatching,
    MeterForImageTextMatchingConfig,
    MeterForMaskedLM,
    MeterForMaskedLMConfig,
    MeterForPreTraining,
    MeterForPreTrainingConfig,
    MeterForQuestionAnswering,
    MeterForQuestionAnsweringConfig,
    MeterForVisualEntailment,
    MeterForVisualEntailmentConfig,
    MeterForVisualReasoning,
    MeterForVisualReasoningConfig,
    MeterModel,
    MeterModelOutput,
    MeterPreTrainedModel,
)

__all__ = [
    "MeterConfig",
    "MeterPreTrainedModel",
    "MeterModel",
    "MeterModelOutput",
    "MeterForQuestionAnswering",
    "MeterForImageTextMatching",
    "MeterForMaskedLM",
    "MeterForPreTraining",
    "MeterForVisualReasoning",
    "MeterForVisualEntailment",
    "MeterForQuestionAnsweringConfig",
    "MeterForImageTextMatchingConfig",
    "MeterForMaskedLMConfig",
    "MeterForPreTrainingConfig",
    "MeterForVisualReasoningConfig",
    "MeterForVisualEntailmentConfig",
]
