"""Access policy: how restrictions and token files are read, and what each call is told."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from tensorgate.errors import PermissionDenied, Unauthenticated
from tensorgate.settings import Settings, build_settings
from tensorgate.transport import access
from tensorgate.transport.access import AccessPolicy, Restriction, TokenFile, build_policy


def test_a_restriction_reads_groups_header_and_value() -> None:
    restriction = Restriction.parse("inference,metadata:X-Key=a:b=c")
    assert restriction.groups == {"inference", "metadata"}
    assert restriction.header == "x-key"  # headers compare in lower case
    policy = AccessPolicy([restriction])
    policy.check("inference", {"x-key": "a:b=c"}, "grpc", "call")
    with pytest.raises(Unauthenticated):
        policy.check("inference", {"x-key": "a:b"}, "grpc", "call")
    policy.check("health", {}, "grpc", "call")  # not restricted


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("inference", "expected GROUP"),
        ("inference:x-key", "expected GROUP"),
        ("inference:=v", "expected GROUP"),
        ("infer:x-key=v", "unknown endpoint groups"),
    ],
)
def test_a_malformed_restriction_is_refused_naming_the_mistake(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Restriction.parse(text)


def test_a_group_restricted_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="restricted twice"):
        AccessPolicy([Restriction.parse("inference:a=1"), Restriction.parse("inference:b=2")])


def test_tokens_grant_their_groups_and_the_reason_is_never_told(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\nalpha\nbeta inference,health  # scoped\n\n")
    policy = build_policy(Settings(auth_token_file=path))
    policy.check("model-repository", {"authorization": "Bearer alpha"}, "grpc", "call")
    policy.check("inference", {"authorization": "bearer beta"}, "grpc", "call")
    policy.check("health", {}, "grpc", "call")  # public
    with pytest.raises(PermissionDenied, match="'metadata'"):
        policy.check("metadata", {"authorization": "Bearer beta"}, "grpc", "call")
    messages = set()
    for headers in ({}, {"authorization": "Bearer gamma"}, {"authorization": "alpha"}):
        with pytest.raises(Unauthenticated) as info:
            policy.check("metadata", headers, "grpc", "call")
        messages.add(info.value.message)
    assert len(messages) == 1
    assert policy.refused == {
        ("metadata", "permission_denied"): 1,
        ("metadata", "unauthenticated"): 3,
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [("", "no tokens"), ("a b c\n", "expected 'TOKEN"), ("a nosuch\n", "unknown endpoint")],
)
def test_a_bad_token_file_is_refused_with_its_line(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError, match=reason):
        TokenFile(path)


def test_the_token_file_is_read_again_when_it_changes_and_kept_when_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access, "_RELOAD_CHECK_S", 0.0)
    path = tmp_path / "tokens"
    path.write_text("old\n")
    policy = build_policy(Settings(auth_token_file=path, auth_public=[]))
    policy.check("inference", {"authorization": "Bearer old"}, "grpc", "call")
    path.write_text("new-token\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    policy.check("inference", {"authorization": "Bearer new-token"}, "grpc", "call")
    with pytest.raises(Unauthenticated):
        policy.check("inference", {"authorization": "Bearer old"}, "grpc", "call")
    path.write_text("a b c\n")  # broken: the previous tokens stay
    policy.check("inference", {"authorization": "Bearer new-token"}, "grpc", "call")


def test_restrictions_come_from_the_variable_separated_by_semicolons() -> None:
    settings = build_settings({}, {"TENSORGATE_RESTRICT": "inference,metadata:x-a=1;logging:x-b=2"})
    assert settings.restrict == ["inference,metadata:x-a=1", "logging:x-b=2"]
    with pytest.raises(ValueError, match="unknown endpoint group"):
        build_settings({"auth_public": ["healthz"]}, {})


def test_tritons_restricted_protocol_and_api_flags_restrict_one_transport_each() -> None:
    settings = build_settings(
        {
            "grpc_restricted_protocol": ["inference:x-grpc=1"],
            "http_restricted_api": ["inference,model-config:x-http=2"],
        },
        {},
    )
    policy = build_policy(settings)
    policy.check("inference", {"x-grpc": "1"}, "grpc", "ModelInfer")
    policy.check("inference", {"x-http": "2"}, "http", "POST /v2/models/m/infer")
    policy.check("model-config", {}, "grpc", "ModelConfig")  # restricted over HTTP only
    for transport, headers in (("grpc", {"x-http": "2"}), ("http", {"x-grpc": "1"})):
        with pytest.raises(Unauthenticated):
            policy.check("inference", headers, transport, "call")
    # One group may carry a different restriction on each transport, not two on one.
    with pytest.raises(ValueError, match="'inference' is restricted twice for grpc"):
        build_settings(
            {"restrict": ["inference:a=1"], "grpc_restricted_protocol": ["inference:b=2"]}, {}
        )


def test_log_updates_are_allowed_in_explicit_mode_or_when_asked_for() -> None:
    assert not build_settings({}, {}).log_updates_allowed
    assert build_settings({"allow_log_updates": True}, {}).log_updates_allowed
    assert build_settings({"model_control_mode": "explicit"}, {}).log_updates_allowed


def test_an_open_policy_reads_no_headers() -> None:
    assert not AccessPolicy().active
    assert AccessPolicy().headers == frozenset()


def test_every_rpc_belongs_to_an_endpoint_group() -> None:
    from grpc_health.v1 import health_pb2
    from tensorgate_protos import grpc_service_pb2, server_status_pb2

    services = [
        grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        server_status_pb2.DESCRIPTOR.services_by_name["ServerStatus"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
    ]
    for service in services:
        for method in service.methods:
            assert access.RPC_GROUPS.get(method.name) in access.GROUPS, method.full_name
