"""The attacker: records the traffic it is sent and trains model-inversion attacks on it."""
