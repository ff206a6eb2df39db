"""Runs the documented Python client (examples/python) against the live
stack, as a user of the example would, and checks what it promises: the
reply is printed as it streams, both turns are stored, errors exit 1 with
the gRPC code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from conftest import REPO_ROOT, bearer

EXAMPLE = REPO_ROOT / "examples" / "python" / "thoughtpartner_chat.py"
PROMPT = "Every team wants its own stack and we are 30 engineers. Should I allow it?"


def run_example(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("TP_TOKEN", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--gateway", os.environ["TP_GATEWAY_ADDR"], *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_example_streams_a_reply_that_is_stored(api, stubs, new_member, tmp_path):
    _tenant, _member, token = new_member()
    result = run_example(tmp_path, "--token", token, PROMPT)
    assert result.returncode == 0, result.stderr

    conversation = re.search(r"^conversation (\S+)$", result.stderr, re.M)
    stored = re.search(r"^stored: user (\S+), assistant (\S+)$", result.stderr, re.M)
    assert conversation and stored, result.stderr
    conversation_id = conversation.group(1)
    uuid.UUID(conversation_id)

    printed = result.stdout.strip()
    # The coach asks before it advises: the reply holds a question.
    assert "?" in printed, printed

    listed = stubs.conversations.ListMessages(
        api.conversation_pb2.ListMessagesRequest(conversation_id=conversation_id),
        metadata=bearer(token),
        timeout=30,
    ).messages
    assert [m.message_id for m in listed] == [stored.group(1), stored.group(2)]
    assert listed[0].content == PROMPT
    # What the example printed, delta by delta, is exactly the stored reply.
    assert listed[1].content.strip() == printed

    # --conversation continues the same transcript.
    again = run_example(tmp_path, "--token", token, "--conversation", conversation_id, "It is mostly the data teams.")
    assert again.returncode == 0, again.stderr
    listed = stubs.conversations.ListMessages(
        api.conversation_pb2.ListMessagesRequest(conversation_id=conversation_id),
        metadata=bearer(token),
        timeout=30,
    ).messages
    assert len(listed) == 4


def test_example_reports_errors_with_the_grpc_code(tmp_path):
    result = run_example(tmp_path, "--token", "not-a-token", PROMPT)
    assert result.returncode == 1
    assert "UNAUTHENTICATED" in result.stderr, result.stderr
    assert result.stdout == ""
