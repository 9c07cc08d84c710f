"""The access log: one JSON line per request with its metadata, and never a key, a prompt or a
completion, in that line or any other the gateway writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from gateway.config.keys import hash_key, new_key
from tests.procs import one_worker_models, start_fake, start_gateway

PROMPT_MARK = "prompt-secret-7f3a"
COMPLETION_MARK = "completion-secret-91bc"


def test_one_json_line_per_request_and_no_content_or_key_in_the_log(tmp_path: Path) -> None:
    key = new_key()
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: team-a, sha256: {hash_key(key)}}}\n")
    fake, fake_url = start_fake(tmp_path, "fake-a")
    env = {"GATEWAY_AUTH_ENABLED": "true", "GATEWAY_KEYS_FILE": str(keys)}
    gateway, url = start_gateway(tmp_path, one_worker_models(fake_url), env)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT_MARK}]
        script = {"fake": {"text": COMPLETION_MARK, "chunks": 2}}
        client.chat.completions.create(model="fake-a", messages=messages, extra_body=script)
        stream = client.chat.completions.create(
            model="fake-a",
            messages=messages,
            stream=True,
            extra_body=script,
        )
        assert COMPLETION_MARK in "".join(c.choices[0].delta.content or "" for c in stream)
        bad = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "fake-a", "messages": PROMPT_MARK},  # invalid: echoes nothing back
            headers={"authorization": f"Bearer {key}"},
        )
        assert bad.status_code == 400
        httpx.post(url + "/v1/chat/completions", headers={"authorization": "Bearer sk-wrong-1"})
        time.sleep(0.3)  # the log is written by a background thread
    finally:
        gateway.stop()
        fake.stop()
    text = gateway.output()
    for secret in (key, PROMPT_MARK, COMPLETION_MARK, "sk-wrong-1"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert [a["status"] for a in access] == [200, 200, 400, 401]
    unary, streamed = access[0], access[1]
    for line in (unary, streamed):
        assert line["key"] == "team-a"
        assert line["model"] == "fake-a"
        assert line["worker"] == "w0"
        assert line["endpoint"] == "/v1/chat/completions"
        assert line["duration_ms"] > 0
        assert len(line["request_id"]) == 32
    assert unary["prompt_tokens"] == 3
    assert unary["completion_tokens"] == 1
    assert streamed["completion_tokens"] == 2
    assert streamed["ttft_ms"] > 0
    assert "ttft_ms" not in unary
    assert access[3]["key"] is None  # no valid key: no name either
