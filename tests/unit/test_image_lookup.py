"""Which image an id prefix names (cri/service/images.py): none, one, or an error naming the candidates."""

from __future__ import annotations

import pytest

from cri.service.images import _SHORT_ID_RE, MIN_ID_PREFIX, pick_by_prefix
from runtime import errors

A = "sha256:" + "ab" * 32
B = "sha256:" + "ab" * 6 + "cd" * 26


def test_a_prefix_names_one_image_or_none() -> None:
    assert pick_by_prefix("ab" * 6, [A]) == A
    assert pick_by_prefix("ff" * 6, []) is None


def test_an_ambiguous_prefix_lists_the_candidates() -> None:
    with pytest.raises(errors.InvalidArgument, match="ambiguous") as info:
        pick_by_prefix("ab" * 6, [B, A])
    assert A in str(info.value) and B in str(info.value)


@pytest.mark.parametrize("ref", ["a", "abc", "sha256:abcd", "0" * (MIN_ID_PREFIX - 1), "Z" * MIN_ID_PREFIX])
def test_short_or_non_hex_is_no_prefix(ref: str) -> None:
    assert _SHORT_ID_RE.match(ref) is None


@pytest.mark.parametrize("ref", ["0" * MIN_ID_PREFIX, "sha256:" + "f" * 40])
def test_twelve_hex_digits_or_more_is_a_prefix(ref: str) -> None:
    assert _SHORT_ID_RE.match(ref) is not None
