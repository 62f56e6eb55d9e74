"""Build hook. With FRONTGATE_NATIVE=1 the modules every request runs through are compiled to C with
mypyc, from the same type-checked source: about a third fewer instructions per request (BENCHMARKS.md).

mypyc type-checks the whole program, so it needs frontgate's dependencies and mypy installed: build it in
the environment that has them, after a plain install:

    pip install -e '.[test]'
    FRONTGATE_NATIVE=1 pip install --no-build-isolation --no-deps -e .

Without FRONTGATE_NATIVE the package is pure Python: it behaves the same, only slower. After editing a
compiled module, build again, or the previous build keeps running.
"""

from __future__ import annotations

import os

from setuptools import setup

HOT_PATH = [
    "frontgate/server/connection.py",
    "frontgate/server/exchange.py",
    "frontgate/upstream/connection.py",
    "frontgate/protocol/http1.py",
    "frontgate/pipeline/context.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("FRONTGATE_NATIVE") != "1":
        return []
    from mypyc.build import mypycify

    return list(mypycify(HOT_PATH, opt_level="3", group_name="frontgate_native"))


setup(ext_modules=ext_modules())
