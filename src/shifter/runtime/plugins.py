"""Module plugins: site modules whose files are found on the host at launch (``module_<name>_plugin``).

* ``gpu``: the NVIDIA driver's user-space libraries (found through the host's linker cache),
  ``nvidia-smi`` and friends, bound into ``/opt/udiImage/modules/<name>/{lib64,bin}`` (prepended
  to ``LD_LIBRARY_PATH`` and ``PATH``), and the ``/dev/nvidia*`` nodes (``nvidiaN`` only for the
  GPUs ``CUDA_VISIBLE_DEVICES`` names, when it names them by index).  Without a driver it does
  nothing and says so.
* ``mpich``: the host's MPICH-ABI ``libmpi.so.12`` (and its sibling ``libmpicxx``/``libmpifort``
  and the libraries they need, but the C library's own) bound into
  ``/opt/udiImage/modules/<name>/lib`` and prepended to ``LD_LIBRARY_PATH``, after an ABI check
  against the image's library at launch (``plan.CheckMpiAbi``): same major version, an older
  minor in the image with a warning, anything else refused naming both versions.

Everything is looked up under the site's ``pluginHostRoot`` (``/``; tests point it at a fake
driver tree): the linker cache ``<root>/etc/ld.so.cache`` maps names to paths inside that root.
Host files are site-trusted; the binds are made by ``runtime.linux.modexec`` (nosuid, nodev but
for device nodes, read-only).
"""

from __future__ import annotations

import os
import struct

from shifter.config.site import ModuleConfig, SiteConfig
from shifter.errors import ConfigError
from shifter.runtime.environment import EnvRules
from shifter.runtime.plan import MODULES_ROOT
from shifter.runtime.spec import ExtraBind

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

NVIDIA_LIBS = ("libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so",
               "libnvidia-fatbinaryloader.so", "libnvidia-opencl.so", "libnvidia-compiler.so",
               "libcudadebugger.so", "libnvidia-gpucomp.so", "libnvidia-allocator.so", "libnvidia-cfg.so",
               "libnvidia-encode.so", "libnvcuvid.so", "libnvidia-opticalflow.so", "libnvoptix.so",
               "libnvidia-rtcore.so", "libnvidia-eglcore.so", "libnvidia-glcore.so", "libnvidia-tls.so",
               "libnvidia-glsi.so", "libnvidia-fbc.so", "libnvidia-glvkspirv.so", "libGLX_nvidia.so",
               "libEGL_nvidia.so", "libGLESv2_nvidia.so", "libGLESv1_CM_nvidia.so")
NVIDIA_BINS = ("nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-cuda-mps-control",
               "nvidia-cuda-mps-server")
NVIDIA_CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
BIN_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin")
NO_DRIVER = "no NVIDIA driver on this host; gpu module does nothing"
# The MPICH ABI's names (the ABI initiative's and Debian's), as (C library, C++, Fortran).
MPI_SONAMES = (("libmpi.so.12", "libmpicxx.so.12", "libmpifort.so.12"),
               ("libmpich.so.12", "libmpichcxx.so.12", "libmpichfort.so.12"))
MPI_SONAME = "libmpi.so.12"
MPI_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib64",
                "/lib", "/usr/local/lib")
# Libraries that must come from the image (the C library and its loader): never bound.
LIBC_NAMES = frozenset({"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
                        "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libresolv.so.2", "libutil.so.1"})
_CACHE_MAGIC = b"glibc-ld.so.cache1.1"
_MAX_CACHE = 64 * 1024 * 1024


def module_dir(module: ModuleConfig) -> str:
    return f"{MODULES_ROOT}/modules/{module.name}"


def plugin_rules(module: ModuleConfig, environ: Mapping[str, str], config: SiteConfig) -> EnvRules:
    """The environment a plugin adds (its directories prepended), whether or not it found files:
    an empty directory on the path is harmless, and the prepared fast path needs fixed rules."""
    base = module_dir(module)
    if module.plugin == "gpu":
        return EnvRules(f"module_{module.name} (gpu)",
                        prepend=(f"LD_LIBRARY_PATH={base}/lib64", f"PATH={base}/bin"))
    return EnvRules(f"module_{module.name} (mpich)", prepend=(f"LD_LIBRARY_PATH={base}/lib",))


def plugin_binds(module: ModuleConfig, environ: Mapping[str, str],
                 config: SiteConfig) -> tuple[list[ExtraBind], list[str]]:
    """``(binds, warnings)`` of ``module``'s plugin on this host."""
    if module.plugin == "gpu":
        return gpu_binds(module, config.plugin_host_root, environ.get("CUDA_VISIBLE_DEVICES"))
    return mpich_binds(module, config.plugin_host_root)


# --- gpu -----------------------------------------------------------------------------------------

def gpu_binds(module: ModuleConfig, root: str, visible: str | None) -> tuple[list[ExtraBind], list[str]]:
    """The NVIDIA driver's files under ``root`` (see the module docstring)."""
    cache = read_ld_cache(root)
    libs = {name: path for name, path in cache.items() if name.startswith(NVIDIA_LIBS)}
    if "libcuda.so.1" not in libs and "libnvidia-ml.so.1" not in libs:
        return [], [NO_DRIVER]
    origin = f"module:{module.name}"
    base = module_dir(module)
    binds = [ExtraBind(host_path(root, path), f"{base}/lib64/{name}", origin=origin)
             for name, path in sorted(libs.items())]
    for name in NVIDIA_BINS:
        for directory in BIN_DIRS:
            path = host_path(root, f"{directory}/{name}")
            if os.path.isfile(path):
                binds.append(ExtraBind(path, f"{base}/bin/{name}", origin=origin))
                break
    binds += [ExtraBind(path, target, device=True, read_only=False, origin=origin)
              for path, target in gpu_nodes(root, visible)]
    return binds, []


def gpu_nodes(root: str, visible: str | None) -> list[tuple[str, str]]:
    """``(host node, container path)`` of the control nodes and the visible GPUs' nodes."""
    dev = host_path(root, "/dev")
    try:
        names = os.listdir(dev)
    except OSError:
        return []
    gpus = sorted(int(n[6:]) for n in names if n.startswith("nvidia") and n[6:].isdigit())
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        if all(v.isdigit() for v in wanted):  # indices (UUIDs and MIG names: every GPU)
            gpus = [g for g in gpus if str(g) in wanted]
    chosen = [n for n in NVIDIA_CONTROL_NODES if n in names] + [f"nvidia{g}" for g in gpus]
    return [(f"{dev}/{name}", f"/dev/{name}") for name in chosen if _is_char_device(f"{dev}/{name}")]


def _is_char_device(path: str) -> bool:
    try:
        return (os.stat(path, follow_symlinks=False).st_mode & 0o170000) == 0o020000
    except OSError:
        return False


# --- mpich ---------------------------------------------------------------------------------------

def host_mpi(root: str) -> tuple[tuple[str, str, str], dict[str, str]]:
    """The host's MPICH-ABI names (C, C++, Fortran) and its linker cache."""
    cache = read_ld_cache(root)
    for names in MPI_SONAMES:
        if names[0] in cache:
            return names, cache
    raise ConfigError("the mpich module found no MPICH-ABI library (libmpi.so.12 or libmpich.so.12) in this "
                      f"host's linker cache ({root.rstrip('/')}/etc/ld.so.cache)",
                      hint="install MPICH on the host (apt-get install mpich), or do not load the module")


def mpich_binds(module: ModuleConfig, root: str) -> tuple[list[ExtraBind], list[str]]:
    """The host's MPICH-ABI libraries under every ABI name, and what they need but the C library
    (see the module docstring)."""
    names, cache = host_mpi(root)
    origin = f"module:{module.name}"
    base = module_dir(module)
    binds: list[ExtraBind] = []
    for index, name in enumerate(names):  # the host's library under the image's name too
        if name in cache:
            path = host_path(root, cache[name])
            binds += [ExtraBind(path, f"{base}/lib/{alias[index]}", origin=origin) for alias in MPI_SONAMES]
    wanted = [dep for name in names if name in cache for dep in needed_libraries(host_path(root, cache[name]))]
    seen = {alias for group in MPI_SONAMES for alias in group}
    while wanted:
        name = wanted.pop(0)
        if name in seen or name in LIBC_NAMES or name not in cache:
            continue
        seen.add(name)
        path = host_path(root, cache[name])
        binds.append(ExtraBind(path, f"{base}/lib/{name}", origin=origin))
        wanted += needed_libraries(path)
    return binds, []


def check_abi(host: tuple[int, ...], image: tuple[int, ...], image_path: str, host_path_: str) -> str:
    """Sarus' rule: ``""`` when compatible, a warning text for an older minor in the image;
    raises :class:`ContainerError` otherwise, naming both versions."""
    from shifter.errors import ContainerError  # noqa: PLC0415

    def text(version: tuple[int, ...]) -> str:
        return ".".join(map(str, version)) or "unknown"

    if len(host) < 2 or len(image) < 2 or host[0] != image[0] or image[1] > host[1]:
        raise ContainerError(f"the image's MPI library {image_path} (version {text(image)}) is not ABI-compatible "
                             f"with the host's {host_path_} (version {text(host)})",
                             hint="the major versions must match and the image's minor version may not be newer; "
                                  "run without --module=mpich to use the image's own MPI")
    if image[1] < host[1]:
        return (f"the image's MPI library {image_path} (version {text(image)}) is older than the host's "
                f"{host_path_} (version {text(host)}); using the host's")
    return ""


def library_version(path: str) -> tuple[int, ...]:
    """``libmpi.so.12.1.8`` -> ``(12, 1, 8)``: the version in the real file's name."""
    name = os.path.basename(path)
    _, sep, tail = name.partition(".so.")
    parts = tail.split(".") if sep else []
    return tuple(int(p) for p in parts if p.isdigit())


def host_mpi_library(root: str) -> str:
    """The real file of the host's MPICH-ABI C library."""
    names, cache = host_mpi(root)
    return host_path(root, cache[names[0]])


# --- host files ----------------------------------------------------------------------------------

def host_path(root: str, path: str) -> str:
    """``path`` inside the host tree ``root``, its symlinks followed as if ``root`` were ``/`` (an
    absolute link, e.g. through ``/etc/alternatives``, stays in the tree; ``..`` stops at its top)."""
    root = os.path.normpath(root)
    if root == "/":
        return os.path.realpath(path)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, name)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise ConfigError(f"{path}: too many symbolic links in the plugin host tree {root}")
            link = os.readlink(candidate)
            if link.startswith("/"):
                done = []
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        done.append(name)
    return os.path.join(root, *done)


def read_ld_cache(root: str) -> dict[str, str]:
    """``soname -> path`` from ``<root>/etc/ld.so.cache`` (glibc's new format), the first
    (preferred) 64-bit entry of each name; ``{}`` when there is none."""
    try:
        with open(os.path.join(root, "etc/ld.so.cache"), "rb") as handle:
            data = handle.read(_MAX_CACHE)
    except OSError:
        return {}
    return parse_ld_cache(data)


def parse_ld_cache(data: bytes) -> dict[str, str]:
    start = data.find(_CACHE_MAGIC)
    if start < 0 or len(data) < start + 48:
        return {}
    nlibs, _strings = struct.unpack_from("<II", data, start + 20)
    result: dict[str, str] = {}
    for index in range(min(nlibs, (len(data) - start - 48) // 24)):
        flags, key, value = struct.unpack_from("<iII", data, start + 48 + 24 * index)
        if flags & 0xFF00 == 0 and struct.calcsize("P") == 8:
            continue  # a 32-bit library (libc6 i386)
        name, path = _cstring(data, key), _cstring(data, value)
        if name and path.startswith("/"):
            result.setdefault(name, path)
    return result


def _cstring(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    if offset >= len(data) or end < 0:
        return ""
    return data[offset:end].decode("utf-8", "replace")


def needed_libraries(path: str) -> list[str]:
    """The ``DT_NEEDED`` names of a 64-bit little-endian ELF file (``[]`` for anything else)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_CACHE)
    except OSError:
        return []
    if data[:6] != b"\x7fELF\x02\x01":
        return []
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    loads: list[tuple[int, int, int]] = []
    dynamic = None
    for index in range(phnum):
        off = phoff + index * phentsize
        if off + 56 > len(data):
            return []
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, off)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []
    needed: list[int] = []
    strtab = 0
    for off in range(dynamic[0], min(dynamic[0] + dynamic[1], len(data) - 15), 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        if tag == 1:
            needed.append(val)
        elif tag == 5:
            strtab = val
    base = next((offset + strtab - vaddr for vaddr, offset, size in loads if vaddr <= strtab < vaddr + size), -1)
    return [_cstring(data, base + n) for n in needed] if base >= 0 else []


__all__ = ["LIBC_NAMES", "NO_DRIVER", "NVIDIA_BINS", "NVIDIA_LIBS", "check_abi", "gpu_binds", "gpu_nodes",
           "host_mpi", "host_mpi_library", "host_path", "library_version", "mpich_binds", "needed_libraries",
           "parse_ld_cache", "plugin_binds", "plugin_rules", "read_ld_cache"]
