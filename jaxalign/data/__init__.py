"""Data: tokenizers, datasets, packing."""
