"""From video files to the features a grounding model reads: the feature grid, decoding with
PyAV, a registry of frame backbones, and resumable extraction into feature stores."""
