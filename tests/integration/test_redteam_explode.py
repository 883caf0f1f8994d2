"""Red-team attack on an exploded directory (``linux/targets.py``), named after the attack.

A missing volume target under a directory the user may not write is created in a fresh tmpfs
mounted over that directory ("exploding" it), which is then sealed read-only.  The directory may
lie in a volume the user writes from the host: right after the tmpfs is mounted, the user renames
the directory away (its mounts move with it) and plants a symlink to another mount under its
name.  Anything that looked the directory up by name again (to create the target, to seal the
tmpfs) would act on the link's target: root creating directories in a site volume, and making
that volume read-only while the real tmpfs stays writable.

The swap is made deterministic through the syscall seam, as in ``test_redteam_runtime``: the
scenario's ``move_mount`` (or, on the old-kernel path, ``mount``) wrapper lets the user's process
swap right after the kernel attached the tmpfs.  Each scenario runs in its own mount namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.runtime import USER, needs_root, run_scenario, shared_base, swap_scenario  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

# Volumes, in plan order: the user's writable ``/w`` (host ``vol``, holding ``ro``, a root-owned
# directory the user may not write), a site volume ``/other`` (the victim), and the user's ``src``
# at ``/w/ro/new/x``, whose target must be created by exploding ``/w/ro``.
_SCENARIO = swap_scenario("ro", """
def swapping_mount(source, target, fstype, flags, data=None):
    real_mount(source, target, fstype, flags, data)
    if fstype == "tmpfs" and when == "attach":  # the exploding tmpfs, old-kernel path
        swap_as_user()
    if flags & sc.MS_BIND and not flags & sc.MS_REMOUNT and when == "fill":  # keep.txt bound back
        swap_as_user()

def swapping_move_mount(*args):  # the exploding tmpfs is the first mount attached for /w/ro/new/x
    real_move_mount(*args)
    if when == "attach":
        swap_as_user()

when = sys.argv[4]
sc.mount, sc.move_mount = swapping_mount, swapping_move_mount
@NO_FSMOUNT@
user = dict(as_user=privileged, check_target=True)
binds = [p.Bind("user", vol, "/w", **user), p.Bind("site", os.path.join(base, "other"), "/other"),
         p.Bind("user", os.path.join(base, "src"), "/w/ro/new/x", **user)]
try:
    for op in binds:
        armed[:] = [True] if op.target == "/w/ro/new/x" else []
        executor.bind(op, ctx)
    outcome = "mounted"
except ShifterError:
    outcome = "refused"
assert not armed and os.path.islink(os.path.join(vol, "ro")), "the swap did not happen"
tmpfs = os.statvfs(os.path.join(root, "w/ro.old")).f_flag
other = os.statvfs(os.path.join(root, "other")).f_flag
print(outcome, int(os.path.exists(os.path.join(base, "other/new"))), int(bool(other & os.ST_RDONLY)),
      int(bool(tmpfs & os.ST_RDONLY)), int(bool(tmpfs & os.ST_NOSUID)), int(bool(tmpfs & os.ST_NODEV)),
      int(os.path.exists(os.path.join(root, "w/ro.old/new/x/hello.txt"))),
      int(os.path.exists(os.path.join(root, "w/ro.old/keep.txt"))))
""", argc=5)


def _explode_scenario(base: Path, mode: str, when: str, *extra: str) -> list[str]:
    for name in ("root", "vol/ro", "other", "src"):
        (base / name).mkdir(parents=True)
    os.chown(base / "vol", USER, USER)  # vol/ro stays root's: the user cannot create in it
    os.chown(base / "src", USER, USER)
    (base / "vol/ro/keep.txt").write_text("the exploded directory's own entry\n")
    (base / "src/hello.txt").write_text("the new volume\n")
    for path in (base / "root", base / "vol/ro", base / "other"):
        os.chmod(path, 0o755)
    return run_scenario(base, _SCENARIO, mode, when, *extra)


@needs_root
@pytest.mark.parametrize("when", ["attach", "fill"], ids=["swap-once-attached", "swap-once-filled"])
@pytest.mark.parametrize(("mode", "kernel"), [("privileged", ()), ("unprivileged", ()),
                                              ("privileged", ("no-open-tree",))],
                         ids=["privileged", "unprivileged", "privileged-kernel-without-fsmount"])
def test_symlink_swap_after_explode_cannot_redirect_the_seal(
        shared_base: Path, mode: str, kernel: tuple[str, ...], when: str) -> None:  # noqa: F811
    # "attach": right after the tmpfs is attached over the directory; "fill": once its entries
    # are bound back, just before the target is created in it and it is sealed.
    result = _explode_scenario(shared_base, mode, when, *kernel)
    outcome, wrote_other, other_ro, ro, nosuid, nodev, mounted, kept = result
    # Nothing was created in the site volume the planted link names, and it was not remounted...
    assert (wrote_other, other_ro) == ("0", "0")
    # ...the target was created in the tmpfs that was mounted (now at /w/ro.old), which was sealed
    # read-only, nosuid, nodev through its own fd, and the volume is mounted there.  Only without
    # fsmount (Linux < 5.2), where the tmpfs is found again by name, may the container be refused.
    if outcome == "refused":
        assert kernel and when == "attach"
    else:
        assert (outcome, ro, nosuid, nodev, mounted, kept) == ("mounted", "1", "1", "1", "1", "1")
