"""The root conftest's test order: ``slow`` and ``notebook`` tests first
(so the xdist workers finish together), every group in collection order."""

from __future__ import annotations

import conftest  # the repository root's, on sys.path as pytest's rootdir


class _Item:
    def __init__(self, name: str, *marks: str) -> None:
        self.name, self.marks = name, marks

    def get_closest_marker(self, name: str):
        return name if name in self.marks else None


def test_slow_and_notebook_tests_run_first_in_collection_order():
    items = [_Item("a"), _Item("b", "slow"), _Item("c", "gpu"), _Item("d", "notebook"), _Item("e"),
             _Item("f", "slow", "gpu")]  # fmt: skip
    conftest.pytest_collection_modifyitems(None, items)
    assert [item.name for item in items] == ["b", "d", "f", "a", "c", "e"]
