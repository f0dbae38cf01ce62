"""Run untrusted (model-written) Python in a separate, limited process behind an OS boundary.

Each run gets a fresh interpreter in isolated mode (``python -I -S``) inside the boundary of
:mod:`~chatforge.tools.isolation` (bubblewrap namespaces and seccomp unless a weaker mode is opted in to),
with an empty environment, a throwaway working directory, resource limits (wall time for the whole process
tree, CPU time, address space, file size, disk, processes) and, as a second layer, audit hooks that refuse
process creation, native-code loading, sockets and writes outside the working directory with a message the
model can read. Output is read as it comes and never held beyond a cap. Every failure comes back as a
:class:`ToolError`; where the boundary cannot be set up, the tool refuses instead of running the code.
"""

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass

from .capped_output import collect
from .errors import ToolError
from .isolation import BUBBLEWRAP, ENVIRONMENT, SandboxUnavailable, configured_isolation, launch

_BOOTSTRAP = r'''
import json, os, resource, sys
limits = json.loads(sys.argv[1])
with open(int(sys.argv[2]), encoding="utf-8") as _program:
    _source = _program.read()
sys.path[1:1] = limits["package_dirs"]
workdir = os.path.realpath(os.getcwd())
resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_time_s"], limits["cpu_time_s"] + 1))
for name, value in (("RLIMIT_AS", limits["memory_bytes"]), ("RLIMIT_FSIZE", limits["file_size_bytes"]),
                    ("RLIMIT_NPROC", limits["max_processes"]), ("RLIMIT_CORE", 0)):
    resource.setrlimit(getattr(resource, name), (value, value))

_BLOCKED = {"socket.__new__": "network access", "socket.connect": "network access", "socket.bind": "network access",
            "socket.getaddrinfo": "network access", "os.fork": "creating processes",
            "os.forkpty": "creating processes", "os.system": "creating processes", "os.exec": "creating processes",
            "os.posix_spawn": "creating processes", "os.spawn": "creating processes",
            "subprocess.Popen": "creating processes", "os.kill": "signalling processes",
            "ctypes.dlopen": "loading native code", "ctypes.dlsym": "loading native code"}
_BLOCKED_MODULES = {"_posixsubprocess": "creating processes", "_ctypes": "loading native code"}
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
                "os.link", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _inside(path):
    if isinstance(path, int):
        return True
    path = os.path.realpath(os.fsdecode(path))
    return path == workdir or path.startswith(workdir + os.sep)

def _guard(event, args):
    if event in _BLOCKED:
        raise PermissionError(f"sandbox: {_BLOCKED[event]} is not allowed")
    if event == "import" and args[0] in _BLOCKED_MODULES:
        raise ImportError(f"sandbox: {_BLOCKED_MODULES[args[0]]} is not allowed (module {args[0]})")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
        if path is not None and writing and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path}")
    elif event in _PATH_EVENTS:
        for path in args[:2]:
            if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path):
                raise PermissionError(f"sandbox: changing files outside the working directory is not allowed: {path}")

sys.addaudithook(_guard)
del json, resource, limits
exec(compile(_source, "<tool>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run (``max_output_bytes`` applies to stdout and stderr each)."""

    wall_time_s: float = 5.0
    cpu_time_s: int = 5
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    disk_bytes: int = 64 << 20
    max_processes: int = 64
    max_output_bytes: int = 4000


@dataclass
class SandboxResult:
    """What a run printed (each stream capped), its exit status (negative: the signal that ended it; ``None``
    where it could not be reaped), whether it hit the wall-time limit, and the boundary it ran in."""

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    isolation: str


#: How long past its wall-time limit a run may take to be torn down.
TEARDOWN_S = 2.0


def execute(code: str, limits: SandboxLimits = SandboxLimits(), isolation: str | None = None) -> SandboxResult:
    """Run ``code`` in the sandbox (``isolation``: see :mod:`~chatforge.tools.isolation`; the configured one by
    default); its stdout/stderr (capped), exit status and whether it ran out of wall time. Returns within the
    wall-time limit plus TEARDOWN_S whatever the code does; raises :class:`SandboxUnavailable` where the boundary
    cannot be set up."""
    isolation = isolation or configured_isolation()
    program = os.memfd_create("chatforge-program")
    try:
        os.write(program, code.encode("utf-8", errors="replace"))
        os.lseek(program, 0, os.SEEK_SET)
        with launch(isolation, limits.disk_bytes, (program,)) as plan:
            settings = json.dumps({**asdict(limits), "package_dirs": list(plan.package_dirs)})
            command = [*plan.command, "-I", "-S", "-c", _BOOTSTRAP, settings, str(program)]
            deadline = time.monotonic() + limits.wall_time_s
            process = subprocess.Popen(command, cwd=plan.cwd, env=ENVIRONMENT, pass_fds=plan.pass_fds,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       start_new_session=True)
            try:
                stdout, stderr, timed_out = collect(process, limits.max_output_bytes, deadline)
            finally:
                _end(process)
    finally:
        os.close(program)
    returncode = process.returncode
    if isolation == BUBBLEWRAP and returncode is not None and returncode > 128:  # bwrap reports a signal as 128 + n
        returncode = 128 - returncode
    return SandboxResult(stdout, stderr, returncode, timed_out, isolation)


def _end(process: subprocess.Popen) -> None:
    """Kill what is left of the run (bubblewrap's pid namespace ends every descendant with it) and close its pipes."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            process.wait(TEARDOWN_S)
        except subprocess.TimeoutExpired:
            pass
    process.stdout.close()
    process.stderr.close()


def _failure(result: SandboxResult, limits: SandboxLimits) -> str:
    if result.timed_out:
        return f"python: stopped after the {limits.wall_time_s:g} s wall-time limit"
    if result.returncode == -signal.SIGXCPU:
        return f"python: stopped after the {limits.cpu_time_s} s CPU-time limit"
    if result.returncode == -signal.SIGXFSZ:
        return f"python: a file grew past the {limits.file_size_bytes} byte limit"
    if result.returncode is not None and result.returncode < 0:
        return f"python: killed by signal {signal.Signals(-result.returncode).name}"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return f"python: {lines[-1] if lines else f'exited with status {result.returncode}'}"


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), isolation: str | None = None) -> str:
    """The tool: run ``code`` sandboxed (``isolation`` as in :func:`execute`) and return what it printed; a
    failure raises :class:`ToolError` whose message (the last traceback line, the limit hit, or why the sandbox
    cannot start) is what the model sees."""
    if not code.strip():
        raise ToolError("python: no code to run")
    try:
        result = execute(code, limits, isolation)
    except SandboxUnavailable as error:
        raise ToolError(f"python: the sandbox is unavailable: {error}") from None
    if result.timed_out or result.returncode != 0:
        printed = result.stdout.strip()
        raise ToolError(_failure(result, limits) + (f"\n(printed before that: {printed})" if printed else ""))
    return result.stdout.rstrip("\n") or "(no output; use print() to show a result)"


__all__ = ["SandboxLimits", "SandboxResult", "SandboxUnavailable", "execute", "run_python"]
