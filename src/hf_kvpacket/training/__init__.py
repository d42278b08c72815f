"""Adapter training by self-supervised distillation (teacher: joint prompt; student: independent wrapped packets)."""

from .answer_check import AnswerCheck
from .collator import DistillationCollator
from .frozen import FrozenDocumentStudent
from .model import PacketDistillationModel, distillation_loss
from .on_policy import OnPolicyCollator, on_policy_row, teacher_topk_on
from .teacher import TeacherConfig, build_teacher_dataset, tokenize_example
from .trainer import PacketDistillationTrainer

__all__ = [
    "AnswerCheck",
    "DistillationCollator",
    "FrozenDocumentStudent",
    "OnPolicyCollator",
    "PacketDistillationModel",
    "PacketDistillationTrainer",
    "TeacherConfig",
    "build_teacher_dataset",
    "distillation_loss",
    "on_policy_row",
    "teacher_topk_on",
    "tokenize_example",
]
