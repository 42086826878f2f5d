"""The segmentation stage (torch): SAM-family promptable segmentation decoded from cached image
features (``fmcache.segment.sam``).

Prompts come from the ground-truth masks (``fmcache.segment.prompts``), 2D label maps or 3D
label volumes (points (x, y, z), boxes of six numbers; ``center`` the deepest voxel in mm when
given the spacing): the same item, class and prompt type get the same prompt in every run,
whatever else the run holds.

    from fmcache.segment import build_prompts
    arrays = build_prompts(masks, ids, ["center", "bbox"], seed=0)

A run saved with ``--save-masks`` gives back each predicted mask:

    from fmcache.segment import predicted_mask
    mask = predicted_mask(run, "bbox", item_id, "left lung")   # bool (H, W)

A volume goes to a 3D model's input block and a prediction comes back onto its voxels with
``to_model_input`` / ``to_original_grid`` (``fmcache.segment.volume_input``, MONAI). The 3D
models (SAM-Med3D, FastSAM3D, SegVol) load with ``load_volume_model``
(``fmcache.segment.volumetric``); a 2D model reads a volumetric dataset through
``slice_dataset`` (``fmcache.segment.slices``), its foreground slices as a 2D dataset.

Nothing heavy loads at import: the prompt builders need only NumPy and SciPy.
"""

from __future__ import annotations

from fmcache._lazy import lazy_exports

_LAZY = {
    "N_POINTS": "fmcache.segment.prompts",
    "PROMPT_TYPES": "fmcache.segment.prompts",
    "Prompt": "fmcache.segment.prompts",
    "VolumeGeometry": "fmcache.segment.volume_input",
    "build_prompts": "fmcache.segment.prompts",
    "load_volume_model": "fmcache.segment.volumetric",
    "slice_dataset": "fmcache.segment.slices",
    "class_prompts": "fmcache.segment.prompts",
    "make_prompt": "fmcache.segment.prompts",
    "nsd_per_sample": "fmcache.segment.surface",
    "predicted_mask": "fmcache.runs.masks",
    "prompt_at": "fmcache.segment.prompts",
    "to_model_input": "fmcache.segment.volume_input",
    "to_original_grid": "fmcache.segment.volume_input",
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
