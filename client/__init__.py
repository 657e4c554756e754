"""The split-learning client: private data, the feature extractor and the defence."""
