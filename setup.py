"""Build hook: the modules every request runs through are compiled to C with mypyc, from the same
type-checked source: about a third fewer instructions per request (BENCHMARKS.md).

mypyc type-checks the whole program, so it needs mypy and frontgate's dependencies in the build environment.
`./scripts/build-native` (which `./scripts/test` runs) builds it in place, in `.venv`:

    pip install -e '.[test]'                                  # pure Python first: the dependencies
    pip install --no-build-isolation --no-deps -e .           # then compiled, where mypy now is

Where mypyc is missing (pip's isolated build, which has only setuptools) or the C compiler fails, the
package is pure Python: it behaves the same, only slower. FRONTGATE_NATIVE=0 asks for pure Python.
After editing a compiled module, build again (the tests refuse to run against a stale build).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HOT_PATH = [
    "frontgate/server/connection.py",
    "frontgate/server/exchange.py",
    "frontgate/upstream/connection.py",
    "frontgate/protocol/http1.py",
    "frontgate/pipeline/context.py",
    # the accounting at the end of each request: access log, metrics, trace context
    "frontgate/observability/batch.py",
    "frontgate/observability/access_log.py",
    "frontgate/observability/metrics.py",
    "frontgate/observability/tracing.py",
    "frontgate/observability/otlp.py",  # (the export thread's span encoding: off the loop, not off the core)
    # the pool and the target picking every request goes through
    "frontgate/upstream/pool.py",
    "frontgate/upstream/cluster.py",
    # the rate limit: the plugin and its store round trip
    "frontgate/store/resp.py",
    "frontgate/store/redis_store.py",
    "frontgate/store/memory.py",
    "frontgate/plugins/rate_limit_keys.py",
    "frontgate/plugins/rate_limit.py",
]


def _note(message: str) -> None:
    print(f"frontgate: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Compile the extensions if the machine can; if it cannot, leave none behind (half a build would not
    import) and install pure Python instead."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # a compiler missing or failing: CCompilerError, DistutilsExecError, ...
            _note(f"compiling the hot path failed ({error}); installing pure Python")
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            _remove_earlier_build()


def _remove_earlier_build(keep: tuple[str, ...] = ()) -> None:
    """An earlier compiled build in place (editable) must not be imported instead of the source. Without
    `keep` (a pure-Python build), remove all of it. With `keep` (a compiled build, which replaces those
    modules when it builds in place), remove only the modules no longer listed; the rest, and the shared
    library they load, stay whole for a build that is not in place (`pip wheel .`)."""
    root = Path(__file__).resolve().parent
    if not keep:
        for library in root.glob("frontgate_native__mypyc.*.so"):
            library.unlink()
    for library in root.glob("frontgate/**/*.cpython-*.so"):
        source = library.parent / (library.name.split(".")[0] + ".py")
        if source.relative_to(root).as_posix() not in keep:
            library.unlink()


def ext_modules() -> list[object]:
    if os.environ.get("FRONTGATE_NATIVE", "1") == "0":
        _remove_earlier_build()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _note("mypyc is not in the build environment; installing pure Python (see ./scripts/build-native)")
        _remove_earlier_build()
        return []
    _remove_earlier_build(keep=tuple(HOT_PATH))  # a module no longer compiled must not stay compiled
    try:
        return list(mypycify(HOT_PATH, opt_level="3", group_name="frontgate_native"))
    except (Exception, SystemExit) as error:  # type errors exit; an internal mypyc error raises
        _note(f"mypyc could not compile the hot path ({error!r}); installing pure Python")
        _remove_earlier_build()
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
