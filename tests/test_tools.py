import socket
import threading
import time

import pytest

from chatforge.tools import (
    SandboxLimits,
    SearchIndex,
    Toolbox,
    ToolError,
    calculate,
    default_toolbox,
    execute,
    format_tool_call,
    parse_tool_call,
    run_python,
    search_tool,
)


@pytest.mark.parametrize("expression, value", [
    ("23 * 47", "1081"), ("1/4 + 3", "3.25"), ("2**100", "1267650600228229401496703205376"),
    ("-7 // 2", "-4"), ("1,234 * 2", "2468"), ("3 / 1024", "0.0029296875"), ("0.1 + 0.2", "0.3"),
    ("1/3", "0.333333333333"), ("(12 + 8) × 3 ÷ 4", "15"),
])
def test_calculator_is_exact(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression, reason", [
    ("__import__('os').system('ls')", "unsupported expression"), ("1/0", "division by zero"),
    ("9**9**9", "exponent"), ("2**0.5", "whole-number exponents"), ("", "empty"), ("3 +", "cannot parse"),
])
def test_calculator_refuses_what_is_not_arithmetic(expression, reason):
    with pytest.raises(ToolError, match=reason):
        calculate(expression)


def test_sandbox_runs_ordinary_code_in_a_clean_throwaway_directory():
    assert run_python("import math\nprint(math.factorial(20))") == "2432902008176640000"
    assert run_python("open('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read())") == "kept"
    env = run_python("import os, json\nprint(json.dumps(dict(os.environ)))")
    assert "HOME" not in env and "VIRTUAL_ENV" not in env
    assert run_python("import os\nprint(os.listdir('.'))") == "[]"  # the file of the run before is gone


@pytest.fixture
def local_server():
    """A real TCP server on 127.0.0.1 that records whether anyone connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    connected = []

    def accept():
        deadline = time.time() + 10
        while time.time() < deadline and not connected:
            try:
                connected.append(server.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connected
    thread.join()
    server.close()


def test_sandbox_blocks_network_connections(local_server):
    port, connected = local_server
    with pytest.raises(ToolError, match="network access is not allowed"):
        run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
    assert not connected


def test_sandbox_runs_in_an_empty_network_namespace_where_the_system_allows():
    result = execute("import socket\nprint([name for _, name in socket.if_nameindex()])")
    if not result.network_isolated:
        pytest.skip("unshare --user --net is not permitted here (the audit hook still refuses sockets)")
    assert result.stdout.strip() == "['lo']"


@pytest.mark.parametrize("code, message", [
    ("import os\nwhile True:\n    os.fork()", "creating processes is not allowed"),
    ("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])", "creating processes is not allowed"),
    ("import ctypes\nctypes.CDLL(None)", "loading native code is not allowed"),
    ("open('/tmp/chatforge-escape.txt', 'w').write('x')", "writing outside the working directory"),
    ("import os\nos.remove('/etc/hostname')", "outside the working directory"),
    ("block = bytearray(10 * 1024**3)", "MemoryError"),
    ("open('big', 'wb').write(b'x' * (64 << 20))", "File too large"),
])
def test_sandbox_turns_each_escape_into_a_tool_error(code, message):
    with pytest.raises(ToolError, match=message):
        run_python(code)


def test_sandbox_stops_infinite_loops_at_the_wall_time_and_cpu_limits():
    started = time.time()
    with pytest.raises(ToolError, match="1 s wall-time limit"):
        run_python("import time\ntime.sleep(60)", SandboxLimits(wall_time_s=1))
    assert time.time() - started < 5
    with pytest.raises(ToolError, match="1 s CPU-time limit"):
        run_python("while True:\n    pass", SandboxLimits(wall_time_s=20, cpu_time_s=1))


def test_toolbox_returns_errors_to_the_model_instead_of_raising():
    toolbox = default_toolbox()
    assert toolbox.run("calculator", "6 * 7") == "42"
    assert toolbox.run("calculator", "1/0") == "error: calculator: division by zero"
    assert toolbox.run("python", "raise ValueError('bad input')") == "error: python: ValueError: bad input"
    assert toolbox.run("browser", "x").startswith("error: unknown tool 'browser'")


def test_tool_calls_round_trip_through_the_token_protocol():
    text = "Let me check. " + format_tool_call("python", "print(1)\nprint(2)")
    assert parse_tool_call(text) == ("python", "print(1)\nprint(2)")


def test_search_finds_the_passage_about_the_query(documents, tmp_path):
    index = SearchIndex.build(documents)
    index.save(tmp_path / "index")
    index = SearchIndex.load(tmp_path / "index")
    target = next(d for d in documents if "Yellowstone" in d)
    assert index.search("Yellowstone National Park forestry", k=3)[0][1] == target
    search = Toolbox({"search": search_tool(index, max_chars=80)})
    assert "…" in search.run("search", "Yellowstone forestry") and len(search.run("search", "Yellowstone")) < 90
    assert search.run("search", "zzzqqq").startswith("error: search: nothing found")
    with pytest.raises(FileNotFoundError, match="not a search index"):
        SearchIndex.load(tmp_path)


def test_tools_index_command_builds_a_loadable_index(tmp_path):
    import subprocess
    import sys

    from chatforge.data import EMBEDDED_WIKIPEDIA

    subprocess.run([sys.executable, "-m", "chatforge.cli", "tools", "index", "--input", str(EMBEDDED_WIKIPEDIA),
                    "--output", str(tmp_path / "index")], check=True, capture_output=True)
    assert len(SearchIndex.load(tmp_path / "index").documents) == 1000
