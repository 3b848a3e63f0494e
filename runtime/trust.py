"""Start-up guards of the trust boundary (issue 13): no silent dev secrets, no credentials in
logs, secret files 0600 from their first byte, embedded servers on loopback with private dirs.

``require_production_secrets`` is called by every process that connects (the functions
service, the GPU runner, the CLI): with ``embedded=false`` it stops start-up with one line
naming the variable when a secret is unset or still a development default.
"""

from __future__ import annotations

import ipaddress
import os
import secrets as _secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from runtime.settings import Settings

# Passwords nobody should run a real deployment with (besides the defaults in Settings).
WEAK_PASSWORDS = frozenset({"", "videogen", "password", "changeme", "secret", "nats", "admin", "test"})


class InsecureSettings(SystemExit):
    """Start-up refused; ``str()`` is the one line printed."""

    def __init__(self, line: str) -> None:
        super().__init__(2)
        self.line = line

    def __str__(self) -> str:
        return self.line


def _default(name: str) -> str:
    value = Settings.model_fields[name].default
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


def dev_defaults() -> dict[str, str]:
    """Setting name -> its public development default (what `videogen up` runs with)."""
    return {name: _default(name) for name in ("webhook_secret", "s3_access_key", "s3_secret_key")}


def _url_password(url: str) -> str | None:
    for one in url.split(","):
        parts = urlsplit(one.strip())
        if parts.password is not None:
            return parts.password
    return None


def insecure_settings(settings: Settings) -> list[str]:
    """What is unset or a development default, as ``VIDEOGEN_<NAME>: why`` (empty when embedded)."""
    if settings.embedded:
        return []
    problems: list[str] = []
    defaults = dev_defaults()
    for name in ("webhook_secret", "s3_access_key", "s3_secret_key"):
        value = getattr(settings, name).get_secret_value()
        if not value.strip():
            problems.append(f"VIDEOGEN_{name.upper()} is unset")
        elif value == defaults[name] or (name != "s3_access_key" and value in WEAK_PASSWORDS):
            problems.append(f"VIDEOGEN_{name.upper()} is the public development default")
    for tenant, secret in sorted(settings.webhook_tenant_secrets.items()):
        value = secret.get_secret_value()
        if not value.strip() or value == defaults["webhook_secret"]:
            problems.append(f"VIDEOGEN_WEBHOOK_TENANT_SECRETS[{tenant}] is unset or the development default")
    if settings.nats_user is not None or settings.nats_password is not None:
        pw = settings.nats_password.get_secret_value() if settings.nats_password is not None else ""
        if pw in WEAK_PASSWORDS:
            problems.append("VIDEOGEN_NATS_PASSWORD is unset or a well-known password")
    url_pw = _url_password(settings.nats_url)
    if url_pw is not None and url_pw in WEAK_PASSWORDS:
        problems.append("VIDEOGEN_NATS_URL carries a well-known password")
    return problems


def require_production_secrets(settings: Settings) -> None:
    """Refuse to start (``InsecureSettings``, exit status 2) on an unset or development secret."""
    problems = insecure_settings(settings)
    if problems:
        line = (f"videogen: refusing to start with VIDEOGEN_EMBEDDED=false: {problems[0]}"
                + (f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""))
        print(line, file=sys.stderr, flush=True)
        raise InsecureSettings(line)


def strip_credentials(url: str | None) -> str | None:
    """``nats://u:p@h:4222,nats://h2`` -> ``nats://***@h:4222,nats://h2`` (user and password gone)."""
    if not url:
        return url
    out = []
    for one in url.split(","):
        parts = urlsplit(one.strip())
        if parts.username is None and parts.password is None:
            out.append(one.strip())
            continue
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        out.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
    return ",".join(out)


# ------------------------------------------------------------------------------------------------
# files and directories
# ------------------------------------------------------------------------------------------------
def write_private_file(path: Path, text: str | bytes) -> None:
    """Write ``path`` mode 0600 from its first byte: a fresh O_EXCL temp file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    tmp = path.with_name(f".{path.name}.{_secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700 (owner only)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


class NotLoopback(ValueError):
    pass


def require_loopback(host: str, what: str) -> str:
    """Embedded servers listen on loopback only; anything else is an operator's explicit setup."""
    if host == "localhost":
        return host
    try:
        ok = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise NotLoopback(f"embedded {what} must bind a loopback address, not {host!r} "
                          "(run your own server and set VIDEOGEN_EMBEDDED=false to listen elsewhere)")
    return host
