"""A real PostgreSQL server for the tests of the query store on PostgreSQL (decision 0010).

``STEPSTREAM_TEST_POSTGRES`` names one to use (a ``postgresql://`` url whose user may create schemas);
otherwise the session starts its own from Debian's package (``make test`` installs it when missing):
``initdb`` into a temporary folder, the server on a free port of 127.0.0.1, without fsync (a test
database lives as long as the session). As root, the server runs as the ``postgres`` user, as the
package's does, since PostgreSQL refuses to run as root.

Each test gets a schema of its own (:func:`fresh_schema`), named in the url's ``search_path``, so
tests never see each other's tables and no database has to be created per test.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from tests.stack import free_port


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(path.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "Expected PostgreSQL's server programs (initdb, pg_ctl) for the query-store tests on PostgreSQL, but found "
        "none: `make test` installs Debian's postgresql package; or set STEPSTREAM_TEST_POSTGRES to a server's url"
    )


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The url of a PostgreSQL server for this session (see the module)."""
    external = os.environ.get("STEPSTREAM_TEST_POSTGRES")
    if external:
        yield external
        return
    binaries = _binaries()
    home = Path(tempfile.mkdtemp(prefix="stepstream-postgres-"))
    home.chmod(0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = home / "data", free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, cwd=home)

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "stepstream", "--auth=trust", "-E", "UTF8")
        options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(home / "server.log"), "-o", options, "-w", "start")
        try:
            yield f"postgresql://stepstream@127.0.0.1:{port}/postgres"
        finally:
            run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def fresh_schema(server: str) -> Iterator[str]:
    """A url of ``server`` whose tables are in a new, empty schema; the schema is dropped after."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in server else "?"
    try:
        yield f"{server}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
