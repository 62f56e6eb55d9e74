"""grpc_transcode in the real gateway, before a real grpcio server: REST and JSON in, gRPC to the service, JSON
out. The rules come from google.api.http options compiled by protoc into a descriptor set, and from the
`methods:` map; path variables, query parameters and body fields fill the request; gRPC errors become HTTP."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import httpx
import pytest
from grpc_tools import protoc

from tests.integration.helpers import RunningGateway, free_port, gateway_config, run_gateway

PROTO = """
syntax = "proto3";
package shop.v1;
import "google/api/annotations.proto";

message Book { string id = 1; string title = 2; int32 pages = 3; repeated string tags = 4; string shelf = 5; }
message GetBookRequest { string id = 1; }
message ListBooksRequest { int32 page_size = 1; repeated string tags = 2; }
message ListBooksResponse { repeated Book books = 1; }
message CreateBookRequest { string shelf = 1; Book book = 2; }

service Shop {
  rpc GetBook(GetBookRequest) returns (Book) { option (google.api.http) = { get: "/v1/books/{id}" }; }
  rpc ListBooks(ListBooksRequest) returns (ListBooksResponse) { option (google.api.http) = { get: "/v1/books" }; }
  rpc CreateBook(CreateBookRequest) returns (Book) {
    option (google.api.http) = { post: "/v1/shelves/{shelf}/books" body: "book" };
  }
  rpc Echo(Book) returns (Book);
  rpc Watch(GetBookRequest) returns (stream Book);
}
"""


def _compile(out: Path) -> tuple[ModuleType, ModuleType, Path]:
    (out / "shop.proto").write_text(PROTO)
    well_known = protoc._get_resource_file_name("grpc_tools", "_proto")
    googleapis = Path(importlib.import_module("google.api.annotations_pb2").__file__ or "").parents[2]
    descriptor = out / "shop.pb"
    code = protoc.main(["protoc", f"-I{out}", f"-I{well_known}", f"-I{googleapis}", f"--python_out={out}",
                        f"--grpc_python_out={out}", "--include_imports", f"--descriptor_set_out={descriptor}",
                        str(out / "shop.proto")])
    assert code == 0, "protoc failed"
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("shop_pb2"), importlib.import_module("shop_pb2_grpc"), descriptor
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, list[Any]]]:
    pb2, pb2_grpc, descriptor = _compile(tmp_path_factory.mktemp("proto"))
    received: list[Any] = []

    class Shop(pb2_grpc.ShopServicer):  # type: ignore[misc, name-defined]
        def GetBook(self, request: Any, context: grpc.ServicerContext) -> Any:
            received.append(request)
            if request.id == "missing":
                context.abort(grpc.StatusCode.NOT_FOUND, "no book missing")
            return pb2.Book(id=request.id, title="Dune", pages=412)

        def ListBooks(self, request: Any, context: grpc.ServicerContext) -> Any:
            received.append(request)
            return pb2.ListBooksResponse(books=[pb2.Book(id=str(i), tags=request.tags)
                                                for i in range(request.page_size)])

        def CreateBook(self, request: Any, context: grpc.ServicerContext) -> Any:
            received.append(request)
            book = pb2.Book()
            book.CopyFrom(request.book)
            book.shelf, book.id = request.shelf, "new-1"
            return book

        def Echo(self, request: Any, context: grpc.ServicerContext) -> Any:
            received.append(request)
            return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb2_grpc.add_ShopServicer_to_server(Shop(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, descriptor, received
    server.stop(0)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            service: tuple[int, Path, list[Any]]) -> Iterator[RunningGateway]:
    port, descriptor, _ = service
    routes = [{"name": "shop", "match": {"paths": ["/v1"]}, "to": "shop",
               "plugins": {"grpc_transcode": {"descriptor": str(descriptor), "service": "shop.v1.Shop",
                                              "methods": {"POST /v1/echo": "Echo"}}}}]
    config = gateway_config(free_port(), free_port(), {"shop": [f"http://127.0.0.1:{port}"]}, routes)
    config["upstreams"]["shop"]["protocol"] = "grpc"
    with run_gateway(tmp_path_factory.mktemp("transcode"), config) as running:
        yield running


def test_a_get_with_a_path_variable_calls_the_method_and_answers_json(
        gateway: RunningGateway, service: tuple[int, Path, list[Any]]) -> None:
    response = httpx.get(gateway.url("/v1/books/b-7"), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"id": "b-7", "title": "Dune", "pages": 412}
    assert "grpc-status" not in response.headers
    assert service[2][-1].id == "b-7"


def test_query_parameters_fill_the_other_fields(gateway: RunningGateway) -> None:
    response = httpx.get(gateway.url("/v1/books?pageSize=2&tags=sf&tags=classic"), timeout=10)
    assert response.json() == {"books": [{"id": "0", "tags": ["sf", "classic"]},
                                         {"id": "1", "tags": ["sf", "classic"]}]}


def test_a_body_field_and_a_path_variable_build_the_request(gateway: RunningGateway,
                                                           service: tuple[int, Path, list[Any]]) -> None:
    response = httpx.post(gateway.url("/v1/shelves/s-1/books"), json={"title": "Emma", "pages": 300}, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"id": "new-1", "title": "Emma", "pages": 300, "shelf": "s-1"}
    request = service[2][-1]
    assert (request.shelf, request.book.title, request.book.pages) == ("s-1", "Emma", 300)


def test_the_methods_map_adds_rules(gateway: RunningGateway) -> None:
    response = httpx.post(gateway.url("/v1/echo"), json={"title": "x", "tags": ["a"]}, timeout=10)
    assert response.status_code == 200 and response.json() == {"title": "x", "tags": ["a"]}


def test_grpc_errors_become_http_statuses_and_bad_requests_400(gateway: RunningGateway) -> None:
    missing = httpx.get(gateway.url("/v1/books/missing"), timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found" and missing.json()["request_id"]
    assert missing.json()["message"] == "no book missing"  # the service's grpc-message, from its trailers
    bad = httpx.post(gateway.url("/v1/shelves/s/books"), json={"pages": "many"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
    nowhere = httpx.get(gateway.url("/v1/nothing/here"), timeout=10)
    assert nowhere.status_code == 404


def test_a_descriptor_problem_is_a_config_error(tmp_path: Path, service: tuple[int, Path, list[Any]]) -> None:
    from frontgate.config.loader import load_config
    from frontgate.errors import ConfigError
    from frontgate.plugins import plugin_models

    _, descriptor, _ = service
    for settings, expected in (({"service": "shop.v1.Nope"}, "no service 'shop.v1.Nope'"),
                               ({"service": "shop.v1.Shop", "methods": {"GET /v1/watch": "Watch"}},
                                "only unary methods"),
                               ({"service": "shop.v1.Shop", "methods": {"GET /v1/x": "Missing"}}, "no method")):
        config = tmp_path / "gw.yaml"
        config.write_text('version: 1\nupstreams: {shop: {targets: ["http://127.0.0.1:9"], protocol: grpc}}\n'
                          'routes:\n  - name: r\n    match: {paths: [/]}\n    to: shop\n    plugins:\n'
                          f'      grpc_transcode: {json_dump({"descriptor": str(descriptor), **settings})}\n')
        with pytest.raises(ConfigError) as caught:
            load_config([str(config)], {}, plugin_models())
        assert expected in str(caught.value) and "routes[0].plugins.grpc_transcode" in str(caught.value)


def json_dump(value: Any) -> str:
    import json

    return json.dumps(value)
