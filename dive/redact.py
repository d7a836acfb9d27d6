"""Secrets kept out of everything a run shows or stores: the console, ``error:`` lines, ``config.yaml``, MLflow
params and artifacts, export cards.

A tracking URI may carry a password (``http://alice:s3cret@host/``) and a storage or data URI a signed query
(``s3://bucket/x?X-Amz-Signature=…``). The real value stays in memory, where the clients that need it get it;
every copy written or printed goes through :func:`mask_text` (one string) or :func:`mask_tree` (a config dict),
which replace the password, a bare token user-info and the values of password-like query parameters with
:data:`MASK`. :func:`is_masked` recognises such a copy, so code that reads a saved config back can refuse to use
a masked value instead of sending ``***`` as a password.

Standard library only: importable from ``dive`` (no Ray, no MLflow) and from every pipeline module.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

MASK = "***"

#: A query parameter whose name, lower-cased with ``-``/``_``/``.`` removed, contains one of these holds a secret
#: (``password``, ``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``, ``secret_key``,
#: ``access_key``, ``api_key``, ``client_secret``, ``private_key``, ``X-Goog-Signature``, …).
SECRET_PARTS = (
    "passw",
    "pwd",
    "secret",
    "token",
    "signature",
    "credential",
    "apikey",
    "accesskey",
    "privatekey",
    "sessionkey",
)
#: Short names that are secrets as whole words only (``sig`` is Azure SAS's signature; ``key`` an API key), so
#: that ``keys_per_shard`` or ``signed`` are left alone.
SECRET_WORDS = frozenset({"key", "sig", "pass", "auth", "authorization", "sas", "jwt", "bearer"})

# A URI inside free text (an exception message, a log line): scheme, "://", then up to whitespace or a quote.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


def is_secret_param(name: str) -> bool:
    """Whether a query parameter called ``name`` carries a secret (case-insensitive)."""
    lowered = name.lower()
    squashed = re.sub(r"[-_.]", "", lowered)
    return any(part in squashed for part in SECRET_PARTS) or bool(
        SECRET_WORDS.intersection(re.split(r"[-_.]", lowered))
    )


def _mask_pairs(query: str) -> str | None:
    """``query`` with secret values masked; None when it holds none (so an unchanged URI keeps its spelling)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(is_secret_param(k) for k, _ in pairs):
        return None
    masked = [(k, MASK if is_secret_param(k) else v) for k, v in pairs]
    return urlencode(masked, safe="/:@,*", quote_via=quote)


def mask_uri(value: str) -> str:
    """``value`` with the secrets of its URI masked; anything that is not a URI with secrets comes back as is.

    ``http://alice:s3cret@host/`` → ``http://alice:***@host/`` (the user name helps tell accounts apart);
    ``https://ghp_token@host/`` → ``https://***@host/`` (a user-info without a colon is a token as often as a
    name); ``s3://b/k?X-Amz-Signature=abc&versionId=1`` → ``s3://b/k?X-Amz-Signature=***&versionId=1``.
    """
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
        username, password = parts.username, parts.password
    except ValueError:  # not parseable (e.g. a broken IPv6 host): show the scheme alone, never the rest
        return value.split("://", 1)[0] + "://" + MASK
    if not parts.scheme:
        return value
    netloc = parts.netloc
    if username is not None:
        host = netloc.rpartition("@")[2]  # the same split urllib makes for .username / .hostname
        netloc = f"{username}:{MASK}@{host}" if password is not None else f"{MASK}@{host}"
    query = _mask_pairs(parts.query) if parts.query else None
    fragment = _mask_pairs(parts.fragment) if "=" in parts.fragment else None  # OAuth puts tokens there
    if netloc == parts.netloc and query is None and fragment is None:
        return value
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            parts.path,
            parts.query if query is None else query,
            parts.fragment if fragment is None else fragment,
        )
    )


def mask_text(text: str) -> str:
    """``text`` with every URI in it masked (:func:`mask_uri`): for messages that quote a URI among words."""
    if "://" not in text:
        return text
    return _URI_IN_TEXT.sub(lambda m: mask_uri(m.group(0)), text)


def mask_tree(node: Any) -> Any:
    """A copy of a config-like tree (mappings, lists, scalars) with every string masked (:func:`mask_text`)."""
    if isinstance(node, str):
        return mask_text(node)
    if isinstance(node, Mapping):
        return {k: mask_tree(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [mask_tree(v) for v in node]
    return node


def _masked_uri(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
        if parts.password == MASK or (parts.password is None and parts.username == MASK):
            return True
    except ValueError:
        return uri.endswith("://" + MASK)
    return any(
        is_secret_param(k) and v == MASK
        for section in (parts.query, parts.fragment)
        for k, v in parse_qsl(section, keep_blank_values=True)
    )


def is_masked(text: str) -> bool:
    """Whether ``text`` holds a URI whose secret was masked by :func:`mask_uri`: a saved copy, not a usable
    value."""
    return "://" in text and any(_masked_uri(m.group(0)) for m in _URI_IN_TEXT.finditer(text))


def masked_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys (``tracking.uri``, ``eval.ood.sketch``) of the strings in a config tree that are masked."""
    if isinstance(node, str):
        return [prefix] if is_masked(node) else []
    if isinstance(node, Mapping):
        return [key for k, v in node.items() for key in masked_keys(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(node, list | tuple):
        return [key for i, v in enumerate(node) for key in masked_keys(v, f"{prefix}[{i}]")]
    return []
