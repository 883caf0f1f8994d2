"""The tree ``shifter-setup`` builds in the host mount namespace is closed to other users (plan data)."""

from __future__ import annotations

from shifter.runtime import plan as p
from tests.unit.test_plan_build import CONFIG, make_spec


def _root_op(ops: list[p.Op]) -> p.MountRootTmpfs:
    return next(op for op in ops if isinstance(op, p.MountRootTmpfs))


def test_prepared_tree_root_is_closed_to_everyone_but_root_and_the_user() -> None:
    root = _root_op(p.tree_ops(make_spec(privileged=True), CONFIG, {}, prepared=True))
    assert root.options.split(",")[0] == "mode=700" and root.only_for == 2001
    assert "uid=" not in root.options  # the root stays root's: the user only gets r-x (an ACL entry)


def test_private_container_root_is_unchanged() -> None:
    root = _root_op(p.tree_ops(make_spec(privileged=True), CONFIG, {}))
    assert (root.options, root.only_for) == ("mode=755,size=64m", -1)
