"""What a Slurm job asks of Shifter, read from the environments Slurm gives us (pure, no I/O).

* The allocator (``sbatch``/``salloc``/``srun``, through the SPANK shim) runs
  ``shifter-slurm submit --image=... --volume=... --module=...`` as the user; it prints
  :func:`job_env_lines`, which the shim exports to the job (``setenv``) and to the job control
  environment (``spank_job_control_setenv``: the prolog and epilog see ``SPANK_SHIFTER_IMAGE``...).
* The prolog and epilog run as root with ``SLURM_JOB_ID``, ``SLURM_JOB_USER``, ``SLURM_JOB_UID``,
  ``SLURMD_NODENAME`` and those ``SPANK_*`` variables (:func:`job_from_env`).

Every value here comes from the user who submitted the job: root uses them only to act *for* that
user, with that user's rights (``shifter-setup --user``; docs/runtime.md, "Threat model").
"""

from __future__ import annotations

from collections.abc import Mapping

from shifter._record import Record
from shifter.errors import UsageError

SHIFTER_VARS = ("SHIFTER_IMAGE", "SHIFTER_IMAGETYPE", "SHIFTER_VOLUME", "SHIFTER_MODULE")
CONTROL_PREFIX = "SPANK_"  # spank_job_control_setenv prefixes every name with it


class SlurmJob(Record):
    """One job on one node, as the prolog/epilog see it."""

    job_id: str
    node: str
    user: str = ""
    uid: int = -1
    shifter_env: dict[str, str] | None = None  # SHIFTER_* as the job's tasks have them; None: no image


def job_from_env(environ: Mapping[str, str]) -> SlurmJob:
    """The job of a prolog/epilog environment (``UsageError`` when Slurm's variables are missing)."""
    job_id, node = environ.get("SLURM_JOB_ID", ""), environ.get("SLURMD_NODENAME", "")
    if not (job_id.isascii() and job_id.isdigit()) or not node:
        raise UsageError("SLURM_JOB_ID and SLURMD_NODENAME are not set",
                         hint="shifter-slurm prolog/epilog are run by slurmd (Prolog=/Epilog= in slurm.conf)")
    uid_text = environ.get("SLURM_JOB_UID", "")
    uid = int(uid_text) if uid_text.isascii() and uid_text.isdigit() else -1
    wanted = {name: environ[CONTROL_PREFIX + name] for name in SHIFTER_VARS if environ.get(CONTROL_PREFIX + name)}
    shifter_env = wanted if wanted.get("SHIFTER_IMAGE") else None
    return SlurmJob(job_id=job_id, node=node, user=environ.get("SLURM_JOB_USER", ""), uid=uid,
                    shifter_env=shifter_env)


def job_env_lines(image_id: str | None, volumes: list[str], modules: str | None) -> list[str]:
    """``NAME=VALUE`` lines for the shim, NERSC Shifter's variables: the image pinned to its id
    (``SHIFTER_IMAGE=id:<hex>``, ``SHIFTER_IMAGETYPE=id``), the volumes ``;``-joined."""
    lines = []
    if image_id:
        lines += [f"SHIFTER_IMAGE=id:{image_id}", "SHIFTER_IMAGETYPE=id"]
    if volumes:
        lines.append("SHIFTER_VOLUME=" + ";".join(volumes))
    if modules:
        lines.append(f"SHIFTER_MODULE={modules}")
    if any("\n" in line or "\0" in line for line in lines):
        raise UsageError("a Shifter option holds a newline or NUL", hint="check --image, --volume and --module")
    return lines


__all__ = ["CONTROL_PREFIX", "SHIFTER_VARS", "SlurmJob", "job_env_lines", "job_from_env"]
