"""``InfoService``: what this server is and runs, read from the pieces ``server.build_server`` assembled and from
instahide_ops' registries and parameter checks, so what it says is what the server does. Never a secret."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from instahide_client.instahide.v1 import info_pb2, info_pb2_grpc

from instahide_ops.audits.membership import get_membership_attack, membership_attack_names
from instahide_ops.audits.reconstruction import attack_names, get_attack
from instahide_ops.audits.reconstruction.instahide.ciphertext_only import MIN_K
from instahide_ops.transforms.defenses import KINDS as DEFENSE_KINDS
from instahide_ops.transforms.disguisednets.keys import MATRICES, MAX_SCALE, METHODS, DisguisedNetsParams
from instahide_ops.transforms.instahide.encode import MAX_K, EncodeParams
from instahide_server.audit.jobs import AuditJobs
from instahide_server.transform.pools import PoolRegistry
from instahide_server.transform.validation import Limits

SERVICE_NAME = info_pb2.DESCRIPTOR.services_by_name["InfoService"].full_name
_DEFAULT_K = 6


@dataclass(frozen=True)
class ServerFacts:
    """What does not change while the server runs."""

    version: str
    device: str
    limits: Limits
    max_audit_images: int
    max_in_flight_per_stream: int
    keys_enabled: bool
    transport: str  # "plaintext", "tls", "mutual_tls"
    principals: int  # 0: no token auth


def _parameter(name: str, default: Any, encode_range: str, audit_range: str = "") -> info_pb2.ParameterInfo:
    return info_pb2.ParameterInfo(name=name, default_value=str(default).lower() if isinstance(default, bool)
                                  else str(default), encode_range=encode_range, audit_range=audit_range)


def families() -> list[info_pb2.FamilyInfo]:
    """The families with their parameters' defaults and ranges (as the parameter checks enforce them)."""
    instahide, disguised = EncodeParams(), DisguisedNetsParams()
    return [
        info_pb2.FamilyInfo(name="instahide", description="mixes each image with k - 1 others (private and from "
                            "a public pool) under a random sign mask; one-time keys", parameters=[
                                _parameter("mode", instahide.mode, "cross | inside", "cross"),
                                _parameter("k", _DEFAULT_K, f"[2, {MAX_K}]", f"[{MIN_K}, {MAX_K}]"),
                                _parameter("private_per_mix", instahide.private_per_mix, "[1, k]", "2"),
                                _parameter("max_coefficient", instahide.max_coefficient, "(0, 1], at least 1/k"),
                                _parameter("min_private_mass", instahide.min_private_mass, "[0, 1]"),
                                _parameter("sign_flip", instahide.sign_flip, "true | false")]),
        info_pb2.FamilyInfo(name="disguised_nets", description="block permutation and per-block random projection "
                            "(RMT) or AES-ECB under a stored key (KeyService)", parameters=[
                                _parameter("method", disguised.method, " | ".join(METHODS)),
                                _parameter("block_rows", disguised.block[0], "divides the image height"),
                                _parameter("block_cols", disguised.block[1], "divides the image width"),
                                _parameter("matrix", disguised.matrix, " | ".join(MATRICES)),
                                _parameter("noise", disguised.noise, "[0, inf) on the 0-255 scale (RMT)"),
                                _parameter("scale", disguised.scale, f"[1, {MAX_SCALE}] (AES)"),
                                _parameter("salt_pepper", disguised.salt_pepper, "[0, 1) (AES)")]),
        info_pb2.FamilyInfo(name="output_defense", description="a defense on a model's outputs before release "
                            "(Segmentations-Leak): " + ", ".join(DEFENSE_KINDS), parameters=[
                                _parameter("defense", "", " | ".join(DEFENSE_KINDS))]),
    ]


def audit_kinds() -> list[info_pb2.AuditKindInfo]:
    """The audit kinds and their registered attacks, in run order."""
    reconstruction = [info_pb2.AttackInfo(name=a.name, title=a.title, threat=a.threat, bound=a.bound,
                                          default_attack=a.default, targets=[a.family])
                      for a in map(get_attack, attack_names())]
    membership = [info_pb2.AttackInfo(name=a.name, title=a.title, threat=a.threat, bound=False,
                                      default_attack=a.default, targets=sorted(a.tasks))
                  for a in map(get_membership_attack, membership_attack_names())]
    return [info_pb2.AuditKindInfo(name="reconstruction", attacks=reconstruction),
            info_pb2.AuditKindInfo(name="membership", attacks=membership)]


class InfoServicer(info_pb2_grpc.InfoServiceServicer):
    def __init__(self, facts: ServerFacts, pools: PoolRegistry, jobs: AuditJobs) -> None:
        self._facts = facts
        self._pools = pools
        self._jobs = jobs

    async def GetServerInfo(self, request: info_pb2.GetServerInfoRequest,
                            context: grpc.aio.ServicerContext) -> info_pb2.GetServerInfoResponse:
        facts = self._facts
        return info_pb2.GetServerInfoResponse(
            version=facts.version, device=facts.device, families=families(),
            limits=info_pb2.ServerLimits(max_message_bytes=facts.limits.max_message_bytes,
                                         max_images_per_request=facts.limits.max_images_per_request,
                                         max_audit_images=facts.max_audit_images,
                                         max_in_flight_per_stream=facts.max_in_flight_per_stream),
            pools=[info_pb2.PoolInfo(image_shape=list(shape), images=len(pool), fingerprint=pool.fingerprint)
                   for shape, pool in self._pools.built()],
            audits=info_pb2.AuditInfo(enabled=self._jobs.available, workers=self._jobs.workers, kinds=audit_kinds()),
            keys_enabled=facts.keys_enabled,
            security=info_pb2.SecurityInfo(transport=facts.transport, token_auth=facts.principals > 0,
                                           principals=facts.principals))


def add_to_server(servicer: InfoServicer, server: grpc.aio.Server) -> None:
    info_pb2_grpc.add_InfoServiceServicer_to_server(servicer, server)

