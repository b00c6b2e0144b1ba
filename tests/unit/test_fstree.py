"""runtime/fstree: walks and removals of trees deeper than Python's recursion limit, never following symlinks."""

from __future__ import annotations

import os
from pathlib import Path

from runtime.fstree import remove_tree, tree_usage


def _deep(top: Path, depth: int) -> None:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as f:
        f.write(b"x" * 5000)
    os.close(fd)


def test_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    top = tmp_path / "top"
    top.mkdir()
    _deep(top, 3000)  # paths past 4 KiB: no walk by path can reach the bottom
    used, inodes = tree_usage(str(top))
    assert inodes == 3002 and used >= 5000
    remove_tree(top)
    assert not top.exists()


def test_symlinks_are_removed_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    top = tmp_path / "top"
    (top / "sub").mkdir(parents=True)
    (top / "sub" / "link").symlink_to(outside)
    (top / "hard1").write_text("h")
    os.link(top / "hard1", top / "hard2")
    assert tree_usage(str(top))[1] == 4  # top, sub, link, the hardlinked file once
    remove_tree(top / "sub" / "link")  # a symlink itself is removed
    assert (outside / "keep").exists() and not (top / "sub" / "link").exists()
    (top / "sub" / "link").symlink_to(outside)
    remove_tree(top)
    assert not top.exists() and (outside / "keep").read_text() == "k"
    remove_tree(top)  # absent: fine
    assert tree_usage(str(top)) == (0, 0)


def test_read_only_dirs_go_too(tmp_path: Path) -> None:
    top = tmp_path / "top"
    (top / "ro" / "inner").mkdir(parents=True)
    (top / "ro" / "inner" / "f").write_text("f")
    (top / "ro").chmod(0o500)
    try:
        remove_tree(top)
    except PermissionError:
        assert os.geteuid() != 0  # only root ignores the mode
        (top / "ro").chmod(0o700)
        remove_tree(top)
    assert not top.exists()
