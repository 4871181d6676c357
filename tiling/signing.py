"""Signed blob-storage URLs (Planetary Computer's NAIP): tokens kept out of what is stored, added at read time.

Planetary Computer serves NAIP from Azure Blob Storage, readable with a SAS token appended to the URL
("signing") that expires within hours. A token stored in a chip index, a scene list or a recipe stamp
would make every later read of that file fail, so geoclf stores URLs without it (:func:`unsigned`) and
signs just before GDAL opens a raster (:func:`for_reading`). When a read fails anyway (the storage answers
403/409 when the token expired while the file was open, or a table written by an older geoclf holds an
old one), the readers in :mod:`tiling.io` drop the cached token and retry once with a fresh one.

Which URLs are signed follows the ``planetary-computer`` package: every ``*.blob.core.windows.net`` URL
except its public thumbnail account. Private Azure storage is read through GDAL's own credentials
(``/vsiaz/`` with ``AZURE_STORAGE_ACCOUNT`` and ``AZURE_STORAGE_SAS_TOKEN``), never with a token in a URL.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tiling.errors import InputError

#: Host suffix of Azure Blob Storage, the URLs Planetary Computer signs.
BLOB_STORAGE_DOMAIN = ".blob.core.windows.net"
# Planetary Computer's public (unsigned) thumbnail account, which its own signer leaves alone too.
_PUBLIC_ACCOUNTS = ("ai4edatasetspublicassets.blob.core.windows.net",)
# Query parameters of an Azure SAS token (service and user-delegation SAS).
_SAS_KEYS = frozenset({"sv", "ss", "srt", "sp", "se", "st", "spr", "sip", "sr", "sig", "si", "sdd", "skoid",
                       "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid", "ses", "rscc", "rscd",
                       "rsce", "rscl", "rsct"})
_SIGNATURE = re.compile(r"([?&])sig=[^&\s'\"]+")


def signable(url: str) -> bool:
    """Whether ``url`` is a blob-storage URL that needs (and can get) a Planetary Computer token."""
    host = urlsplit(url).netloc.lower()
    return host.endswith(BLOB_STORAGE_DOMAIN) and host not in _PUBLIC_ACCOUNTS


def unsigned(url: str) -> str:
    """``url`` without a SAS token (the form geoclf stores); other URLs and paths are returned unchanged."""
    if not signable(url):
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _SAS_KEYS]
    return urlunsplit(parts._replace(query=urlencode(query)))


def for_reading(url: str, renew: bool = False, timeout: float = 30.0) -> str:
    """The URL to hand GDAL: signed with a current token when it is a blob-storage URL.

    Tokens are cached per storage container for as long as they are valid (by ``planetary-computer``),
    so signing every open costs one request per container and hour, not one per file.

    Args:
        url: a path or URL, signed or not.
        renew: drop the cached token first (the last read with it was refused).
        timeout: seconds to wait for the token service (it is asked with one retry).

    Raises:
        InputError: the token service cannot be reached or refuses the container.
    """
    if not signable(url):
        return url
    from planetary_computer.sas import TOKEN_CACHE, get_token
    from planetary_computer.utils import parse_blob_url

    bare = unsigned(url)
    parts = urlsplit(bare)
    try:
        account, container = parse_blob_url(parts)
    except ValueError as exc:
        raise InputError("is not a blob-storage URL with a container", bare) from exc
    if renew:
        for key in [k for k in TOKEN_CACHE if k.endswith(f"/{account}/{container}")]:
            TOKEN_CACHE.pop(key, None)
    try:
        token = get_token(account, container, retry_total=1, retry_backoff_factor=0.1)
    except Exception as exc:  # requests' HTTP and connection errors, pydantic's on a malformed answer
        raise InputError(f"cannot get a Planetary Computer token for {account}/{container} "
                         f"({_first_line(exc)})", bare) from exc
    return f"{bare}{'&' if parts.query else '?'}{token.token}"


def redact(text: str) -> str:
    """``text`` (an error message quoting a signed URL) with the token's signature left out."""
    return _SIGNATURE.sub(r"\1sig=(redacted)", text)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


__all__ = ["BLOB_STORAGE_DOMAIN", "for_reading", "redact", "signable", "unsigned"]
