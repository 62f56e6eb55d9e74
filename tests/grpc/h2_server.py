"""A real HTTP/2 server (h2c prior knowledge; the h2 library on a thread per connection) whose answers are
scripted per request: plain responses, trailers, RST_STREAM, GOAWAY, a connection dropped mid-response.
For what a grpcio server cannot be made to do on cue, and for plain HTTP/2 upstreams."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class Request:
    connection: int  # 1 for the first connection the server accepted
    stream_id: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass
class Respond:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] | None = None


@dataclass
class Reset:
    error_code: int = 2  # INTERNAL_ERROR


@dataclass
class GoAway:
    """GOAWAY saying the last stream processed is the one before this request's, then close."""


@dataclass
class DropMidBody:
    """The head and part of the body, then the connection closes."""

    body: bytes = b"partial"


Action = Respond | Reset | GoAway | DropMidBody
Script = Callable[[Request], Action]


class ScriptedH2Server:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        open_requests: dict[int, Request] = {}
        sock.settimeout(30)
        with sock:
            sock.sendall(conn.data_to_send())
            while not self._stop:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = [(str(k), str(v)) for k, v in event.headers]
                        open_requests[event.stream_id] = Request(number, event.stream_id, headers)
                    elif isinstance(event, h2.events.DataReceived):
                        open_requests[event.stream_id].body += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        request = open_requests.pop(event.stream_id)
                        self.requests.append(request)
                        if not self._act(conn, sock, request, self.script(request)):
                            return
                with contextlib.suppress(OSError):
                    sock.sendall(conn.data_to_send())

    def _act(self, conn: h2.connection.H2Connection, sock: socket.socket, request: Request, action: Action) -> bool:
        """Carry out `action`; False when the connection is to be closed."""
        stream_id = request.stream_id
        if isinstance(action, Respond):
            conn.send_headers(stream_id, [(":status", str(action.status)), *action.headers],
                              end_stream=not action.body and action.trailers is None)
            if action.body:
                conn.send_data(stream_id, action.body, end_stream=action.trailers is None)
            if action.trailers is not None:
                conn.send_headers(stream_id, action.trailers, end_stream=True)
            return True
        if isinstance(action, Reset):
            conn.reset_stream(stream_id, action.error_code)
            return True
        if isinstance(action, GoAway):
            conn.close_connection(last_stream_id=max(0, stream_id - 2))
        else:
            conn.send_headers(stream_id, [(":status", "200")])
            conn.send_data(stream_id, action.body)
        with contextlib.suppress(OSError):
            sock.sendall(conn.data_to_send())
        return False
