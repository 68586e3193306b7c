"""Secrets never leave the process: config values whose names say they are secret (Hadoop's
``fs.s3a.secret.key``, ``fs.s3a.session.token``, ``fs.azure.account.key.<account>...``, a ``password``) and the
password of a URL are replaced with ``<redacted>`` wherever bigtrain stores, logs or prints a config: manifests,
checkpoints, run records, ``datasets show``, config errors. The values themselves are used as given."""
from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"
# A name is secret when its last word is one of these ...
_SECRET_LAST = {"secret", "password", "passwd", "pwd", "passphrase", "token", "apikey", "credential", "credentials",
                "signature"}
# ... or when it holds "key" right after one of these (secret.key, access.key, account.key.<name>, private_key).
_KEY_QUALIFIERS = {"access", "secret", "api", "private", "account", "sas", "encryption", "session", "signing",
                   "client", "master", "storage"}
# Anywhere in a name, these words mark a secret (keyStorePassword, secret.access.key.id, Azure's
# fs.azure.sas.<container>.<account>.blob.core.windows.net, whose value is a SAS token ...).
_SECRET_ANYWHERE = {"secret", "password", "passwd", "passphrase", "sas"}
_NOT_A_SECRET_LAST = ("provider", "providers", "class", "type")  # fs.azure.sas.token.provider.type: a class name
# A URL's password (it may hold "/"), up to the "@" of its authority.
_URL_PASSWORD = re.compile(r"(?P<head>://[^/\s:@]+:)[^\s@]+@")
# Secrets inside a value: connection strings (AccountKey=...;), SAS query strings (sig=...&), JDBC passwords.
_INNER_SECRET = re.compile(r"(?P<head>\b(?:AccountKey|SharedAccessKey|SharedAccessSignature|sig|password|pwd)=)"
                           r"[^;&\s]+", re.IGNORECASE)
_ASSIGNMENT = re.compile(r"^(?P<dashes>-*)(?P<name>[\w.\-]+)=(?P<value>.*)$", re.DOTALL)


def words(name: str) -> list[str]:
    """``fs.s3a.secret.key`` -> [fs, s3a, secret, key]; ``keyStorePassword`` -> [key, store, password]."""
    return re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())


def sensitive(name: str) -> bool:
    """Whether a config key (dotted, snake_case or camelCase) names a secret."""
    found = words(name)
    if not found:
        return False
    if found[-1] in _SECRET_LAST or _SECRET_ANYWHERE.intersection(found):
        return found[-1] not in _NOT_A_SECRET_LAST  # fs.s3a.aws.credentials.provider is a class name
    return any(w == "key" and i and found[i - 1] in _KEY_QUALIFIERS for i, w in enumerate(found))


def redact(value: Any, name: str = "") -> Any:
    """A copy of ``value`` (mappings, lists, strings) with secrets replaced: the value of every secret key (judged
    on its full dotted name below ``name``), the password in URLs, and ``KEY=VALUE`` strings (``--set`` and
    ``--conf`` arguments) whose key is secret."""
    if name and sensitive(name):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, f"{name}.{k}" if name else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, name) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """One string: a ``KEY=VALUE`` whose key is secret keeps only its key; a URL's password is hidden; so are the
    secrets of connection strings and SAS query strings; an option string (``-Da=1 -Dfs.s3a.secret.key=...``)
    is judged word by word."""
    if re.search(r"\s", text.strip()):
        return re.sub(r"\S+", lambda m: redact_text(m.group(0)), text)
    match = _ASSIGNMENT.match(text)
    if match:
        value = REDACTED if sensitive(match["name"]) else redact_text(match["value"])  # --conf=K=V: judge K too
        return f"{match['dashes']}{match['name']}={value}"
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    return _INNER_SECRET.sub(lambda m: f"{m['head']}{REDACTED}", text)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with secret values hidden: ``--set K=V`` and ``--conf K=V`` (one or two arguments), and
    ``--some-secret V``."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        previous = argv[i - 1] if i else ""
        if previous.startswith("--") and "=" not in previous and sensitive(previous) and not arg.startswith("-"):
            out.append(REDACTED)
        else:
            out.append(redact_text(arg))
    return out
