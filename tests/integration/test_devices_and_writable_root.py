"""CDI devices, the gpu plugin against a fake NVIDIA driver tree, and ``--writable-tmpfs``, in real
containers, privileged (root for the test user) and unprivileged (the test user).

The fake driver tree is laid out like a real one: tiny ELF libraries built with gcc under their
real names (``libcuda.so.550.54.14`` with soname ``libcuda.so.1``), a linker cache made by
``ldconfig -r``, ``nvidia-smi`` in ``usr/bin``, and character device nodes made with ``mknod``
(numbers of ``/dev/null``, so the container can open them) under the tree's ``dev``.  The site
points the plugin at it with ``pluginHostRoot``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.hostlibs import build_lib, char_node, make_tree, update_cache
from tests.fixtures.runtime import (
    IS_ROOT,
    SHIFTER,
    TEST_UID,
    TEST_USER,
    build_rootfs,
    container_site,
    ensure_user,
    needs_tools,
    publish,
    shifter_env,
)

pytestmark = [pytest.mark.integration, needs_tools,
              pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc (fake driver libraries)")]

Runner = Callable[..., subprocess.CompletedProcess[str]]
DRIVER_LIBS = {"libcuda.so.1": "libcuda.so.550.54.14", "libnvidia-ml.so.1": "libnvidia-ml.so.550.54.14"}
NULL = (1, 3)  # the fake nodes' numbers (tests.fixtures.hostlibs.char_node)


@dataclass
class Site:
    base: Path
    config: Path
    driver: Path


def _write_config(base: Path, name: str, extra: str) -> Path:
    config = base / name
    config.write_text(f"imagePath={base / 'store'}\nudiMount={base / 'udi'}\nloopMount={base / 'loop'}\n"
                      f"autoPull=0\nuserImagePath=\nmaxGroupCount=8\n{extra}")
    os.chmod(config, 0o644)
    return config


def build_driver_tree(root: Path) -> None:
    """A fake NVIDIA driver installation (see the module docstring) plus things that must not be bound."""
    libdir = make_tree(root)
    for soname, real in DRIVER_LIBS.items():
        build_lib(libdir, real, soname)
    build_lib(libdir, "libunrelated.so.1.0", "libunrelated.so.1")  # not the driver's: never bound
    update_cache(root)
    (root / "usr/bin/nvidia-smi").write_text("#!/bin/sh\necho fake-nvidia-smi\n")
    (root / "usr/bin/unrelated-tool").write_text("#!/bin/sh\necho no\n")
    for name in ("nvidia-smi", "unrelated-tool"):
        os.chmod(root / "usr/bin" / name, 0o755)
    for name in ("nvidia-uvm", "nvidiactl", "nvidia0", "nvidia1", "other0"):
        char_node(root / "dev" / name)


def _write_cdi(directory: Path, name: str, spec: object) -> None:
    directory.mkdir(mode=0o755, exist_ok=True)
    path = directory / name
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    os.chmod(path, 0o644)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    if not IS_ROOT:
        pytest.skip("needs root")
    ensure_user()
    base = container_site("shifter-dev-", "store/tags/docker", "udi", "loop", "nodes", "cdidata")
    rootfs = base / "rootfs"
    build_rootfs(rootfs)
    (rootfs / "scratch").mkdir(mode=0o1777)
    os.chmod(rootfs / "scratch", 0o1777)
    publish(base / "store", rootfs, "docker.io/library/busybox:dev", "8" * 64)
    # The same image with /scratch owned by the test user (ownership kept: no -all-root).
    os.chown(rootfs / "scratch", TEST_UID, TEST_UID)
    publish(base / "store", rootfs, "docker.io/library/busybox:owned", "9" * 64)
    subprocess.run(["mksquashfs", str(rootfs), str(base / "store" / f"{'9' * 64}.squashfs"), "-noappend", "-quiet",
                    "-comp", "lz4"], check=True, stdout=subprocess.DEVNULL)
    for dirpath, _dirs, files in os.walk(base / "store"):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    driver = base / "driver"
    build_driver_tree(driver)
    char_node(base / "nodes/fake0")
    (base / "cdidata/f.txt").write_text("cdi data\n")
    spec = {"cdiVersion": "0.6.0", "kind": "example.com/fake",
            "containerEdits": {"env": ["CDI_COMMON=1"]},
            "devices": [{"name": "dev0", "containerEdits": {
                "deviceNodes": [{"path": "/dev/fake0", "hostPath": str(base / "nodes/fake0"), "type": "c",
                                 "major": NULL[0], "minor": NULL[1]}],
                "mounts": [{"hostPath": str(base / "cdidata"), "containerPath": "/opt/cdidata",
                            "options": ["ro", "bind"]}],
                "env": ["CDI_FAKE=yes"]}}]}
    _write_cdi(base / "cdi", "fake.json", spec)
    _write_cdi(base / "cdibad", "broken.json", '{"cdiVersion": "0.6.0", "kind": ')
    _write_config(base, "udiRoot.conf",
                  f"cdiSpecDirs={base / 'cdi'}\npluginHostRoot={driver}\nmodule_gpu_plugin=gpu\n"
                  "writableTmpfsSize=1M\n")
    yield Site(base, base / "udiRoot.conf", driver)
    shutil.rmtree(base, ignore_errors=True)


def run_priv(site: Site, *args: str, config: Path | None = None, user: bool = True, image: str = "busybox:dev",
             **extra: str) -> subprocess.CompletedProcess[str]:
    who = [f"--user={TEST_USER}"] if user else []
    return subprocess.run([SHIFTER, *who, f"--image={image}", *args], cwd="/",
                          env=shifter_env(config or site.config, **extra), capture_output=True, text=True,
                          timeout=120, check=False)


def run_user(site: Site, *args: str, config: Path | None = None, image: str = "busybox:dev",
             **extra: str) -> subprocess.CompletedProcess[str]:
    env = [f"{k}={v}" for k, v in shifter_env(config or site.config, USER=TEST_USER, **extra).items()]
    return subprocess.run(["runuser", "-u", TEST_USER, "--", "env", "-i", *env, SHIFTER, f"--image={image}",
                           *args], cwd="/", capture_output=True, text=True, timeout=120, check=False)


MODES = pytest.mark.parametrize("runner", [run_priv, run_user], ids=["privileged", "unprivileged"])


def _mount_options(mountinfo: str, target: str) -> list[str]:
    lines = [line.split() for line in mountinfo.splitlines() if line.split()[4:5] == [target]]
    assert lines, f"{target} is not mounted:\n{mountinfo}"
    return lines[-1][5].split(",")


# --- CDI -----------------------------------------------------------------------------------------

@MODES
def test_cdi_device_node_mount_and_env_are_applied_exactly(site: Site, runner: Runner) -> None:
    script = ("echo x > /dev/fake0 && echo node-ok; cat /opt/cdidata/f.txt; echo $CDI_FAKE $CDI_COMMON; "
              "touch /opt/cdidata/new 2>/dev/null || echo mount-ro; cat /proc/self/mountinfo")
    res = runner(site, "--device=example.com/fake=dev0", "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:4] == ["node-ok", "cdi data", "yes 1", "mount-ro"]
    node = _mount_options(res.stdout, "/dev/fake0")
    assert "nosuid" in node and "nodev" not in node  # the one bind with device access
    data = _mount_options(res.stdout, "/opt/cdidata")
    assert {"ro", "nosuid", "nodev"} <= set(data)
    assert not os.path.exists("/dev/fake0")  # nothing was created in the host's /dev


@MODES
def test_cdi_unknown_device_is_a_usage_error(site: Site, runner: Runner) -> None:
    res = runner(site, "--device=example.com/fake=nope", "true")
    assert res.returncode == 2
    assert "unknown CDI device 'example.com/fake=nope'" in res.stderr and "example.com/fake=dev0" in res.stderr


def test_malformed_cdi_spec_is_an_error_naming_the_file(site: Site) -> None:
    config = _write_config(site.base, "bad.conf", f"cdiSpecDirs={site.base / 'cdibad'}\n")
    res = run_user(site, "--device=example.com/fake=dev0", "true", config=config)
    assert res.returncode == 2
    assert f"CDI spec {site.base / 'cdibad/broken.json'} cannot be parsed" in res.stderr
    assert "Traceback" not in res.stderr


def test_writable_cdi_spec_is_not_trusted(site: Site) -> None:
    writable = site.base / "cdiopen"
    _write_cdi(writable, "fake.json", (site.base / "cdi/fake.json").read_text())
    os.chmod(writable / "fake.json", 0o666)
    config = _write_config(site.base, "open.conf", f"cdiSpecDirs={writable}\n")
    res = run_priv(site, "--device=example.com/fake=dev0", "true", config=config)
    assert res.returncode == 2
    assert "is not owned by root or is writable by others" in res.stderr


def test_cdi_create_container_hook_runs_with_a_fixed_environment(site: Site) -> None:
    marker = site.base / "hook.out"
    hook = site.base / "cdihook.sh"
    hook.write_text(f"#!/bin/sh\necho \"$1 uid=$(id -u) leak=${{LEAKME:-none}}\" > {marker}\n")
    os.chmod(hook, 0o755)
    spec = {"cdiVersion": "0.6.0", "kind": "example.com/hooked", "devices": [{"name": "h", "containerEdits": {
        "hooks": [{"hookName": "createContainer", "path": str(hook), "args": ["cdihook", "arg1"]}]}}]}
    _write_cdi(site.base / "cdihook", "hook.json", spec)
    config = _write_config(site.base, "hook.conf", f"cdiSpecDirs={site.base / 'cdihook'}\n")
    res = run_priv(site, "--device=example.com/hooked=h", "true", config=config, LEAKME="x")
    assert res.returncode == 0, res.stderr
    assert marker.read_text().strip() == "arg1 uid=0 leak=none"


# --- gpu -----------------------------------------------------------------------------------------

@MODES
def test_gpu_module_binds_the_driver_files_and_nothing_else(site: Site, runner: Runner) -> None:
    script = ("ls /opt/udiImage/modules/gpu/lib64; echo --; ls /opt/udiImage/modules/gpu/bin; echo --; "
              "nvidia-smi; echo $LD_LIBRARY_PATH; ls /dev | grep -E 'nvidia|other0'; echo x > /dev/nvidia0 && echo ok")
    res = runner(site, "--module=gpu", "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    libs, bins, rest = res.stdout.split("\n--\n")
    assert libs.split() == sorted(DRIVER_LIBS)
    assert bins.split() == ["nvidia-smi"]
    out = rest.splitlines()
    assert out[0] == "fake-nvidia-smi"
    assert out[1].split(":")[0] == "/opt/udiImage/modules/gpu/lib64"
    assert out[2:] == ["nvidia-uvm", "nvidia0", "nvidia1", "nvidiactl", "ok"]


@MODES
def test_gpu_module_honours_cuda_visible_devices(site: Site, runner: Runner) -> None:
    res = runner(site, "--module=gpu", "sh", "-c", "ls /dev | grep nvidia", CUDA_VISIBLE_DEVICES="1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["nvidia-uvm", "nvidia1", "nvidiactl"]


def test_gpu_module_says_it_does_nothing_without_a_driver(site: Site) -> None:
    config = _write_config(site.base, "nodriver.conf", "module_gpu_plugin=gpu\n")  # the real host: no driver
    res = run_user(site, "--module=gpu", "true", config=config)
    assert res.returncode == 0, res.stderr
    assert "no NVIDIA driver on this host; gpu module does nothing" in res.stderr


# --- writable root -------------------------------------------------------------------------------
# Image "owned": /scratch belongs to the test user.  Unprivileged, the kernel's overlayfs cannot copy
# up what belongs to an id the user namespace does not map (root's files): see docs/modules.md.

@MODES
def test_writable_tmpfs_makes_the_image_writable_until_the_container_ends(site: Site, runner: Runner) -> None:
    res = runner(site, "sh", "-c", "echo x > /scratch/f 2>/dev/null || echo refused", image="busybox:owned")
    assert res.stdout.strip() == "refused"  # the image itself is read-only
    res = runner(site, "--writable-tmpfs", "sh", "-c", "echo hello > /scratch/f && cat /scratch/f",
                 image="busybox:owned")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "hello"
    res = runner(site, "--writable-tmpfs", "sh", "-c", "cat /scratch/f 2>/dev/null || echo gone", image="busybox:owned")
    assert res.stdout.strip() == "gone"


def test_writable_tmpfs_as_root_can_change_the_image_tree(site: Site) -> None:
    res = run_priv(site, "--writable-tmpfs", "sh", "-c", "echo y > /usr/bin/new && cat /usr/bin/new", user=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "y"


def test_writable_tmpfs_unprivileged_cannot_copy_up_files_of_unmapped_owners(site: Site) -> None:
    res = run_user(site, "--writable-tmpfs", "sh", "-c", "touch /scratch/f 2>&1; echo rc=$?")
    assert "rc=1" in res.stdout and "Permission denied" in res.stdout  # the documented limit, not a crash
    res = run_priv(site, "--writable-tmpfs", "sh", "-c", "touch /scratch/f && echo ok")
    assert res.stdout.strip() == "ok"  # privileged: root's overlay copies up anything


@MODES
def test_writable_tmpfs_is_size_capped(site: Site, runner: Runner) -> None:
    res = runner(site, "--writable-tmpfs", "sh", "-c",
                 "dd if=/dev/zero of=/scratch/big bs=1024 count=4096 2>&1; echo rc=$?", image="busybox:owned")
    assert "rc=0" not in res.stdout  # writableTmpfsSize=1M
    assert "No space left on device" in res.stdout


@MODES
def test_writable_tmpfs_keeps_nosuid(site: Site, runner: Runner) -> None:
    res = runner(site, "--writable-tmpfs", "sh", "-c", "/usr/bin/busybox id -u", image="busybox:owned")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(TEST_UID)  # the image's setuid-root busybox stays powerless


# --- prepared containers -------------------------------------------------------------------------

def test_prepared_container_gets_plugin_and_cdi_devices(site: Site) -> None:
    tools = Path(SHIFTER).parent
    request = ["--image=busybox:dev", "--module=gpu", "--device=example.com/fake=dev0"]
    setup = subprocess.run([str(tools / "shifter-setup"), *request, f"--user={TEST_USER}"],
                           env=shifter_env(site.config), capture_output=True, text=True, timeout=120, check=False,
                           cwd="/")
    assert setup.returncode == 0, setup.stderr
    try:
        assert "fast" not in json.loads((site.base / "udi.json").read_text())  # plugin/CDI env: full path
        res = run_user(site, "--module=gpu", "--device=example.com/fake=dev0", "sh", "-c",
                       "ls /dev | grep -E 'nvidia0|fake0'; echo $CDI_FAKE; nvidia-smi")
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["fake0", "nvidia0", "yes", "fake-nvidia-smi"]
        # Without the device the request does not match the prepared tree: a private container.
        res = run_user(site, "--module=gpu", "sh", "-c", "ls /dev/fake0 2>&1 || echo absent")
        assert res.stdout.strip().endswith("absent")
    finally:
        subprocess.run([str(tools / "shifter-teardown")], env=shifter_env(site.config), capture_output=True,
                       check=False, cwd="/")


def test_prepared_container_refuses_writable_tmpfs(site: Site) -> None:
    tools = Path(SHIFTER).parent
    res = subprocess.run([str(tools / "shifter-setup"), "--image=busybox:dev", f"--user={TEST_USER}",
                          "--writable-tmpfs"], env=shifter_env(site.config), capture_output=True, text=True,
                         timeout=120, check=False, cwd="/")
    assert res.returncode == 2 and "--writable-tmpfs is not available for prepared containers" in res.stderr


def test_cdi_spec_that_is_a_symlink_is_refused(site: Site) -> None:
    linked = site.base / "cdilink"
    linked.mkdir(mode=0o755, exist_ok=True)
    (linked / "fake.json").symlink_to(site.base / "cdi/fake.json")
    config = _write_config(site.base, "link.conf", f"cdiSpecDirs={linked}\n")
    res = run_user(site, "--device=example.com/fake=dev0", "true", config=config)
    assert res.returncode == 2 and "cannot open it" in res.stderr and "symlinks" in res.stderr
