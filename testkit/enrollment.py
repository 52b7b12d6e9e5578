"""Enroll simulated devices in process, as the API would: a server nonce, the device key's
signature over the request (proof of possession), then the enrollment action.

Tests and benchmarks that enroll hundreds of devices skip HTTP but not the proof, so the cost
they measure is the real one.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from device_sdk.client.identity import public_key_pem, sign_enrollment
from fleet.devices.actions import EnrollmentProof, EnrollmentResult, do_enroll_device
from fleet.devices.proof import issue_nonce


def enroll_in_process(*, token: str, key: ed25519.Ed25519PrivateKey, hardware: str,
                      capabilities: dict[str, Any], uid: str | None = None) -> EnrollmentResult:
    """Enroll the device holding ``key`` with ``token`` (see the module docstring)."""
    nonce = issue_nonce()
    signature = sign_enrollment(key, nonce=nonce, token=token, uid=uid or "", hardware=hardware,
                                capabilities=capabilities)
    return do_enroll_device(token=token, public_key_pem=public_key_pem(key), hardware=hardware,
                            capabilities=capabilities, uid=uid,
                            proof=EnrollmentProof(nonce, signature, dict(capabilities)))
