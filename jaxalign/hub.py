"""Hugging Face Hub ids wherever a model path is taken (`jaxalign.load`, ``init_from``, ``import-hf
--from``, ``generate --checkpoint``): ``org/name`` or ``org/name@revision``.

A string that is neither a URL nor an existing local path and has that form is fetched with
`huggingface_hub.snapshot_download` (the files a checkpoint import reads: configs, safetensors,
tokenizer files) into the Hub cache (``HF_HOME`` / ``HF_HUB_CACHE``), once; later calls read the
cache. ``HF_HUB_OFFLINE=1`` reads the cache only, so a machine without network (a pod's workers, a
test) uses what was fetched before. A path that does not exist and is no Hub id is an error saying so.
"""

from __future__ import annotations

import os
import re

from jaxalign import paths

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# What a checkpoint import reads (hf.py, tokenizer.py); weights in other formats are not fetched.
PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


def is_hub_id(text: str) -> bool:
    """Whether `text` has the form ``org/name[@revision]`` (it may still name a local directory)."""
    return bool(HUB_ID.match(text))


def resolve(path: str | os.PathLike) -> str | os.PathLike:
    """`path` itself when it is a URL or exists locally; else, for a Hub id, the local snapshot
    directory (fetched if needed); else FileNotFoundError saying that the path does not exist."""
    text = os.fspath(path)
    if paths.is_url(text) or os.path.exists(text):
        return path
    if not is_hub_id(text):
        raise FileNotFoundError(f"{text}: no such file or directory")
    repo, _, revision = text.partition("@")
    from huggingface_hub import snapshot_download  # only when a Hub id is given
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return snapshot_download(repo, revision=revision or None, allow_patterns=PATTERNS)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        offline = " (HF_HUB_OFFLINE is set: only the local Hub cache was read)" if _offline() else ""
        raise FileNotFoundError(
            f"{text}: no such local path, and fetching it as a Hugging Face Hub model failed{offline}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)
