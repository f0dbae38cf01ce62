"""The python tool's sandbox: what ordinary programs can do, and a red team of programs that try to get out.

Each escape is judged by side effects this test observes itself (files it owns, its own listeners, signals it
receives, canaries it holds), never by what the program says. The same programs run under the weak
``audit-hooks`` mode show that they are real escapes there.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid

import pytest

from chatforge.tools import SandboxLimits, ToolError, execute, run_python
from chatforge.tools.capped_output import TRUNCATION_MARK
from chatforge.tools.isolation import AUDIT_HOOKS, BUBBLEWRAP, SANDBOX_ENV, bubblewrap_problem
from chatforge.tools.sandbox import TEARDOWN_S

#: Switches the audit hooks off (they are reachable from the program), so that what follows meets the OS boundary.
UNHOOK = ("import gc\nfor _f in gc.get_objects():\n"
          "    if getattr(_f, '__name__', '') == '_guard': _f.__code__ = (lambda event, args: None).__code__\n")
#: Loads a blocked extension module under its own loader, where no import hook sees it.
LOAD_POSIXSUBPROCESS = """
import importlib.machinery, importlib.util, os, sys
_dir = next(d for d in sys.path if os.path.isdir(d) and any(f.startswith('_posixsubprocess') for f in os.listdir(d)))
_file = next(os.path.join(_dir, f) for f in os.listdir(_dir) if f.startswith('_posixsubprocess'))
_loader = importlib.machinery.ExtensionFileLoader('_posixsubprocess', _file)
_spec = importlib.util.spec_from_loader('_posixsubprocess', _loader)
sys.modules['_posixsubprocess'] = importlib.util.module_from_spec(_spec)
"""


@pytest.fixture(scope="module", autouse=True)
def bubblewrap():
    """The red team runs against the real boundary: where it cannot start, the suite says why (never skips)."""
    problem = bubblewrap_problem()
    assert problem is None, f"the python sandbox cannot start on this machine: {problem}"


@pytest.fixture
def target(tmp_path):
    """A host directory the sandbox must not touch: a victim file to overwrite and a secret to read."""
    folder = tmp_path / "host"
    folder.mkdir()
    (folder / "victim.txt").write_text("original")
    (folder / "secret.txt").write_text(f"secret-{uuid.uuid4().hex}")
    return folder


def _untouched(folder) -> bool:
    return sorted(p.name for p in folder.iterdir()) == ["secret.txt", "victim.txt"] and \
        (folder / "victim.txt").read_text() == "original"


def test_ordinary_code_runs_in_a_clean_throwaway_directory():
    assert run_python("import math\nprint(math.factorial(20))") == "2432902008176640000"
    assert run_python("open('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read())") == "kept"
    assert run_python("import numpy as np\nprint(np.linalg.solve([[2, 0], [0, 4]], [2, 8]))") == "[1. 2.]"
    env = run_python("import os, json\nprint(json.dumps(dict(os.environ)))")
    assert "HOME" not in env and "VIRTUAL_ENV" not in env
    assert run_python("import os\nprint(os.listdir('.'))") == "[]"  # the file of the run before is gone
    assert execute("print(1)").isolation == BUBBLEWRAP


WRITES = {
    "plain open": "open('{t}/escaped', 'w').write('x')",
    "dir_fd": "import os\nos.close(os.open('escaped', os.O_CREAT | os.O_WRONLY, dir_fd=os.open('{t}', 0)))",
    "opener": "import os\nopen('escaped', 'w', opener=lambda p, f: os.open(p, f, dir_fd=os.open('{t}', os.O_RDONLY)))",
    "hard link": "import os\nos.link('{t}/victim.txt', 'v')\nopen('v', 'r+').write('pwned!!!')",
    "rename in": "import os\nopen('f', 'w').write('x')\nos.rename('f', 'escaped', dst_dir_fd=os.open('{t}', 0))",
    "delete": "import os\nos.unlink('victim.txt', dir_fd=os.open('{t}', os.O_RDONLY))",
    "mknod": "import os\nos.mknod('{t}/escaped')",
    "mkfifo": "import os\nos.mkfifo('escaped', dir_fd=os.open('{t}', os.O_RDONLY))",
    "sqlite in C": "import sqlite3\nsqlite3.connect('{t}/escaped').execute('create table t (x)')",
    "patched realpath": "import os\nos.path.realpath = lambda p, here=os.getcwd(): here\n"
                        "open('{t}/escaped', 'w').write('x')",
    "patched isinstance": "import builtins\nbuiltins.isinstance = lambda *a: True\n"
                          "open('{t}/escaped', 'w').write('x')",
    "hooks off": UNHOOK + "open('{t}/escaped', 'w').write('x')",
    "hook globals": "import __main__\n__main__._inside = lambda path: True\nopen('{t}/escaped', 'w').write('x')",
    "subinterpreter": "import _xxsubinterpreters as interpreters\n"
                      "interpreters.run_string(interpreters.create(), \"open('{t}/escaped', 'w').write('x')\")",
    "shell": UNHOOK + "import subprocess\nsubprocess.run(['sh', '-c', 'echo x > {t}/escaped; rm {t}/victim.txt'])",
    "fork_exec": LOAD_POSIXSUBPROCESS + UNHOOK + "import subprocess\nsubprocess.run(['touch', '{t}/escaped'])",
    "libc": UNHOOK + "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.system(b'touch {t}/escaped')\n"
            "libc.syscall(57)\nlibc.unlink(b'{t}/victim.txt')",  # 57: fork on x86-64
}


@pytest.mark.parametrize("name", WRITES)
def test_no_program_changes_a_host_file(name, target):
    execute(WRITES[name].format(t=target))
    assert _untouched(target)


@pytest.mark.filterwarnings("ignore:CHATFORGE_PYTHON_SANDBOX=audit-hooks")
def test_the_weak_mode_lets_the_red_team_out(target, listeners, monkeypatch):
    """The programs here are real escapes: with only audit hooks in the way, they write and read host files,
    reach the host's Unix sockets and leave processes behind."""
    monkeypatch.setenv(SANDBOX_ENV, AUDIT_HOOKS)
    with pytest.warns(UserWarning, match="without an OS boundary"):
        execute(WRITES["dir_fd"].format(t=target))
    assert (target / "escaped").exists()
    (target / "escaped").unlink()
    for name in ("hooks off", "subinterpreter", "patched realpath"):
        execute(WRITES[name].format(t=target))
        assert (target / "escaped").exists(), name
        (target / "escaped").unlink()
    secret = (target / "secret.txt").read_text()
    assert secret in execute(f"print(open('{target}/secret.txt').read())").stdout
    addresses, connected = listeners
    execute(UNHOOK + f"import socket\nsocket.socket(socket.AF_UNIX).connect({addresses['unix']!r})")
    time.sleep(0.3)
    assert connected["unix"]
    marker = f"marker-{uuid.uuid4().hex}"
    elapsed, timed_out, seen = _run_watched(_spawner(marker, 2), marker, SandboxLimits(wall_time_s=2))
    for pid in seen:  # a grandchild in a session of its own outlives the weak mode's run
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    assert seen and timed_out and elapsed < 2 + TEARDOWN_S  # the caller still returns on time


def test_host_files_are_out_of_sight(target):
    secret = (target / "secret.txt").read_text()
    project_file = os.path.abspath(__file__)
    result = execute(UNHOOK + "import os\n"
                     f"for path in ['{target}/secret.txt', '{project_file}', '/etc/shadow', '/etc/passwd']:\n"
                     "    try: print(open(path).read())\n    except OSError as e: print(e)\n"
                     "print(sorted(os.listdir('/')))")
    assert secret not in result.stdout and "test_host_files_are_out_of_sight" not in result.stdout
    assert "root:" not in result.stdout
    assert "'etc'" not in result.stdout and "'home'" not in result.stdout


@pytest.fixture
def listeners(tmp_path):
    """A TCP listener on 127.0.0.1, a Unix socket file and an abstract Unix socket, with what connected to each."""
    tcp = socket.create_server(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "host.sock"))
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0chatforge-test-{uuid.uuid4().hex}")
    servers = {"tcp": tcp, "unix": unix, "abstract": abstract}
    connected = {name: [] for name in servers}
    stop = threading.Event()

    def accept(name, server):
        server.listen()
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                connected[name].append(server.accept())
            except TimeoutError:
                continue

    threads = [threading.Thread(target=accept, args=item, daemon=True) for item in servers.items()]
    for thread in threads:
        thread.start()
    addresses = {"tcp": tcp.getsockname(), "unix": str(tmp_path / "host.sock"), "abstract": abstract.getsockname()}
    yield addresses, connected
    stop.set()
    for thread in threads:
        thread.join()
    for server in servers.values():
        server.close()


def test_no_program_reaches_the_host_network_or_its_sockets(listeners):
    addresses, connected = listeners
    attempts = UNHOOK + "import socket\n" + "".join(
        f"try:\n    socket.socket({family}).connect({address!r})\nexcept OSError as e:\n    print(e)\n"
        for family, address in (("socket.AF_INET", addresses["tcp"]), ("socket.AF_UNIX", addresses["unix"]),
                                ("socket.AF_UNIX", addresses["abstract"])))
    execute(attempts)
    time.sleep(0.3)
    assert connected == {"tcp": [], "unix": [], "abstract": []}
    with pytest.raises(ToolError, match="network access is not allowed"):  # the audit hook's message stays
        run_python(f"import socket\nsocket.create_connection({addresses['tcp']!r}, timeout=2)")


def test_no_program_changes_a_kernel_setting():
    """As root, the sandbox is uid 0 to the kernel: a writable /proc/sys would let it set the host's sysctls
    (``kernel.core_pattern`` runs a program as root on the host). Judged by the host's own value of a harmless
    one, put back if the test fails."""
    setting = "/proc/sys/kernel/core_uses_pid"
    before = open(setting).read()
    flipped = "0" if before.strip() == "1" else "1"
    program = UNHOOK + f"""
import os
for attempt in (lambda: open({setting!r}, 'w').write({flipped!r}), lambda: os.mkdir('proc'),
                lambda: __import__('ctypes').CDLL(None).mount(b'proc', b'proc', b'proc', 0, None)):
    try:
        attempt()
    except Exception as e:
        print(e)
if os.path.isdir('proc'):
    try:
        open('proc/sys/kernel/core_uses_pid', 'w').write({flipped!r})
    except OSError as e:
        print(e)
"""
    try:
        execute(program)
        assert open(setting).read() == before
    finally:
        if open(setting).read() != before:
            with open(setting, "w") as restore:
                restore.write(before)


def test_no_program_reads_or_signals_its_caller(monkeypatch):
    """The caller's environment and memory hold a canary; the caller counts the signals it receives."""
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("CHATFORGE_TEST_CANARY", canary)
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: received.append(1))
    try:
        me = os.getpid()
        result = execute(UNHOOK + f"""
import os, re, signal
print(dict(os.environ))
for attempt in (lambda: open('/proc/{me}/environ', 'rb').read(), lambda: os.kill({me}, signal.SIGUSR1),
                lambda: signal.pidfd_send_signal(os.pidfd_open({me}), signal.SIGUSR1)):
    try: print(attempt())
    except OSError as e: print(e)
try:
    with open('/proc/{me}/maps') as maps, open('/proc/{me}/mem', 'r+b') as memory:
        for start, end in (map(lambda a: int(a, 16), m.split()[0].split('-')) for m in maps if ' rw' in m):
            memory.seek(start)
            print(memory.read(end - start).count(b'{canary}'))
except (OSError, ValueError) as e:
    print(e)
""", SandboxLimits(wall_time_s=30, cpu_time_s=30))
        time.sleep(0.3)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert canary not in result.stdout and canary not in result.stderr
    assert received == []


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                found.append(pid)
        except OSError:
            continue
    return found


def _spawner(marker: str, wall_time_s: float) -> str:
    """A program that tries every way to start a process that carries ``marker``, then outstays its time."""
    spawn = f"['sh', '-c', 'sleep 1000; : {marker}']"
    return UNHOOK + LOAD_POSIXSUBPROCESS + f"""
import os, subprocess, time
for attempt in (lambda: subprocess.Popen({spawn}, start_new_session=True),
                lambda: os.posix_spawn('/bin/sh', {spawn}, {{}}),
                lambda: os.fork() == 0 and os.execv('/bin/sh', {spawn})):
    try:
        attempt()
    except OSError as e:
        print(e)
time.sleep({wall_time_s * 10})
"""


def _run_watched(program: str, marker: str, limits: SandboxLimits) -> tuple[float, bool, set[str]]:
    """Run ``program``, looking for processes that carry ``marker`` while it runs: its duration, whether it timed
    out, and the processes seen (the caller kills them)."""
    seen, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(_processes_with(marker))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        result = execute(program, limits)
    finally:
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        done.set()
        watcher.join()
    return elapsed, result.timed_out, seen


def test_no_program_starts_a_process_and_the_caller_returns_on_time():
    marker = f"marker-{uuid.uuid4().hex}"
    elapsed, timed_out, seen = _run_watched(_spawner(marker, 2), marker, SandboxLimits(wall_time_s=2))
    assert timed_out and elapsed < 2 + TEARDOWN_S
    assert seen == set()


def test_a_flood_of_output_is_capped_as_it_is_read():
    tracemalloc.start()
    try:
        result = execute("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n"
                         "print('end')", SandboxLimits(wall_time_s=30, max_output_bytes=4000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert TRUNCATION_MARK in result.stdout and result.stdout.endswith("end\n") and len(result.stdout) < 4100
    assert peak < 4 << 20, f"the caller held {peak / 2**20:.1f} MiB of a 100 MiB flood"


@pytest.mark.parametrize("code, message", [
    ("block = bytearray(10 * 1024**3)", "MemoryError"),
    ("open('big', 'wb').write(b'x' * (64 << 20))", "File too large"),
    ("for i in range(20):\n    open(f'part{i}', 'wb').write(b'x' * (8 << 20))", "No space left on device"),
    ("import os\nwhile True:\n    os.fork()", "creating processes is not allowed"),
    ("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])", "creating processes is not allowed"),
    ("import ctypes\nctypes.CDLL(None)", "loading native code is not allowed"),
    ("open('/tmp/chatforge-escape.txt', 'w').write('x')", "writing outside the working directory"),
])
def test_each_limit_and_refusal_comes_back_as_a_tool_error(code, message):
    with pytest.raises(ToolError, match=message):
        run_python(code)


def test_infinite_loops_stop_at_the_wall_time_and_cpu_limits():
    started = time.monotonic()
    with pytest.raises(ToolError, match="1 s wall-time limit"):
        run_python("import time\ntime.sleep(60)", SandboxLimits(wall_time_s=1))
    assert time.monotonic() - started < 1 + TEARDOWN_S
    with pytest.raises(ToolError, match="1 s CPU-time limit"):
        run_python("while True:\n    pass", SandboxLimits(wall_time_s=20, cpu_time_s=1))


def test_the_tool_refuses_where_the_boundary_cannot_be_set_up(tmp_path):
    """In a user namespace that may create no more of them, bubblewrap cannot start: the tool says why and how
    to enable it, and runs nothing."""
    marker = tmp_path / "ran"
    program = UNHOOK + f"open({str(marker)!r}, 'w')"
    script = ("from chatforge.tools import run_python, ToolError\n"
              f"try:\n    run_python({program!r})\nexcept ToolError as e:\n    print(e)\n")
    run = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                          f"echo 0 > /proc/sys/user/max_user_namespaces && exec {sys.executable} -c \"$0\"", script],
                         capture_output=True, text=True, timeout=60)
    assert run.stdout.startswith("python: the sandbox is unavailable: bubblewrap cannot start here"), run.stderr
    assert f"{SANDBOX_ENV}={AUDIT_HOOKS}" in run.stdout and len(run.stdout.strip().splitlines()) == 1
    assert not marker.exists()


def test_an_unknown_sandbox_setting_is_refused(monkeypatch):
    monkeypatch.setenv(SANDBOX_ENV, "none")
    with pytest.raises(ToolError, match="CHATFORGE_PYTHON_SANDBOX='none' is not a sandbox"):
        run_python("print(1)")
