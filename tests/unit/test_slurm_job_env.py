"""The Slurm job's variables and paths: what the allocator exports, what the prolog reads, and where
a job's prepared container lives (the full path and the fast path must agree on it)."""

from __future__ import annotations

import pytest

from shifter.cli.slurm import _submit_args
from shifter.errors import UsageError
from shifter.runtime.linux.fastpath import job_udi_mount
from shifter.runtime.prepared import job_mounts
from shifter.wlm.slurm.job import job_env_lines, job_from_env

HEX = "ab" * 32


def test_job_env_lines_pin_the_image_id_as_nersc_shifter_names_it() -> None:
    assert job_env_lines(HEX, ["/a:/b", "/c:/d:ro"], "mpich") == [
        f"SHIFTER_IMAGE=id:{HEX}", "SHIFTER_IMAGETYPE=id", "SHIFTER_VOLUME=/a:/b;/c:/d:ro", "SHIFTER_MODULE=mpich"]
    assert job_env_lines(None, [], None) == []


def test_newline_in_an_option_cannot_inject_another_variable() -> None:
    with pytest.raises(UsageError):
        job_env_lines(HEX, ["/a:/b\nSHIFTER_IMAGE=id:evil"], None)


def test_prolog_reads_the_job_control_variables() -> None:
    job = job_from_env({"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "n1", "SLURM_JOB_USER": "alice",
                        "SLURM_JOB_UID": "2001", "SPANK_SHIFTER_IMAGE": f"id:{HEX}", "SPANK_SHIFTER_IMAGETYPE": "id",
                        "SHIFTER_VOLUME": "/ignored:/x"})
    assert (job.job_id, job.node, job.user, job.uid) == ("42", "n1", "alice", 2001)
    assert job.shifter_env == {"SHIFTER_IMAGE": f"id:{HEX}", "SHIFTER_IMAGETYPE": "id"}
    assert job_from_env({"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "n1"}).shifter_env is None
    with pytest.raises(UsageError):
        job_from_env({"SLURMD_NODENAME": "n1"})


@pytest.mark.parametrize(("job", "node", "expected"), [
    ("42", "n1", "/u.jobs/n1.42/udiMount"),
    ("42", "node-7.cluster", "/u.jobs/node-7.cluster.42/udiMount"),
    ("42", "../../etc", None),
    ("42", "a/b", None),
    ("42", ".hidden", None),
    ("42", "", None),
    ("4 2", "n1", None),
    ("", "n1", None),
    ("٤٢", "n1", None),  # Unicode digits
    ("42", "n\u00e9", None),
])
def test_job_container_path_is_the_same_for_full_and_fast_path(job: str, node: str, expected: str | None) -> None:
    env = {"SLURM_JOB_ID": job, "SLURMD_NODENAME": node}
    mounts = job_mounts("/u", env)
    assert (mounts[0] if mounts else None) == expected
    assert job_udi_mount("/u", env) == expected
    if mounts:
        assert mounts[1] == expected.replace("/udiMount", "/loopMount")  # type: ignore[union-attr]


def test_submit_arguments() -> None:
    assert _submit_args(["--pull", "--image=docker:x:1", "--volume=/a:/b", "--volume=/c:/d", "--module=none"]) == (
        "docker:x:1", ["/a:/b", "/c:/d"], "none", True)
    with pytest.raises(UsageError):
        _submit_args(["--image"])
