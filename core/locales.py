"""File names in UTF-8 for the JVM, whatever the caller's locale.

Java names files in the encoding of the locale it starts in (``sun.jnu.encoding``): under cron, in a minimal
container or with ``LC_ALL=C`` that is ASCII. Input files are listed and read by bigtrain in Python
(``pipelines.inputs``), whatever the locale; but ``spark-submit``'s launcher in an ASCII JVM passes a path of its
command line beyond ASCII on with "?" for those letters, and Spark would write an output there. A JVM that
bigtrain starts (a job or ``bigtrain`` command run by Python) is started with ``LC_ALL=C.UTF-8`` when the caller's
locale is not UTF-8 (``jvm_locale_changes``); one started before bigtrain runs (``spark-submit``) is checked, and a
local path beyond ASCII (or with "?") is refused when it is not UTF-8 (``file_name_problem``).
"""
from __future__ import annotations

from typing import Mapping

UTF8_LOCALE = "C.UTF-8"  # glibc has it built in since 2.35, and Debian and Ubuntu images ship it


def effective_ctype(environ: Mapping[str, str]) -> str:
    """The locale a process started with ``environ`` names files in: LC_ALL, else LC_CTYPE, else LANG, else C."""
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        if environ.get(name):
            return environ[name]
    return "C"


def is_utf8(name: str) -> bool:
    codeset = name.partition(".")[2].partition("@")[0]
    return codeset.replace("-", "").lower() == "utf8"


def jvm_locale_changes(environ: Mapping[str, str]) -> dict[str, str]:
    """What to set in the environment of a JVM about to start so that it names files in UTF-8 (nothing when the
    locale already does)."""
    return {} if is_utf8(effective_ctype(environ)) else {"LC_ALL": UTF8_LOCALE}


def file_name_problem(encoding: str | None, environ: Mapping[str, str]) -> str | None:
    """Why a running JVM whose ``sun.jnu.encoding`` is ``encoding`` cannot be trusted to write a path beyond ASCII
    (None: it can)."""
    if encoding is None or encoding.replace("-", "").lower() == "utf8":
        return None
    ctype = effective_ctype(environ)  # Python itself may have set C.UTF-8 after the JVM started (PEP 538)
    started = f"the locale {ctype!r}" if not is_utf8(ctype) else "a locale that is not UTF-8"
    return (f"Spark's JVM names files in {encoding} (it started in {started}), so it "
            "spells this path's letters beyond ASCII as '?': start spark-submit with "
            f"LC_ALL={UTF8_LOCALE} (e.g. `LC_ALL={UTF8_LOCALE} spark-submit ...`, also in cron lines), or run the "
            "job with python or bigtrain, which start Spark in UTF-8 themselves")
