"""The defence-aware attacker's copy of the client's transmit transform."""

from __future__ import annotations

import math

from cemsplit.shared.defenses.transmit import TransmitTransform
from cemsplit.v1 import attacker_pb2


def transmit_transform(request: attacker_pb2.AttackRequest) -> TransmitTransform:
    """Return the transform the attacker's decoder trains under.

    It is request.transmit when set, else Gaussian noise of request.noise_std (0: none).

    Raises:
        ValueError: an invalid setting, or a noise_std that disagrees with request.transmit.
    """
    if not math.isfinite(request.noise_std) or request.noise_std < 0:
        raise ValueError(f"noise_std {request.noise_std} is invalid; use a finite value >= 0")
    if not request.HasField("transmit"):
        return TransmitTransform.gaussian(request.noise_std)

    transform = TransmitTransform.from_message(request.transmit)
    gaussian_std = transform.noise_std if transform.noise == "gaussian" else 0.0
    if request.noise_std != 0 and request.noise_std != gaussian_std:
        raise ValueError(
            f"noise_std {request.noise_std} disagrees with transmit ({transform.noise} noise, std {transform.noise_std}); "
            "set noise_std to 0 or to the transmit's Gaussian noise_std"
        )
    return transform
