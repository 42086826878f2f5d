"""Shared test material: official dataset layouts in miniature, tiny model checkpoints, synthetic volumes."""
