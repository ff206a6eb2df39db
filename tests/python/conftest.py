"""Fixtures for the Python public-API test.

Stubs are generated from the repo's `proto/` directory at test time into a
temporary directory (never committed) and put on `sys.path`, so the test
always drives the API as it is currently declared.

Environment:
  TP_GATEWAY_ADDR       host:port of a running gateway (e.g. 127.0.0.1:31061)
  TP_JWT_HS256_SECRET   the gateway's HS256 secret, used to mint tokens
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import types
import uuid
from pathlib import Path

import grpc
import jwt
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
PUBLIC_PROTOS = [
    "thoughtpartner/v1/conversation.proto",
    "thoughtpartner/v1/tenant_admin.proto",
    "thoughtpartner/v1/member.proto",
    "thoughtpartner/v1/knowledge.proto",
]


def pytest_configure(config):
    # The gateway accepts HS256 secrets of 16 bytes or more; PyJWT warns below
    # 32. That is about the dev secret, not the product under test.
    config.addinivalue_line(
        "filterwarnings", "ignore::jwt.warnings.InsecureKeyLengthWarning"
    )


def _require_env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        pytest.fail(f"set {name} to run the public-API test against a running gateway")
    return value


@pytest.fixture(scope="session")
def api(tmp_path_factory) -> types.SimpleNamespace:
    """Generated pb2/pb2_grpc modules for the public protos."""
    out = tmp_path_factory.mktemp("tp_stubs")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *PUBLIC_PROTOS,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"
    # Make the generated directories regular packages so
    # `from thoughtpartner.v1 import conversation_pb2` resolves to them.
    for pkg in (out / "thoughtpartner", out / "thoughtpartner" / "v1"):
        (pkg / "__init__.py").touch()
    sys.path.insert(0, str(out))
    importlib.invalidate_caches()

    def load(name: str):
        return importlib.import_module(f"thoughtpartner.v1.{name}")

    return types.SimpleNamespace(
        conversation_pb2=load("conversation_pb2"),
        conversation_pb2_grpc=load("conversation_pb2_grpc"),
        tenant_admin_pb2=load("tenant_admin_pb2"),
        tenant_admin_pb2_grpc=load("tenant_admin_pb2_grpc"),
        member_pb2=load("member_pb2"),
        member_pb2_grpc=load("member_pb2_grpc"),
        knowledge_pb2=load("knowledge_pb2"),
        knowledge_pb2_grpc=load("knowledge_pb2_grpc"),
    )


@pytest.fixture(scope="session")
def channel():
    addr = _require_env("TP_GATEWAY_ADDR")
    ch = grpc.insecure_channel(addr)
    try:
        grpc.channel_ready_future(ch).result(timeout=15)
    except grpc.FutureTimeoutError:
        ch.close()
        pytest.fail(f"gateway at {addr} is not reachable")
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def mint():
    """mint(sub, role, tenant_id=None, ttl=600) -> signed HS256 JWT."""
    secret = _require_env("TP_JWT_HS256_SECRET")

    def _mint(sub: str, role: str, tenant_id: str | None = None, ttl: int = 600) -> str:
        claims = {"sub": sub, "role": role, "exp": int(time.time()) + ttl}
        if tenant_id is not None:
            claims["tenant_id"] = tenant_id
        return jwt.encode(claims, secret, algorithm="HS256")

    return _mint


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture(scope="session")
def stubs(api, channel) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        tenants=api.tenant_admin_pb2_grpc.TenantAdminServiceStub(channel),
        members=api.member_pb2_grpc.MemberServiceStub(channel),
        conversations=api.conversation_pb2_grpc.ConversationServiceStub(channel),
        knowledge=api.knowledge_pb2_grpc.KnowledgeServiceStub(channel),
    )


@pytest.fixture(scope="session")
def new_member(api, stubs, mint):
    """new_member() creates a fresh tenant (3 seats) with a fresh admin, adds a
    fresh member and returns (tenant, member_user_id, member_token)."""

    def _new_member():
        suffix = uuid.uuid4().hex[:12]
        operator = mint(f"py-operator-{suffix}", "operator")
        admin_id = f"py-admin-{suffix}"
        created = stubs.tenants.CreateTenant(
            api.tenant_admin_pb2.CreateTenantRequest(
                display_name=f"Python test tenant {suffix}",
                seats=3,
                admin_user_id=admin_id,
            ),
            metadata=bearer(operator),
            timeout=10,
        )
        tenant = created.tenant
        assert str(uuid.UUID(tenant.tenant_id)) == tenant.tenant_id.lower()
        assert tenant.seats == 3

        admin = mint(admin_id, "admin", tenant.tenant_id)
        member_id = f"py-member-{suffix}"
        added = stubs.members.AddMember(
            api.member_pb2.AddMemberRequest(
                user_id=member_id, role=api.member_pb2.MEMBER_ROLE_MEMBER
            ),
            metadata=bearer(admin),
            timeout=10,
        )
        assert added.member.user_id == member_id
        assert added.member.role == api.member_pb2.MEMBER_ROLE_MEMBER

        return tenant, member_id, mint(member_id, "member", tenant.tenant_id)

    return _new_member
