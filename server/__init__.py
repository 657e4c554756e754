"""The split-learning server: holds the model after the cut and trains it over gRPC."""
