"""Image references, normalised as docker does.

`busybox` -> `docker.io/library/busybox:latest`; `localhost:5000/app` keeps its registry; `name:tag@sha256:...`
keeps both (the digest wins when fetching). Invalid references raise `errors.InvalidArgument`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime import errors

DEFAULT_DOMAIN = "docker.io"
# docker.io's API host when no hosts.toml says otherwise
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_ID_RE = re.compile(r"^(?:sha256:)?([a-f0-9]{64})$")
MAX_NAME_LENGTH = 255


def is_sha256_digest(value: str) -> bool:
    return _SHA256_RE.match(value) is not None


def check_digest(value: str, what: str = "digest") -> str:
    """The digest if it is a well-formed `algorithm:hex` (only sha256 is accepted)."""
    if not _DIGEST_RE.match(value):
        raise errors.InvalidArgument(f"invalid {what} {value!r}")
    if not is_sha256_digest(value):
        raise errors.InvalidArgument(f"unsupported {what} {value!r}: only sha256 digests are supported")
    return value


def image_id_hex(value: str) -> str | None:
    """The 64 hex digits if `value` is a full image id (`sha256:<hex>` or bare `<hex>`), else None."""
    match = _ID_RE.match(value)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: `domain/path[:tag][@digest]`."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The repository name with its registry: `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def object(self) -> str:
        """What to ask the registry's manifests endpoint for: the digest if any, else the tag."""
        return self.digest or self.tag

    @property
    def tagged_name(self) -> str | None:
        """`name:tag` (a repo tag), or None for a reference by digest only."""
        return f"{self.name}:{self.tag}" if self.tag else None

    def with_digest(self, digest: str) -> str:
        """`name@digest` (a repo digest)."""
        return f"{self.name}@{digest}"


def parse_reference(value: str) -> Reference:
    """Parse and normalise a reference; no tag and no digest means `:latest`."""
    if not value or value != value.strip():
        raise errors.InvalidArgument(f"invalid image reference {value!r}")
    rest = value
    digest = ""
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        check_digest(digest, f"digest in image reference {value!r}")
    tag = ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.match(tag):
            raise errors.InvalidArgument(f"invalid tag {tag!r} in image reference {value!r}")
    if not rest:
        raise errors.InvalidArgument(f"invalid image reference {value!r}: no repository name")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        domain, path = first, remainder
        if not _DOMAIN_RE.match(domain):
            raise errors.InvalidArgument(f"invalid registry {domain!r} in image reference {value!r}")
        if domain == "index.docker.io":
            domain = DEFAULT_DOMAIN
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if image_id_hex(rest) is not None and not sep:
        raise errors.InvalidArgument(f"invalid image reference {value!r}: a 64-hex name is an image id, not a name")
    if not _PATH_RE.match(path):
        if path.lower() != path and _PATH_RE.match(path.lower()):
            raise errors.InvalidArgument(f"invalid image reference {value!r}: repository names must be lowercase")
        raise errors.InvalidArgument(f"invalid image reference {value!r}: bad repository name {path!r}")
    if len(f"{domain}/{path}") > MAX_NAME_LENGTH:
        raise errors.InvalidArgument(f"invalid image reference {value!r}: name longer than {MAX_NAME_LENGTH}")
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)
