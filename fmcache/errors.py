"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class FmcacheError(Exception):
    """Base class: the message names the thing that is wrong and how to fix it."""


class DatasetError(FmcacheError):
    """A dataset copy is missing files or columns, or holds values we cannot read."""


class UnknownNameError(FmcacheError, KeyError):
    """A model, dataset or attribute name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelError(FmcacheError):
    """Weights that are missing, corrupt or do not match the architecture."""


class CacheError(FmcacheError):
    """The cache lacks an entry, holds an incomplete one, or is damaged."""


class CacheMissError(CacheError, KeyError):
    """A (dataset, model) entry that is absent or not complete."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CacheLockedError(CacheError):
    """Another process is writing the entry (named with its host, pid and start time)."""


class CacheDamagedError(CacheError):
    """Stored data that is missing or fails its checksum: never read as plausible numbers."""


class MetricInputError(FmcacheError, ValueError):
    """Predictions, labels or groups that a metric cannot be computed from (NaN, wrong range or shape)."""


class ProvenanceMismatchError(CacheError):
    """A request whose provenance differs from what is cached (use --overwrite to replace)."""


class HeadInputError(FmcacheError):
    """Features, labels, groups or hyperparameters that a head cannot be trained or evaluated on."""


class SegmentInputError(FmcacheError, ValueError):
    """Input the segmentation stage cannot take: a mask or prompt type to build prompts from, or
    images, image features or prompts a model cannot decode (shape, type, count)."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' (did you mean ...?)' hint for a misspelt name, or an empty string."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
