"""Promptable segmentation (torch): SAM-family image features, prompts and mask decoding."""
