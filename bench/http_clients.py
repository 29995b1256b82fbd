"""Benchmark the executor's outbound HTTP client: httpx.AsyncClient vs aiohttp.ClientSession.

The executor POSTs JSON deliveries (about 1-20 KB) to workflow endpoints, many calls in flight,
over keep-alive connections, each call with its own timeout. This script measures the candidate
clients against the same local endpoint, side by side:

* a trivial raw-ASGI endpoint (or FastAPI with ``--server fastapi``) served by uvicorn in a
  subprocess on 127.0.0.1 (free port), answering a small JSON object; the subprocess is always
  stopped at the end (and exits by itself if this process dies);
* per client: sequential latency p50/p99 over N calls, throughput at concurrency 1, 16 and 64 with
  a 4 KB body, and the client process's CPU time per request (``time.process_time``);
* clients are interleaved (A, B, C, then rotated, for several rounds) so machine noise hits all;
* a check that a 0.2 s per-call timeout fires on an endpoint that answers after 3 s (never hang),
  and that the pool still works afterwards.

Clients: ``httpx`` as installed; ``httpx+sniffio``, the same with ``import sniffio`` made to
succeed (httpcore 1.0.9 imports it on every request, and anyio >= 4.11 no longer installs it; see
``sniffio_shim``); ``httpx2`` (the pydantic fork of httpx, same API) only if it is importable, e.g.
``pip install --target /tmp/httpx2site --no-deps httpx2 httpcore2 truststore`` and
``PYTHONPATH=/tmp/httpx2site``; and ``aiohttp``.

Run (from the repository root):

    .venv/bin/python bench/http_clients.py            # ~1.5 minutes
    .venv/bin/python bench/http_clients.py --quick    # ~20 seconds
    .venv/bin/python bench/http_clients.py --server fastapi --rounds 2 --duration 1

It prints a table (metric x client) with aiohttp/other ratios and exits non-zero if the server
does not start, any request fails, or a per-call timeout does not fire in time.
"""

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from datetime import UTC, datetime

CONCURRENCY = (1, 16, 64)
POOL_SIZE = max(CONCURRENCY)
BODY_BYTES = 4096
CALL_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------- the server (subprocess)


async def raw_asgi_app(scope, receive, send) -> None:
    """Reads the whole body, answers a small JSON object; ``/slow?ms=N`` answers after N ms."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        ms = int(scope["query_string"].decode().partition("=")[2] or "1000")
        await asyncio.sleep(ms / 1000)
    answer = b'{"ok":true,"received":%d,"step":{"result":"done"}}' % size
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": answer})


def fastapi_app():
    from fastapi import FastAPI, Request

    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        body = await request.body()
        return {"ok": True, "received": len(body), "step": {"result": "done"}}

    @app.post("/slow")
    async def slow(request: Request, ms: int = 1000) -> dict:
        await request.body()
        await asyncio.sleep(ms / 1000)
        return {"ok": True}

    return app


def serve(kind: str) -> None:
    """Subprocess entry point: bind a free port, print it, serve until terminated or orphaned."""
    import uvicorn

    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the socket's
    # proto is IPPROTO_TCP; with proto 0, Nagle + delayed ACK add ~40 ms to every keep-alive call.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app = raw_asgi_app if kind == "raw" else fastapi_app()
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=60)
    server = uvicorn.Server(config)
    parent = os.getppid()

    async def main() -> None:
        async def orphan_watch() -> None:
            while os.getppid() == parent:  # noqa: ASYNC110 - polls the parent pid; there is no event to await
                await asyncio.sleep(0.5)
            server.should_exit = True

        watch = asyncio.create_task(orphan_watch())
        print(f"PORT {sock.getsockname()[1]}", flush=True)
        await server.serve(sockets=[sock])
        watch.cancel()

    asyncio.run(main())


class ServerProcess:
    """The endpoint in its own process (its own core on a 2-core machine); always stopped on exit."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> "ServerProcess":
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", self.kind], stdout=subprocess.PIPE, text=True
        )
        try:
            line = self.proc.stdout.readline()  # the port line, or EOF if the child died
            if not line.startswith("PORT "):
                raise RuntimeError(f"server did not start: {line!r}")
            self.port = int(line.split()[1])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # wait until it accepts connections
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return self
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError("server did not accept connections within 20 s")
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


# --------------------------------------------------------------------------- the clients


class HttpxClient:
    """httpx.AsyncClient (or the API-compatible httpx2 fork) with a pool sized to the concurrency."""

    module_name = "httpx"

    def __init__(self) -> None:
        mod = importlib.import_module(self.module_name)
        self._mod = mod
        self.client = mod.AsyncClient(
            limits=mod.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE),
            timeout=mod.Timeout(CALL_TIMEOUT_S),
        )
        self.timeout_errors: tuple[type[BaseException], ...] = (mod.TimeoutException,)

    async def post(self, url: str, body: bytes, call_timeout: float = CALL_TIMEOUT_S) -> dict:
        r = await self.client.post(
            url, content=body, headers={"content-type": "application/json"}, timeout=self._mod.Timeout(call_timeout)
        )
        if r.status_code != 200:
            raise RuntimeError(f"status {r.status_code}")
        return r.json()

    async def close(self) -> None:
        await self.client.aclose()


class Httpx2Client(HttpxClient):
    module_name = "httpx2"


class AiohttpClient:
    """aiohttp.ClientSession with a TCPConnector limited to the concurrency."""

    def __init__(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL_SIZE, limit_per_host=POOL_SIZE, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S),
        )
        self.timeout_errors: tuple[type[BaseException], ...] = (TimeoutError,)

    async def post(self, url: str, body: bytes, call_timeout: float = CALL_TIMEOUT_S) -> dict:
        async with self.client.post(
            url,
            data=body,
            headers={"content-type": "application/json"},
            timeout=self._aiohttp.ClientTimeout(total=call_timeout),
        ) as r:
            if r.status != 200:
                raise RuntimeError(f"status {r.status}")
            return await r.json()

    async def close(self) -> None:
        await self.client.close()


SNIFFIO_INSTALLED = importlib.util.find_spec("sniffio") is not None  # looked up before any shim is set


def sniffio_shim() -> types.ModuleType:
    """Stand-in for the `sniffio` package (what it answers on asyncio), for the "httpx+sniffio" variant.

    httpcore 1.0.9 runs `import sniffio` inside `current_async_library()` (httpcore/_synchronization.py),
    twice per request. anyio >= 4.11 no longer depends on sniffio, so a fresh install lacks it, and
    Python does not cache a failed import: every call searches sys.path again (encode/httpcore
    discussion #1102, PR #1103). The variant shows httpx as it runs once sniffio is installed."""
    mod = types.ModuleType("sniffio")

    class AsyncLibraryNotFoundError(RuntimeError):
        pass

    def current_async_library() -> str:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise AsyncLibraryNotFoundError("unknown async library, or not in async context") from None
        return "asyncio"

    mod.AsyncLibraryNotFoundError = AsyncLibraryNotFoundError
    mod.current_async_library = current_async_library
    return mod


@contextlib.contextmanager
def sniffio_present(enabled: bool):
    """Make `import sniffio` succeed while enabled; a no-op when the real sniffio is installed."""
    if not enabled or SNIFFIO_INSTALLED:
        yield
        return
    sys.modules["sniffio"] = sniffio_shim()
    try:
        yield
    finally:
        del sys.modules["sniffio"]


@dataclass(frozen=True)
class Variant:
    name: str
    factory: type
    sniffio: bool = False


def variants(include_httpx2: bool) -> list[Variant]:
    out = [Variant("httpx", HttpxClient), Variant("httpx+sniffio", HttpxClient, sniffio=True)]
    if include_httpx2 and importlib.util.find_spec("httpx2") is not None:
        out.append(Variant("httpx2", Httpx2Client))
    out.append(Variant("aiohttp", AiohttpClient))
    return out


# --------------------------------------------------------------------------- measurements


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    rps: dict[int, list[float]] = field(default_factory=lambda: {c: [] for c in CONCURRENCY})
    cpu_us: dict[int, list[float]] = field(default_factory=lambda: {c: [] for c in CONCURRENCY})
    server_busy: dict[int, list[float]] = field(default_factory=lambda: {c: [] for c in CONCURRENCY})
    timeout_fired_s: list[float] = field(default_factory=list)
    errors: int = 0


def make_body(size: int) -> bytes:
    base = {"runId": "run_01J0000000000000000000000", "steps": [], "payload": ""}
    base["payload"] = "x" * max(size - len(json.dumps(base).encode()), 0)
    return json.dumps(base).encode()


async def sequential(client, url: str, body: bytes, n: int, result: Result) -> None:
    for _ in range(n):
        t0 = time.perf_counter()
        answer = await client.post(url, body)
        result.latencies_ms.append((time.perf_counter() - t0) * 1000)
        if answer.get("received") != len(body):
            raise RuntimeError(f"bad answer {answer!r}")


async def throughput(
    client, url: str, body: bytes, concurrency: int, duration: float, result: Result, server_pid: int
) -> None:
    done = 0
    errors = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            try:
                await client.post(url, body)
                done += 1
            except Exception:  # counted, and a failure of the run
                errors += 1

    await asyncio.gather(*(client.post(url, body) for _ in range(concurrency)))  # open the connections
    cpu0, t0, srv0 = time.process_time(), time.perf_counter(), process_cpu_s(server_pid)
    stop_at = t0 + duration
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu1, t1, srv1 = time.process_time(), time.perf_counter(), process_cpu_s(server_pid)
    result.errors += errors
    if done == 0:
        raise RuntimeError(f"no request completed at concurrency {concurrency}")
    result.rps[concurrency].append(done / (t1 - t0))
    result.cpu_us[concurrency].append((cpu1 - cpu0) / done * 1e6)
    result.server_busy[concurrency].append((srv1 - srv0) / (t1 - t0))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc), to see whether the server is the limit."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def timeout_check(client, name: str, base: str, result: Result) -> None:
    """A call to an endpoint that answers after 3 s, with a 0.2 s per-call timeout, must fail fast."""
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(client.post(f"{base}/slow?ms=3000", b"{}", call_timeout=0.2), timeout=2.5)
    except client.timeout_errors:
        result.timeout_fired_s.append(time.perf_counter() - t0)
        return
    except TimeoutError:
        raise RuntimeError(f"{name}: per-call timeout did not fire (outer guard hit)") from None
    raise RuntimeError(f"{name}: slow call returned instead of timing out")


async def run_round(variant: Variant, base: str, args, body: bytes, result: Result, server_pid: int) -> None:
    url = f"{base}/echo"
    with sniffio_present(variant.sniffio):
        client = variant.factory()
        try:
            for _ in range(20):  # warm up: connection, lazy imports, caches
                await client.post(url, body)
            await sequential(client, url, body, args.calls, result)
            for c in CONCURRENCY:
                await throughput(client, url, body, c, args.duration, result, server_pid)
            await timeout_check(client, variant.name, base, result)
            await client.post(url, body)  # the pool must still work after a timed-out call
        finally:
            await client.close()


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def report(results: dict[str, Result], args, wall: float) -> str:
    names = list(results)
    ref = "aiohttp"
    others = [n for n in names if n != ref]
    rows: list[tuple[str, dict[str, float], bool]] = []  # metric, value per client, lower is better
    rows.append(("seq latency p50 (ms)", {n: pct(results[n].latencies_ms, 50) for n in names}, True))
    rows.append(("seq latency p99 (ms)", {n: pct(results[n].latencies_ms, 99) for n in names}, True))
    rows += [
        (f"throughput c={c} (req/s)", {n: statistics.median(results[n].rps[c]) for n in names}, False)
        for c in CONCURRENCY
    ]
    rows += [
        (f"client CPU/req c={c} (us)", {n: statistics.median(results[n].cpu_us[c]) for n in names}, True)
        for c in CONCURRENCY
    ]
    rows += [
        (f"server CPU busy c={c} (cores)", {n: statistics.median(results[n].server_busy[c]) for n in names}, False)
        for c in CONCURRENCY
    ]
    rows.append(("0.2 s timeout fired after (s)", {n: max(results[n].timeout_fired_s) for n in names}, True))

    w = max(13, *(len(n) for n in names))
    head = f"| {'metric':<30} | " + " | ".join(f"{n:>{w}}" for n in names)
    head += " | " + " | ".join(f"{ref + '/' + o:>{len(ref) + 1 + len(o)}}" for o in others) + " |"
    lines = [
        f"# http_clients  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cores={os.cpu_count()}  "
        f"python {platform.python_version()}  server={args.server} (uvicorn, own process)",
        f"# body {BODY_BYTES} B JSON, pool {POOL_SIZE}, {args.rounds} interleaved rounds (order rotates), "
        f"{args.calls} sequential calls/round, {args.duration:g} s per throughput point; medians over rounds",
        "# ratio columns: aiohttp value / other value (latency, CPU: < 1 means aiohttp better; req/s: > 1)",
        "# server CPU busy: the endpoint process's CPU seconds per second; near 1.0 = the server is the limit",
        "",
        head,
        "|" + "|".join("-" * len(cell) for cell in head.split("|")[1:-1]) + "|",
    ]
    for metric, vals, _lower in rows:
        cells = " | ".join(f"{vals[n]:>{w}.2f}" for n in names)
        ratios = " | ".join(
            f"{(vals[ref] / vals[o] if vals[o] else float('nan')):>{len(ref) + 1 + len(o)}.2f}" for o in others
        )
        lines.append(f"| {metric:<30} | {cells} | {ratios} |")
    spread = "; ".join(f"{n}: " + "/".join(f"{v:.0f}" for v in results[n].rps[64]) for n in names)
    lines += ["", f"# per-round req/s at c=64: {spread}"]
    lines.append("# errors: " + ", ".join(f"{n} {results[n].errors}" for n in names))
    lines.append(f"# sniffio really installed: {SNIFFIO_INSTALLED}; versions: {versions()}; wall {wall:.1f} s")
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for p in ("httpx", "httpcore", "httpx2", "anyio", "aiohttp", "uvicorn", "h11"):
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{p} {version(p)}")
    return ", ".join(out)


async def bench(args) -> int:
    body = make_body(BODY_BYTES)
    chosen = variants(not args.no_httpx2)
    results = {v.name: Result() for v in chosen}
    t0 = time.perf_counter()
    with ServerProcess(args.server) as server:
        base = f"http://127.0.0.1:{server.port}"
        for r in range(args.rounds):
            shift = r % len(chosen)
            for v in chosen[shift:] + chosen[:shift]:  # rotate the order every round
                await run_round(v, base, args, body, results[v.name], server.proc.pid)
                print(f"  round {r + 1}/{args.rounds} {v.name:<14} done", file=sys.stderr, flush=True)
    print(report(results, args, time.perf_counter() - t0), flush=True)
    if any(r.errors for r in results.values()):
        print("FAIL: request errors", file=sys.stderr)
        return 1
    if any(max(r.timeout_fired_s) > 1.0 for r in results.values()):
        print("FAIL: a 0.2 s per-call timeout took more than 1 s to fire", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~20 s: 2 rounds, 100 calls, 0.5 s per point")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=300, help="sequential calls per round")
    p.add_argument("--duration", type=float, default=1.5, help="seconds per throughput point")
    p.add_argument("--server", choices=("raw", "fastapi"), default="raw")
    p.add_argument("--no-httpx2", action="store_true", help="skip httpx2 even if importable")
    p.add_argument("--serve", choices=("raw", "fastapi"), help=argparse.SUPPRESS)  # internal: the subprocess
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if args.quick:
        args.rounds, args.calls, args.duration = 2, 100, 0.5
    try:
        return asyncio.run(asyncio.wait_for(bench(args), timeout=600))
    except Exception as exc:  # any failure is a non-zero exit
        print(f"FAIL: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
