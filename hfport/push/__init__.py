"""Publishing converted folders to the Hugging Face Hub: the model card and the one-commit push."""

from hfport.push.model_card import build_model_card
from hfport.push.publish import PushPlan, PushResult, plan_push, push

__all__ = ["PushPlan", "PushResult", "build_model_card", "plan_push", "push"]
