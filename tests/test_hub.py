import http.server
import json
import shutil
import socket
import threading

import pytest

from chatforge.hub.export import ExportError, export_model, push


def test_export_refuses_a_folder_that_is_not_a_saved_model(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ExportError, match="half: not a saved model folder \\(missing model.safetensors"):
        export_model(tmp_path / "half", tmp_path / "out", "chat")
    with pytest.raises(ExportError, match="kind 'assistant'"):
        export_model(tmp_path / "half", tmp_path / "out", "assistant")
    assert not (tmp_path / "out").exists()


def test_chat_export_stops_at_the_end_of_turn_and_has_a_card(saved_model_dir, tokenizer, tmp_path):
    (saved_model_dir / "metrics.jsonl").write_text("{}\n")
    (saved_model_dir / "checkpoint-5").mkdir()
    folder = export_model(saved_model_dir, tmp_path / "export", "chat", repo_id="me/tiny-chat")
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"][0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert not (folder / "metrics.jsonl").exists() and not (folder / "checkpoint-5").exists()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "conversational" in card
    assert 'from_pretrained("me/tiny-chat", trust_remote_code=True)' in card


@pytest.fixture
def exported(saved_model_dir, tmp_path):
    return export_model(saved_model_dir, tmp_path / "export", "base")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_push_without_a_reachable_hub_fails_clearly_and_changes_nothing(exported):
    before = {path.name: path.read_bytes() for path in exported.iterdir()}
    with pytest.raises(ExportError, match="(?s)could not push .* to me/tiny: .*nothing was uploaded or changed"):
        push(exported, "me/tiny", token="hf_test", endpoint=f"http://127.0.0.1:{_free_port()}")
    assert {path.name: path.read_bytes() for path in exported.iterdir()} == before


class _Unauthorized(http.server.BaseHTTPRequestHandler):
    def _refuse(self):
        body = b'{"error": "Invalid credentials in Authorization header"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _refuse

    def log_message(self, *args):
        pass


def test_push_with_a_rejected_token_names_the_token(exported):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unauthorized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ExportError, match="(?s)401 Unauthorized.*Invalid credentials.*your token"):
            push(exported, "me/tiny", token="hf_wrong", endpoint=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()


def test_push_refuses_a_folder_without_a_model_card(exported, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(exported, bare)
    (bare / "README.md").unlink()
    with pytest.raises(ExportError, match="no README.md model card"):
        push(bare, "me/tiny", token="hf_test", endpoint="http://127.0.0.1:9")


def test_push_command_exits_with_the_message(exported, capsys):
    from chatforge.cli import main

    with pytest.raises(SystemExit, match="chatforge push: error: could not push"):
        main(["push", str(exported), "--repo-id", "me/tiny"])
