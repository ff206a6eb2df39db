"""Drives the public gRPC API of a running gateway with grpcio stubs
generated from proto/ (see conftest.py).

Run (with TP_GATEWAY_ADDR and TP_JWT_HS256_SECRET set):
    pip install -r tests/python/requirements.txt
    pytest tests/python
"""

from __future__ import annotations

import time
import uuid

import grpc
import jwt
import pytest

PROMPT = "We need to hire more engineers; we're 30 engineers at series A."
TIMEOUT = 30


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def send(api, stubs, token, conversation_id, content, idempotency_key=""):
    """Consumes a SendMessage stream; returns (deltas, completed, events)."""
    stream = stubs.conversations.SendMessage(
        api.conversation_pb2.SendMessageRequest(
            conversation_id=conversation_id,
            content=content,
            idempotency_key=idempotency_key,
        ),
        metadata=bearer(token),
        timeout=TIMEOUT,
    )
    events = list(stream)
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds, "SendMessage stream ended without any event"
    assert None not in kinds, f"event with no oneof member set: {kinds}"
    assert kinds[-1] == "completed", f"last event must be `completed`, got {kinds}"
    assert kinds.count("completed") == 1, f"exactly one `completed` expected, got {kinds}"
    deltas = [event.text_delta.text for event in events[:-1]]
    return deltas, events[-1].completed, events


def create_conversation(api, stubs, token, title):
    response = stubs.conversations.CreateConversation(
        api.conversation_pb2.CreateConversationRequest(title=title),
        metadata=bearer(token),
        timeout=TIMEOUT,
    )
    conversation = response.conversation
    uuid.UUID(conversation.conversation_id)  # a server-assigned UUID
    assert conversation.title == title
    return conversation


def list_messages(api, stubs, token, conversation_id):
    response = stubs.conversations.ListMessages(
        api.conversation_pb2.ListMessagesRequest(conversation_id=conversation_id),
        metadata=bearer(token),
        timeout=TIMEOUT,
    )
    assert response.next_page_token == ""
    return list(response.messages)


def assert_same_message(actual, expected):
    assert actual.message_id == expected.message_id
    assert actual.conversation_id == expected.conversation_id
    assert actual.role == expected.role
    assert actual.content == expected.content
    assert actual.create_time == expected.create_time


def test_create_tenant_member_conversation_and_stream_a_reply(api, stubs, new_member):
    pb = api.conversation_pb2
    _tenant, _member_id, token = new_member()
    conversation = create_conversation(api, stubs, token, "Hiring plan")

    deltas, completed, _ = send(
        api, stubs, token, conversation.conversation_id, PROMPT, str(uuid.uuid4())
    )

    user, assistant = completed.user_message, completed.assistant_message
    assert user.role == pb.MESSAGE_ROLE_USER
    assert user.content == PROMPT
    assert user.conversation_id == conversation.conversation_id
    assert assistant.role == pb.MESSAGE_ROLE_ASSISTANT
    assert assistant.conversation_id == conversation.conversation_id
    assert assistant.content.strip(), "assistant reply is empty"
    assert "?" in assistant.content, f"reply asks no question: {assistant.content!r}"
    assert "".join(deltas) == assistant.content
    uuid.UUID(user.message_id)
    uuid.UUID(assistant.message_id)
    assert user.message_id != assistant.message_id
    assert user.create_time.ToDatetime() <= assistant.create_time.ToDatetime()

    messages = list_messages(api, stubs, token, conversation.conversation_id)
    assert [m.message_id for m in messages] == [user.message_id, assistant.message_id]
    assert_same_message(messages[0], user)
    assert_same_message(messages[1], assistant)


def test_retry_with_same_idempotency_key_replays_without_new_turns(api, stubs, new_member):
    _tenant, _member_id, token = new_member()
    conversation = create_conversation(api, stubs, token, "Retry")
    key = str(uuid.uuid4())

    first_deltas, first, _ = send(api, stubs, token, conversation.conversation_id, PROMPT, key)
    again_deltas, again, _ = send(api, stubs, token, conversation.conversation_id, PROMPT, key)

    assert_same_message(again.user_message, first.user_message)
    assert_same_message(again.assistant_message, first.assistant_message)
    assert "".join(again_deltas) == again.assistant_message.content
    assert "".join(first_deltas) == first.assistant_message.content
    messages = list_messages(api, stubs, token, conversation.conversation_id)
    assert [m.message_id for m in messages] == [
        first.user_message.message_id,
        first.assistant_message.message_id,
    ]


def test_missing_token_is_unauthenticated(api, stubs):
    with pytest.raises(grpc.RpcError) as err:
        stubs.conversations.CreateConversation(
            api.conversation_pb2.CreateConversationRequest(title="no token"),
            timeout=TIMEOUT,
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.RpcError) as err:
        stubs.tenants.CreateTenant(
            api.tenant_admin_pb2.CreateTenantRequest(
                display_name="no token", seats=1, admin_user_id="py-nobody"
            ),
            timeout=TIMEOUT,
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_with_wrong_signature_is_unauthenticated(api, stubs, new_member):
    tenant, member_id, _token = new_member()
    forged = jwt.encode(
        {
            "sub": member_id,
            "tenant_id": tenant.tenant_id,
            "role": "member",
            "exp": int(time.time()) + 600,
        },
        "not-the-gateway-secret-0123456789",
        algorithm="HS256",
    )
    with pytest.raises(grpc.RpcError) as err:
        stubs.conversations.CreateConversation(
            api.conversation_pb2.CreateConversationRequest(title="forged"),
            metadata=bearer(forged),
            timeout=TIMEOUT,
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_empty_content_is_invalid_argument(api, stubs, new_member):
    _tenant, _member_id, token = new_member()
    conversation = create_conversation(api, stubs, token, "Empty")

    with pytest.raises(grpc.RpcError) as err:
        send(api, stubs, token, conversation.conversation_id, "", str(uuid.uuid4()))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Nothing was stored by the rejected turn.
    assert list_messages(api, stubs, token, conversation.conversation_id) == []


def test_other_tenants_member_gets_not_found(api, stubs, new_member):
    _tenant_a, _member_a, token_a = new_member()
    _tenant_b, _member_b, token_b = new_member()
    conversation = create_conversation(api, stubs, token_a, "Tenant A only")

    # The owner can read it ...
    own = stubs.conversations.GetConversation(
        api.conversation_pb2.GetConversationRequest(
            conversation_id=conversation.conversation_id
        ),
        metadata=bearer(token_a),
        timeout=TIMEOUT,
    )
    assert own.conversation.conversation_id == conversation.conversation_id

    # ... a member of another tenant cannot even learn that it exists.
    with pytest.raises(grpc.RpcError) as err:
        stubs.conversations.GetConversation(
            api.conversation_pb2.GetConversationRequest(
                conversation_id=conversation.conversation_id
            ),
            metadata=bearer(token_b),
            timeout=TIMEOUT,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_search_grounds_a_question_in_the_framework_corpus(api, stubs, new_member):
    _tenant, _member_id, token = new_member()
    response = stubs.knowledge.Search(
        api.knowledge_pb2.SearchRequest(
            query="my senior engineers don't know what staff engineers are supposed to do",
            limit=3,
        ),
        metadata=bearer(token),
        timeout=TIMEOUT,
    )
    assert 1 <= len(response.results) <= 3
    top = response.results[0]
    assert top.entry_id == "staff-archetypes"
    assert top.kind == api.knowledge_pb2.ENTRY_KIND_FRAMEWORK
    assert top.citations and all(c.url.startswith("https://") for c in top.citations)
    scores = [r.score for r in response.results]
    assert scores == sorted(scores, reverse=True)

    with pytest.raises(grpc.RpcError) as err:
        stubs.knowledge.Search(
            api.knowledge_pb2.SearchRequest(query="   "),
            metadata=bearer(token),
            timeout=TIMEOUT,
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
