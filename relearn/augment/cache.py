"""A content-addressed cache of chat responses on disk, so a repeated augmentation run makes no calls.

key   = sha256 of the canonical JSON of (base_url, model, messages, temperature)
value = the response's message content (a string), stored as `<dir>/<key[:2]>/<key>.json` holding
        {"key": <key>, "content": <content>}

Entries are written atomically (a temporary file in the same folder, then os.replace), so a crash
never leaves a half-written entry and two writers of the same key cannot interleave: the last
complete file wins, and both hold the same content for the same key. An entry that cannot be read
or does not hold its own key is treated as missing and is overwritten by the next `put`.

The cache stores whatever it is given: callers put only successful, well-formed responses.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from relearn.errors import UserError


def cache_key(base_url: str, model: str, messages: list[dict], temperature: float) -> str:
    """The sha256 hex digest of the canonical JSON of a request's content-determining fields."""
    canonical = json.dumps(
        {"base_url": base_url.rstrip("/"), "model": model, "messages": messages, "temperature": float(temperature)},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """Response contents by cache key. `directory` None or "" disables the cache (get misses, put is a no-op)."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory else None

    def path(self, key: str) -> Path:
        if self.directory is None:
            raise ValueError("the cache is disabled")
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        """The cached content, or None when there is no usable entry (missing, unreadable, corrupt)."""
        if self.directory is None:
            return None
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("content"), str):
            return None
        return data["content"]

    def put(self, key: str, content: str) -> None:
        if self.directory is None:
            return
        path = self.path(key)
        payload = json.dumps({"key": key, "content": content}, ensure_ascii=False)
        tmp_name = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, path)
            tmp_name = None
        except OSError as e:
            raise UserError(f"cannot write the augmentation cache entry {path}: {e.strerror or e}") from None
        finally:
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass
