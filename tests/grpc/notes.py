"""A real grpcio server for the gateway's gRPC tests, on the `Notes` service of notes.proto.

The proto is compiled at test time with grpc_tools.protoc (into a temporary folder), so the generated code
always matches the protobuf runtime installed, and no generated file is kept in the repository.
"""

from __future__ import annotations

import datetime
import importlib
import ipaddress
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_tools import protoc

PROTO = Path(__file__).with_name("notes.proto")
MAX_MESSAGE = 32 * 1024 * 1024


def compile_notes(out_dir: Path) -> tuple[ModuleType, ModuleType]:
    """notes_pb2 and notes_pb2_grpc, generated into `out_dir` and imported."""
    include = protoc._get_resource_file_name("grpc_tools", "_proto")  # well-known types
    code = protoc.main(["protoc", f"-I{PROTO.parent}", f"-I{include}", f"--python_out={out_dir}",
                        f"--grpc_python_out={out_dir}", str(PROTO)])
    if code != 0:
        raise RuntimeError(f"protoc failed with {code}")
    sys.path.insert(0, str(out_dir))
    try:
        return importlib.import_module("notes_pb2"), importlib.import_module("notes_pb2_grpc")
    finally:
        sys.path.remove(str(out_dir))


def self_signed(out_dir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = out_dir / "upstream.pem", out_dir / "upstream-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def frame(message: Any) -> bytes:
    """One gRPC length-prefixed message (uncompressed)."""
    data = message.SerializeToString()
    return b"\x00" + len(data).to_bytes(4, "big") + data


def unframe(data: bytes) -> list[bytes]:
    """The messages of a gRPC body; raises if it ends inside one."""
    messages = []
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset + 1:offset + 5], "big")
        if offset + 5 + length > len(data):
            raise ValueError("the body ends inside a message")
        messages.append(data[offset + 5:offset + 5 + length])
        offset += 5 + length
    return messages


class NotesServer:
    """`Notes` on 127.0.0.1, a port the OS hands out, with a thread pool."""

    def __init__(self, pb2: ModuleType, pb2_grpc: ModuleType, port: int = 0,
                 credentials: grpc.ServerCredentials | None = None, **options: Any) -> None:
        self.pb2 = pb2
        server_options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                          ("grpc.max_send_message_length", MAX_MESSAGE), *options.items()]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=server_options)
        self.cancelled: list[str] = []  # texts of calls that saw their client cancel
        pb2_grpc.add_NotesServicer_to_server(_Notes(pb2, self.cancelled), self.server)
        self.serving = True  # what grpc.health.v1.Health/Check answers: SERVING or NOT_SERVING
        check = grpc.unary_unary_rpc_method_handler(
            lambda request, context: b"\x08\x01" if self.serving else b"\x08\x02")  # raw HealthCheckResponse
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": check}),))
        address = f"127.0.0.1:{port}"
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        self.scheme = "http" if credentials is None else "https"
        self.server.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stop(self, grace: float | None = None) -> None:
        self.server.stop(grace).wait(10)


class _Notes:
    """Echo: metadata both ways, the deadline it saw, NOT_FOUND for `missing...`, a crash for `crash`, a
    wait for `slow` (count ms). Split: `count` notes. Collect: the texts joined. Chat: each note, upper-cased."""

    def __init__(self, pb2: ModuleType, cancelled: list[str]) -> None:
        self.pb2 = pb2
        self.cancelled = cancelled

    def Echo(self, note: Any, context: grpc.ServicerContext) -> Any:
        tag = dict(context.invocation_metadata()).get("x-note-tag")
        if tag is not None:
            context.send_initial_metadata([("x-note-tag-echo", tag)])
            context.set_trailing_metadata([("x-note-trailer", f"done-{tag}")])
        if note.text.startswith("missing"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no note called {note.text}")
        if note.text == "crash":
            raise RuntimeError("the handler crashed")
        if note.text == "slow":
            until = time.monotonic() + note.count / 1000
            while time.monotonic() < until:
                if not context.is_active():
                    self.cancelled.append(note.text)
                    return self.pb2.Note()
                time.sleep(0.01)
        remaining = context.time_remaining()
        deadline_ms = -1 if remaining is None else int(remaining * 1000)
        return self.pb2.Note(text=note.text, payload=note.payload, count=note.count, deadline_ms=deadline_ms)

    def Split(self, note: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for index in range(note.count):
            if note.text == "slow":
                time.sleep(0.05)
            yield self.pb2.Note(text=f"{note.text}-{index}", count=index, payload=note.payload)

    def Collect(self, notes: Iterator[Any], context: grpc.ServicerContext) -> Any:
        texts = [note.text for note in notes]
        return self.pb2.Note(text="+".join(texts), count=len(texts))

    def Chat(self, notes: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        for note in notes:
            yield self.pb2.Note(text=note.text.upper(), count=note.count)
