import pytest

from chatforge.tools import (
    SearchIndex,
    Toolbox,
    ToolError,
    calculate,
    default_toolbox,
    format_tool_call,
    parse_tool_call,
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
