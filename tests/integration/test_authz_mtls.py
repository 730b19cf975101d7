"""mTLS client certificates mapped to scopes: the auth interceptor reads the peer's common name
from the call's auth context. The TLS server is made here (TLS itself is another branch's part):
a throwaway CA signs a server certificate and two client certificates."""

from __future__ import annotations

import asyncio
import datetime
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sluice.proto import grpc_service_pb2 as pb
from sluice.proto import grpc_service_pb2_grpc as pb_grpc
from sluice.server.app import BUNDLED_REPOSITORY, Server
from sluice.server.auth import tokens
from sluice.server.auth.verifier import TokenVerifier
from sluice.server.config.settings import ServerConfig
from sluice.server.protocol.auth import AuthInterceptor
from sluice.server.protocol.wire import add_inference_service


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(name: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False,
          dns: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pki() -> dict[str, bytes]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sluice-test-ca")])
    ca = _cert("sluice-test-ca", ca_key, ca_name, ca_key, ca=True)
    out = {"ca": ca.public_bytes(serialization.Encoding.PEM)}
    for name in ("localhost", "batch-client", "stranger"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, key, ca_name, ca_key, dns="localhost" if name == "localhost" else None)
        out[f"{name}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        out[f"{name}.key"] = _pem(key)
    return out


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, dict[str, bytes], str]]:
    """A grpc.aio server with mTLS, the auth interceptor and Sluice's inference servicer."""
    pki = _pki()
    path = tmp_path / "tokens.json"
    tokens.map_certificate(path, "batch-client", ["metadata"])
    bearer = tokens.create_token(path, "ops-bot", ["ops"])
    loop = asyncio.new_event_loop()
    ready: dict[str, object] = {}
    started = threading.Event()
    stop = asyncio.Event()

    async def main() -> None:
        sluice = Server(ServerConfig(model_repository=BUNDLED_REPOSITORY, grpc_port=0,
                                     metrics_port=None, state_dir=tmp_path / "state"))
        grpc_server = grpc.aio.server(interceptors=[AuthInterceptor(TokenVerifier(path))])
        add_inference_service(sluice.servicer, grpc_server)
        credentials = grpc.ssl_server_credentials(
            [(pki["localhost.key"], pki["localhost.crt"])], root_certificates=pki["ca"],
            require_client_auth=True)
        ready["port"] = grpc_server.add_secure_port("127.0.0.1:0", credentials)
        await grpc_server.start()
        started.set()
        await stop.wait()
        await grpc_server.stop(0)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(30)
    yield ready["port"], pki, bearer
    loop.call_soon_threadsafe(stop.set)
    thread.join(30)
    assert not thread.is_alive()
    loop.close()


def _stub(port: int, pki: dict[str, bytes], client: str) -> tuple[grpc.Channel, object]:
    credentials = grpc.ssl_channel_credentials(pki["ca"], pki[f"{client}.key"],
                                               pki[f"{client}.crt"])
    channel = grpc.secure_channel(f"localhost:{port}", credentials)
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def test_a_mapped_certificate_gets_its_scopes_and_no_others(tls_server):
    port, pki, _bearer = tls_server
    channel, stub = _stub(port, pki, "batch-client")
    with channel:
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live  # metadata: mapped
        with pytest.raises(grpc.RpcError) as denied:
            stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=30)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'cert:batch-client' lacks scope 'ops'" in denied.value.details()


def test_an_unmapped_certificate_is_unauthenticated_and_a_token_still_works(tls_server):
    port, pki, bearer = tls_server
    channel, stub = _stub(port, pki, "stranger")
    with channel:
        with pytest.raises(grpc.RpcError) as refused:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=30,
                                     metadata=(("authorization", f"Bearer {bearer}"),))
        assert reply is not None  # the bearer token's ops scope, over the same TLS channel
