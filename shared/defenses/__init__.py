"""Client-side defences against model inversion, and the description an attacker receives.

Modules: transmit (what is sent: noise.py, dropout.py, pruning.py), nopeek (distance
correlation loss), cem/ (per-class clustering and the CEM loss), base (interfaces) and
pipeline (the object the client trainer calls).
"""

from cemsplit.shared.defenses.base import ClientLoss, EncodeTrainingData, StepTensors
from cemsplit.shared.defenses.pipeline import ClientDefense, build_defense
from cemsplit.shared.defenses.transmit import TransmitTransform

__all__ = ["ClientDefense", "ClientLoss", "EncodeTrainingData", "StepTensors", "TransmitTransform", "build_defense"]
