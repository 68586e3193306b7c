"""Paths and URLs: one spelling for the files bigtrain compares and stores, and the fsspec file system of a URL."""
from __future__ import annotations

import os
from urllib.parse import urlparse


def to_url(path_or_url: str) -> str:
    """A local path becomes an absolute ``file://`` URL; URLs (s3://, hdfs://, file://) pass through."""
    if urlparse(path_or_url).scheme and "://" in path_or_url:
        return path_or_url.rstrip("/")
    return "file://" + os.path.abspath(os.path.expanduser(path_or_url))


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def normalise_url(url: str) -> str:
    """Hadoop lists local files as ``file:/a/b``; users write ``file:///a/b``. Compare them in one form."""
    if url.startswith("file:"):
        return "file:/" + url[len("file:"):].lstrip("/")
    return url


def scheme_of(url: str) -> str:
    """``s3``, ``hdfs``, ``file`` (also for a bare local path)."""
    return url.split("://", 1)[0] if "://" in url else "file"


def local_path(url: str) -> str | None:
    """The local path of a ``file:`` URL in any spelling (``file:///a``, Hadoop's ``file:/a``) or of a bare path;
    None for other storage."""
    if url.startswith("file:"):
        return "/" + url[len("file:"):].lstrip("/")
    return url if "://" not in url else None


def filesystem(url: str):
    """(fsspec file system, path within it) of a URL or local path."""
    import fsspec

    return fsspec.core.url_to_fs(url)
