"""Image holders, the pure part: names, keys and the record format (see ``linux.holder``).

An *image holder* keeps one squashfuse mount of an image, and the user+mount namespace that owns
it, for one user on one node.  It is found through a per-user runtime directory that only that
user can write, under a key naming the exact image file (the image id and the squashfs file's
device, inode, size and change time) and the launcher's mount namespace.  A re-pull (a new id,
or the file replaced), another store (another file) or a file rewritten in place (a new ctime)
gets a new key, so a holder never serves stale bytes.

Stdlib only, no imports: this module is on the launch path.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os

RECORD_SUFFIX = ".holder"
SOCKET_SUFFIX = ".sock"
LOCK_SUFFIX = ".lock"
MAX_RECORD = 256


def runtime_dirs(uid: int) -> tuple[str, str]:
    """Where ``uid``'s holders live: ``/run/user/UID/shifter`` when the login manager made
    ``/run/user/UID`` for the user, else ``/dev/shm/shifter-UID`` (node-local tmpfs on every
    Linux node); root's in ``/run/shifter-0`` (where no user can plant anything).  The first that
    exists and belongs to the user is used; the second is created."""
    return f"/run/user/{uid}/shifter", f"/dev/shm/shifter-{uid}" if uid else "/run/shifter-0"


def holder_key(image_id: str, st: "os.stat_result", mntns: int) -> str | None:
    """The key of the holder that may serve the image file with status ``st`` to launches from the
    mount namespace with inode ``mntns``, or ``None`` when the id is not a plain hex id (such
    images are mounted afresh).

    The launcher's mount namespace is part of the key: a holder's mount namespace is a copy of the
    one its first launch came from, so launches from another one (e.g. another job's, with a
    per-job ``/tmp``) must not see it."""
    if not image_id or len(image_id) > 128 or any(c not in "0123456789abcdef" for c in image_id):
        return None
    return f"{image_id[:32]}-{st.st_dev:x}-{st.st_ino:x}-{st.st_size:x}-{st.st_ctime_ns:x}-{mntns:x}"


def encode_record(pid: int, userns: int, mntns: int) -> bytes:
    """The record a holder's creator publishes: the holder's pid and the inodes of its user and
    mount namespaces (a joiner checks both on the process a pidfd pins before joining)."""
    return f"1 {pid} {userns} {mntns}\n".encode()


def decode_record(data: bytes) -> tuple[int, int, int] | None:
    """``(pid, userns, mntns)`` from a record, or ``None`` for anything else."""
    try:
        version, pid, userns, mntns = data.decode("ascii").split()
        values = int(pid), int(userns), int(mntns)
    except (UnicodeDecodeError, ValueError):
        return None
    if version != "1" or min(values) <= 0:
        return None
    return values


def index_name(request: list[object], config_path: str, mntns: int) -> str:
    """The file that lets the fast path find the holder of a request's built tree: named by the
    request key (``fastpath.request_key``), the configuration file's path and the launcher's mount
    namespace (FNV-1a over their ``repr``; the file repeats the key, which the reader compares).
    ``fastpath.index_name`` is the same function (a unit test holds them together)."""
    digest = 0xCBF29CE484222325
    for byte in f"{request!r}\0{config_path}\0{mntns}".encode("utf-8", "surrogateescape"):
        digest = ((digest ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"fast-{digest:016x}.json"


__all__ = ["LOCK_SUFFIX", "MAX_RECORD", "RECORD_SUFFIX", "SOCKET_SUFFIX", "decode_record", "encode_record",
           "holder_key", "index_name", "runtime_dirs"]
