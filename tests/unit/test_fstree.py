"""runtime/fstree: walks and removals of trees deeper than Python's recursion limit, never following symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime import fstree
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


def test_usage_of_a_tree_whose_dirs_move_while_it_is_walked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dir moved while the walk is below it (the image GC retires a snapshot into tmp/ while ImageFsInfo measures
    the store) ends the walk (ESTALE: its way back up is not the way down); the tree is measured again."""
    top = tmp_path / "top"
    (top / "snapshots" / "s1" / "fs").mkdir(parents=True)
    (top / "snapshots" / "s1" / "fs" / "f").write_bytes(b"x" * 5000)
    (top / "tmp").mkdir()
    unmoved = tree_usage(str(top))
    real_walk = fstree._walk
    walks = []

    def walk(path: str, visit: fstree.Visit, leave: fstree.Leave | None) -> None:
        def visit_and_move(fd: int, name: str, st: os.stat_result) -> None:
            visit(fd, name, st)
            if name == "f" and len(walks) == 1:
                os.rename(top / "snapshots" / "s1", top / "tmp" / "s1")  # under the walk, on its first pass

        walks.append(path)
        real_walk(path, visit_and_move, leave)

    monkeypatch.setattr(fstree, "_walk", walk)
    assert tree_usage(str(top)) == unmoved
    assert len(walks) == 2
