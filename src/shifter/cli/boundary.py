"""The command boundary: whatever a command raises, the user sees one line and an exit code.

Every console entry point (``shifter``, ``shifterimg``, ``shifter-gateway``, ``shifter-setup``,
``shifter-teardown``) runs its command through :func:`guard`:

* a :class:`~shifter.errors.ShifterError` is ``prog: error: <message> (hint: ...)`` and its
  documented exit code (docs/cli.md);
* Ctrl-C is ``prog: interrupted`` and 130; a closed stdout (``| head -1``) is a quiet 1;
* anything else is a bug: one line naming the exception and the file its full trace was written
  to (``$TMPDIR/<prog>-trace-*.txt``, mode 0600), exit 70 (``EX_SOFTWARE``); with ``-v`` the trace
  is shown on stderr instead.  No traceback reaches stderr otherwise.

It is on the ``shifter`` launch path: the standard library only, imported when needed.
"""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn

EXIT_INTERNAL = 70  # EX_SOFTWARE: an exception no command expected (a bug)
EXIT_INTERRUPTED = 130


def wants_verbose(argv: "Sequence[str]") -> bool:
    """``-v``/``--verbose`` (or ``-v`` in a cluster of short flags) among the leading options."""
    for arg in argv:
        if arg == "--" or not arg.startswith("-") or arg == "-":
            return False
        if arg == "--verbose" or (not arg.startswith("--") and "v" in _flags(arg)):
            return True
    return False


def _flags(cluster: str) -> str:
    """The flag letters of ``-abc``: up to the first letter that takes a value (``-iubuntu``)."""
    letters = cluster[1:]
    for index, letter in enumerate(letters):
        if letter in _VALUE_LETTERS:
            return letters[:index]
    return letters


_VALUE_LETTERS = "iVwemugs"  # short options of shifter and shifterimg that take a value


def _say(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # stderr closed: nothing left to tell anyone


def _save_trace(prog: str, text: str) -> str:
    """Write ``text`` to a new private file; its path, or a note why it could not be written."""
    import os  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    try:
        fd, path = tempfile.mkstemp(prefix=f"{prog}-trace-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as err:
        return f"(could not be saved: {err.strerror or err})"
    return path


def report_unexpected(prog: str, err: BaseException, verbose: bool) -> int:
    """One line for an exception no command expected; the trace goes to a file (or, ``-v``, stderr)."""
    import traceback  # noqa: PLC0415

    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    what = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    if verbose:
        _say(trace)
        where = "shown above"
    else:
        where = f"in {_save_trace(prog, trace)}"
    _say(f"{prog}: error: unexpected {what} (hint: this is a bug in Shifter; its full trace is {where}; "
         "please report it)\n")
    return EXIT_INTERNAL


def report(prog: str, err: BaseException, verbose: bool = False) -> int:
    """The message and exit code for ``err``, raised out of command ``prog``."""
    from shifter.errors import ShifterError  # noqa: PLC0415

    if isinstance(err, ShifterError):
        _say(f"{prog}: error: {' '.join(err.render().splitlines())}\n")
        return err.exit_code
    if isinstance(err, KeyboardInterrupt):
        _say(f"{prog}: interrupted\n")
        return EXIT_INTERRUPTED
    if isinstance(err, BrokenPipeError):
        return 1
    return report_unexpected(prog, err, verbose)


def guard(prog: str, func: "Callable[[], int | None]", verbose: bool = False) -> int:
    """Run ``func`` (a whole command) and return its exit code; never raises but ``SystemExit``."""
    try:
        code = func()
        sys.stdout.flush()
    except SystemExit:
        raise
    except BaseException as err:
        code = report(prog, err, verbose)
    return code or 0


def usage_error(prog: str, message: str, command: str = "") -> int:
    """A bad command line (as click words it): one line, exit 2."""
    _say(f"{prog}: error: {' '.join(message.split())} (hint: see '{command or prog} --help')\n")
    return 2


def print_version(prog: str) -> int:
    """``prog --version``: the installed package's version, as click prints it for ``shifterimg``."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        number = version("shifter")
    except PackageNotFoundError:
        number = "unknown"
    sys.stdout.write(f"{prog}, version {number}\n")
    return 0


def exit_quietly(code: int) -> "NoReturn":
    """``sys.exit`` that does not let a failing flush of stdout print a trace at shutdown."""
    import os  # noqa: PLC0415

    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        # stdout is gone (a closed pipe): point it at /dev/null so the interpreter's own
        # flush at exit has nothing to complain about.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        code = code or 1
    sys.exit(code)


__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "exit_quietly", "guard", "print_version", "report", "usage_error",
           "wants_verbose"]
