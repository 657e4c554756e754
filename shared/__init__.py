"""Code used by more than one role: models, datasets, defences, tensor codec, config, metrics."""
