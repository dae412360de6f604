"""Streaming recognition: audio sources, VAD, utterance segmentation, incremental features, events."""
