"""A tiny SegVol configuration (fmcache.embed.segvol) and a tiny CLIP tokenizer saved like the release's."""

from __future__ import annotations

from pathlib import Path

from fmcache.embed.segvol import SegVolConfig

# grid (2, 2, 3): every axis of the (X, Y, Z) block differs, so a wrong permutation changes shapes
TINY_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 vocab_size=518, max_position_embeddings=40)
TINY = SegVolConfig(spatial_size=(8, 32, 48), patch_size=(4, 16, 16), hidden_size=48, mlp_dim=96,
                    num_layers=2, num_heads=2, decoder_depth=2, decoder_mlp_dim=64, decoder_heads=2,
                    iou_head_hidden_dim=16, text=TINY_TEXT)


def write_tiny_tokenizer(folder: Path) -> Path:
    """A tiny CLIP BPE tokenizer (byte alphabet, a few merges) saved into ``folder``."""
    from transformers import CLIPTokenizer

    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in keep]
    chars = [chr(c) for c in keep] + [chr(256 + i) for i in range(len(extra))]
    merges = [("l", "i"), ("li", "v"), ("e", "r</w>"), ("liv", "er</w>")]
    tokens = chars + [c + "</w>" for c in chars] + ["li", "liv", "er</w>", "liver</w>"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # last, so the end token has the largest id as in CLIP
    assert len(tokens) == TINY_TEXT["vocab_size"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tok.save_pretrained(str(folder))
    return folder
