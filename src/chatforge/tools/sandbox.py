"""Run untrusted (model-written) Python in a separate, limited process.

Each run gets a fresh interpreter in isolated mode (``python -I``) with an empty environment, a
throwaway working directory, resource limits (wall time, CPU time, address space, file size,
processes), no network (its own network namespace where ``unshare`` allows it, and an audit hook
that refuses sockets in any case), and audit hooks that refuse process creation, native-code loading
and any write outside the working directory. Every violation comes back as a :class:`ToolError`
for the model to read; the calling process is never at risk.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from functools import cache

from .errors import ToolError

_BOOTSTRAP = r'''
import json, os, resource, sys
limits = json.loads(sys.argv[1])
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
        raise PermissionError(f"sandbox: {_BLOCKED_MODULES[args[0]]} is not allowed (module {args[0]})")
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
__name__ = "__main__"
_source = sys.stdin.read()
exec(compile(_source, "<tool>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run."""

    wall_time_s: float = 5.0
    cpu_time_s: int = 5
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    max_processes: int = 64
    max_output_chars: int = 4000


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    returncode: int
    timed_out: bool
    network_isolated: bool


@cache
def _network_namespace_prefix() -> tuple[str, ...]:
    """``unshare`` arguments that give the child an empty network namespace, or () where not permitted."""
    prefix = ("unshare", "--user", "--net", "--")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if probe.returncode == 0 else ()


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n…[output truncated]…\n" + text[-limit // 2:]


def execute(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run ``code`` in the sandbox; its stdout/stderr (truncated), exit status and whether it timed out."""
    prefix = _network_namespace_prefix()
    workdir = tempfile.mkdtemp(prefix="chatforge-sandbox-")
    command = [*prefix, sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(asdict(limits))]
    process = subprocess.Popen(command, cwd=workdir, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, text=True, errors="replace")
    timed_out = False
    try:
        stdout, stderr = process.communicate(code, timeout=limits.wall_time_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return SandboxResult(_truncate(stdout, limits.max_output_chars), _truncate(stderr, limits.max_output_chars),
                         process.returncode, timed_out, bool(prefix))


def _failure(result: SandboxResult, limits: SandboxLimits) -> str:
    if result.timed_out:
        return f"python: stopped after the {limits.wall_time_s:g} s wall-time limit"
    if result.returncode == -signal.SIGXCPU:
        return f"python: stopped after the {limits.cpu_time_s} s CPU-time limit"
    if result.returncode == -signal.SIGXFSZ:
        return f"python: a file grew past the {limits.file_size_bytes} byte limit"
    if result.returncode < 0:
        return f"python: killed by signal {signal.Signals(-result.returncode).name}"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return f"python: {lines[-1] if lines else f'exited with status {result.returncode}'}"


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> str:
    """The tool: run ``code`` sandboxed and return what it printed; a failure raises :class:`ToolError`
    whose message (the last traceback line, or the limit hit) is what the model sees."""
    if not code.strip():
        raise ToolError("python: no code to run")
    result = execute(code, limits)
    if result.timed_out or result.returncode != 0:
        printed = result.stdout.strip()
        raise ToolError(_failure(result, limits) + (f"\n(printed before that: {printed})" if printed else ""))
    return result.stdout.rstrip("\n") or "(no output; use print() to show a result)"


__all__ = ["SandboxLimits", "SandboxResult", "execute", "run_python"]
