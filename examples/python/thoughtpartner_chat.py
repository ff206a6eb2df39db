#!/usr/bin/env python3
"""A small Python client for Thoughtpartner's public gRPC API.

It starts a conversation (or continues one), sends one message and prints the
coach's reply as it streams in, then the ids of the stored turns.

    pip install -r examples/python/requirements.txt
    python examples/python/thoughtpartner_chat.py \\
        --gateway 127.0.0.1:50051 --token "$(tp dev token --tenant … --user … --role member)" \\
        "We are 30 engineers and every team wants its own stack."

Stubs are generated from the repo's proto/ directory into a cache directory
the first time it runs (grpcio-tools), so the client always matches the API
as declared. The token may also come from TP_TOKEN, the gateway from
TP_GATEWAY_ADDR.

Exit status: 0 when the reply completed and was stored; 1 with the gRPC
code and the server's message otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import sys
import uuid
from pathlib import Path

import grpc
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
CONVERSATION_PROTO = "thoughtpartner/v1/conversation.proto"


def load_stubs(proto_root: Path = PROTO_ROOT):
    """Generates (once per proto version) and imports the conversation stubs.

    Returns the (conversation_pb2, conversation_pb2_grpc) modules."""
    source = (proto_root / CONVERSATION_PROTO).read_bytes()
    version = hashlib.sha256(source).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    out = cache / "thoughtpartner" / "python-stubs" / version
    if not (out / "thoughtpartner" / "v1" / "conversation_pb2_grpc.py").exists():
        out.mkdir(parents=True, exist_ok=True)
        well_known = Path(protoc.__file__).parent / "_proto"
        status = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            CONVERSATION_PROTO,
        ])
        if status != 0:
            raise RuntimeError(f"protoc could not compile {CONVERSATION_PROTO} (exit {status})")
        for package in (out / "thoughtpartner", out / "thoughtpartner" / "v1"):
            (package / "__init__.py").touch()
    sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    return (
        importlib.import_module("thoughtpartner.v1.conversation_pb2"),
        importlib.import_module("thoughtpartner.v1.conversation_pb2_grpc"),
    )


class ThoughtpartnerClient:
    """A conversation with the thought partner, over one gRPC channel."""

    def __init__(self, gateway: str, token: str, timeout: float = 60.0):
        self.pb, pb_grpc = load_stubs()
        self.channel = grpc.insecure_channel(gateway)
        self.conversations = pb_grpc.ConversationServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")]
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def create_conversation(self, title: str = "") -> str:
        """Starts a conversation; returns its id."""
        response = self.conversations.CreateConversation(
            self.pb.CreateConversationRequest(title=title[:200]),
            metadata=self.metadata,
            timeout=self.timeout,
        )
        return response.conversation.conversation_id

    def send(self, conversation_id: str, content: str, on_text=None):
        """Sends one message and streams the reply.

        `on_text(str)` is called with each piece of the reply as it arrives.
        The idempotency key makes a retry of this same call safe: the server
        replays the stored exchange instead of answering twice.
        Returns the `MessageCompleted` event (both stored turns)."""
        request = self.pb.SendMessageRequest(
            conversation_id=conversation_id,
            content=content,
            idempotency_key=str(uuid.uuid4()),
        )
        completed = None
        for event in self.conversations.SendMessage(
            request, metadata=self.metadata, timeout=self.timeout
        ):
            kind = event.WhichOneof("event")
            if kind == "text_delta" and on_text is not None:
                on_text(event.text_delta.text)
            elif kind == "completed":
                completed = event.completed
        if completed is None:
            raise RuntimeError("the reply stream ended without a completed event")
        return completed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send one message to the thought partner.")
    parser.add_argument("message", help="what to say")
    parser.add_argument("--gateway", default=os.environ.get("TP_GATEWAY_ADDR", "127.0.0.1:50051"),
                        help="the gateway's gRPC address (default: $TP_GATEWAY_ADDR or 127.0.0.1:50051)")
    parser.add_argument("--token", default=os.environ.get("TP_TOKEN", ""),
                        help="a bearer token (default: $TP_TOKEN)")
    parser.add_argument("--conversation", default="",
                        help="continue this conversation instead of starting one")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is needed: pass --token or set TP_TOKEN (tp dev token mints one)")

    client = ThoughtpartnerClient(args.gateway, args.token)
    try:
        conversation_id = args.conversation or client.create_conversation(args.message[:60])
        print(f"conversation {conversation_id}", file=sys.stderr)
        completed = client.send(
            conversation_id, args.message, on_text=lambda piece: print(piece, end="", flush=True)
        )
        print()
        print(
            f"stored: user {completed.user_message.message_id}, "
            f"assistant {completed.assistant_message.message_id}",
            file=sys.stderr,
        )
        return 0
    except grpc.RpcError as error:
        print(f"thoughtpartner: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
