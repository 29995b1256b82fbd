"""Checks the deployment files without a cluster or a Docker engine: ``deploy/check [ROOT]``.

Run by ``deploy/check`` (which installs the pinned tools first) with the tools' Python. ROOT is the
repository to check (default: the one this file is in), so a copy with a deliberate fault can be
checked the same way. Prints one PASS or FAIL line per check and exits 1 if any failed.

- the Helm chart (helm/stepstream) with each CI values file (helm/ci/*-values.yaml): ``helm lint
  --strict``; ``helm template`` validated by ``kubernetes-validate --strict`` (a WARN line, such as
  an unknown kind, fails too), and its Prometheus Operator objects (PodMonitor, PrometheusRule)
  against the CRDs' own schemas, vendored in deploy/crds/, with no unknown field allowed; the
  PrometheusRule and the dashboard ConfigMap carry files/alerts.yaml and files/grafana-dashboard.json
  unchanged; every ``stepstream`` command in its containers is a real subcommand;
- compose.yaml: the real docker-compose binary (``config -q``) and the compose-spec JSON schema;
  every ``stepstream`` command in it is a real subcommand; the example app it runs imports;
- the Dockerfile: parsed by BuildKit's parser and linted by hadolint; stages, base image against
  requires-python, ENTRYPOINT names a [project.scripts] console script, CMD is a real subcommand,
  COPY sources exist and are not excluded by .dockerignore, symlinks inside copied folders point at
  what the same stage copies, a non-root USER, the contract's ports.
  The image itself is not built here: these machines have no Docker engine.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
import jsonschema
import yaml
from packaging.specifiers import SpecifierSet
from referencing import Registry, Resource

KUBERNETES_VERSION = "1.33.0"
VALUES_FILES = ("default", "production")
IMAGE_TAG = "stepstream:local"
SERVICE_PORTS = {"8080", "8081"}  # the api; the health server of projector, scheduler and executor
CUSTOM_GROUPS = ("monitoring.coreos.com/",)  # kinds validated against deploy/crds/, not kubernetes-validate


class CheckFailed(Exception):
    """A check's finding: its lines are printed under the FAIL line."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = lines


@dataclass
class Checker:
    root: Path
    tools: Path
    venv: Path
    results: list[tuple[str, bool]] = field(default_factory=list)

    # -- running checks -----------------------------------------------------------------------

    def check(self, name: str, body: Callable[[], str | None]) -> None:
        try:
            note = body()
        except Exception as failure:  # a crash in one check is that check failing, not the run
            lines = failure.lines if isinstance(failure, CheckFailed) else (f"{type(failure).__name__}: {failure}",)
            self.results.append((name, False))
            print(f"FAIL  {name}")
            for line in lines:
                for part in line.rstrip().splitlines():
                    print(f"        {part}")
        else:
            self.results.append((name, True))
            print(f"PASS  {name}" + (f" ({note})" if note else ""))
        sys.stdout.flush()

    def run(
        self, argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                env=env,
                cwd=cwd or self.root,
                timeout=300,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise CheckFailed(f"expected to run {shlex.join(argv)}, but {error}") from error

    def tool(self, name: str) -> str:
        for candidate in (self.tools / "bin" / name, self.tools / "venv" / "bin" / name):
            if candidate.exists():
                return str(candidate)
        raise CheckFailed(
            f"expected the tool {name} in {self.tools} (deploy/tools.sh installs it), but it is not there"
        )

    # -- shared findings ----------------------------------------------------------------------

    def subcommand(self, words: list[str], where: str) -> None:
        """`stepstream WORDS --help` must exit 0: WORDS name a real (sub)command."""
        stepstream = self.venv / "bin" / "stepstream"
        if not stepstream.exists():
            raise CheckFailed(
                f"expected the project's console script at {stepstream} (make's .venv), but it is missing"
            )
        done = self.run([str(stepstream), *words, "--help"])
        if done.returncode != 0:
            message = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise CheckFailed(
                f"{where}: expected `stepstream {shlex.join(words)}` to be a command, "
                f"but `--help` exited {done.returncode}: {message}"
            )

    def imports(self, target: str, app_dir: Path, env: dict[str, str], where: str) -> None:
        """The ASGI app `module:attribute` imports from app_dir with the project's Python."""
        module, _, attribute = target.partition(":")
        code = (
            "import importlib, sys; sys.path.insert(0, sys.argv[1]); "
            "module = importlib.import_module(sys.argv[2]); getattr(module, sys.argv[3])"
        )
        python = self.venv / "bin" / "python"
        done = self.run(
            [str(python), "-c", code, str(app_dir), module, attribute or "app"],
            env={"PATH": os.environ.get("PATH", ""), **env},
            cwd=app_dir if app_dir.is_dir() else self.root,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise CheckFailed(f"{where}: expected the uvicorn target {target} to import from {app_dir}, but: {last}")

    # -- the Dockerfile -----------------------------------------------------------------------

    def dockerfile_commands(self) -> list[Any]:
        path = self.root / "Dockerfile"
        if not path.exists():
            raise CheckFailed(f"expected {path}, but it does not exist")
        try:
            return list(dockerfile.parse_file(str(path)))
        except dockerfile.GoParseError as error:
            raise CheckFailed(f"expected BuildKit's parser to read {path}, but: {error}") from error

    def final_stage(self) -> list[Any]:
        commands = self.dockerfile_commands()
        starts = [index for index, command in enumerate(commands) if command.cmd == "FROM"]
        if not starts:
            raise CheckFailed("expected at least one FROM in the Dockerfile, but found none")
        return commands[starts[-1] :]

    def stage_copies(self) -> list[list[Copy]]:
        """Per stage, what each COPY/ADD takes from the build context and where it lands in the image."""
        stages: list[list[Copy]] = []
        workdir = PurePosixPath("/")
        for command in self.dockerfile_commands():
            if command.cmd == "FROM":
                stages.append([])
                workdir = PurePosixPath("/")
            elif command.cmd == "WORKDIR":
                workdir = workdir / command.value[0]
            elif command.cmd in ("COPY", "ADD") and stages:
                if any(flag.startswith("--from") for flag in command.flags):
                    continue
                *sources, destination = command.value
                for source in sources:
                    path = self.root / source
                    # A directory's contents land in the destination; a file lands under it when the
                    # destination is a directory (ends in / or has several sources).
                    into = not path.is_dir() and (destination.endswith("/") or len(sources) > 1)
                    image = workdir / destination / (path.name if into else "")
                    stages[-1].append(Copy(path, PurePosixPath(os.path.normpath(image)), command.start_line))
        return stages

    def image_paths(self) -> dict[str, Path]:
        """Where each source copied from the build context lands in the final image: {image: context}."""
        stages = self.stage_copies()
        return {str(copy.image): copy.source for copy in (stages[-1] if stages else [])}


@dataclass(frozen=True)
class Copy:
    source: Path  # in the build context
    image: PurePosixPath  # where it lands
    line: int


def _in_image(path: Path, copies: list[Copy]) -> PurePosixPath | None:
    """Where a build-context path lands in a stage's image (the last COPY that covers it), if anywhere."""
    landed = None
    for copy in copies:
        if path == copy.source or copy.source in path.parents:
            landed = copy.image / path.relative_to(copy.source)
    return landed


# -- .dockerignore -------------------------------------------------------------------------------


def _dockerignore_rules(root: Path) -> list[tuple[re.Pattern[str], bool]]:
    """The rules of .dockerignore as (pattern, excludes), in order (Docker: the last match wins)."""
    path = root / ".dockerignore"
    rules: list[tuple[re.Pattern[str], bool]] = []
    if not path.exists():
        return rules
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        pattern = os.path.normpath(pattern) if pattern else pattern
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex += "(.*/)?"
                index += 3
            elif pattern.startswith("**", index):
                regex += ".*"
                index += 2
            elif pattern[index] == "*":
                regex += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                regex += "[^/]"
                index += 1
            else:
                regex += re.escape(pattern[index])
                index += 1
        rules.append((re.compile(f"^{regex}$"), excludes))
    return rules


def _excluded(relative: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Docker's rule: a path is excluded if the last pattern matching it, or a parent of it, excludes."""
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    excluded = False
    for pattern, excludes in rules:
        if any(pattern.match(prefix) for prefix in prefixes):
            excluded = excludes
    return excluded


def _files_under(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from (child for child in path.rglob("*") if child.is_file())
    else:
        yield path


# -- the checks ----------------------------------------------------------------------------------


def check_dockerfile(checker: Checker) -> None:
    root = checker.root
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]

    def parses() -> str:
        commands = checker.dockerfile_commands()
        stages = [command for command in commands if command.cmd == "FROM"]
        return f"{len(commands)} instructions, {len(stages)} stages"

    def hadolint() -> str:
        done = checker.run([checker.tool("hadolint"), "--no-color", str(root / "Dockerfile")])
        if done.returncode != 0:
            raise CheckFailed(*(done.stdout + done.stderr).strip().splitlines())
        return "no findings"

    def stages() -> str:
        commands = checker.dockerfile_commands()
        arguments = {}
        for command in commands:
            if command.cmd == "FROM":
                break
            if command.cmd == "ARG" and "=" in command.value[0]:
                name, _, value = command.value[0].partition("=")
                arguments[name] = value.strip("\"'")
        names: list[str] = []
        bases: list[str] = []
        for command in commands:
            if command.cmd == "FROM":
                image = re.sub(
                    r"\$\{?(\w+)\}?", lambda match: arguments.get(match.group(1), match.group(0)), command.value[0]
                )
                bases.append(image)
                if len(command.value) >= 3 and command.value[1].upper() == "AS":
                    names.append(command.value[2])
            elif command.cmd == "COPY":
                for flag in command.flags:
                    if flag.startswith("--from=") and flag.split("=", 1)[1] not in names:
                        raise CheckFailed(
                            f"line {command.start_line}: expected {flag} to name an earlier stage "
                            f"({', '.join(names) or 'none'}), but it does not"
                        )
        if len(bases) < 2:
            raise CheckFailed(
                f"expected a multi-stage build (a builder and a runtime stage), but found {len(bases)} stage"
            )
        final = bases[-1]
        found = re.match(r"^python:(\d+\.\d+)", final)
        if not found:
            raise CheckFailed(
                f"expected the runtime stage to be based on an official python image, but it is {final!r}"
            )
        if found.group(1) + ".0" not in SpecifierSet(project.get("requires-python", "")):
            raise CheckFailed(
                f"expected the base image's Python {found.group(1)} to satisfy requires-python "
                f"{project.get('requires-python')!r}, but it does not"
            )
        return f"stages {', '.join(names)}; runtime on {final}"

    def entrypoint() -> str:
        final = checker.final_stage()
        entrypoints = [command for command in final if command.cmd == "ENTRYPOINT"]
        if not entrypoints:
            raise CheckFailed("expected an ENTRYPOINT in the runtime stage, but there is none")
        command = entrypoints[-1]
        if not command.json:
            raise CheckFailed(
                f"line {command.start_line}: expected ENTRYPOINT in exec (JSON) form, so the service "
                "is PID 1 and receives SIGTERM, but it is in shell form"
            )
        scripts = project.get("scripts", {})
        if command.value[0] not in scripts:
            raise CheckFailed(
                f"line {command.start_line}: expected ENTRYPOINT {command.value[0]!r} to be a console "
                f"script of pyproject.toml [project.scripts] ({', '.join(scripts) or 'none'}), but it is not"
            )
        return f"{command.value[0]} = {scripts[command.value[0]]}"

    def cmd() -> str:
        final = checker.final_stage()
        commands = [command for command in final if command.cmd == "CMD"]
        if not commands:
            raise CheckFailed("expected a CMD (the default service), but there is none")
        command = commands[-1]
        if not command.json:
            raise CheckFailed(f"line {command.start_line}: expected CMD in exec (JSON) form, but it is in shell form")
        checker.subcommand(list(command.value), f"Dockerfile line {command.start_line}")
        return f"stepstream {shlex.join(command.value)}"

    def copy_sources() -> str:
        rules = _dockerignore_rules(root)
        checked = 0
        for command in checker.dockerfile_commands():
            if command.cmd not in ("COPY", "ADD") or any(flag.startswith("--from") for flag in command.flags):
                continue
            for source in command.value[:-1]:
                path = root / source
                if not path.exists():
                    raise CheckFailed(
                        f"line {command.start_line}: expected the COPY source {source!r} in the build "
                        f"context, but {path} does not exist"
                    )
                relative = str(path.relative_to(root))
                wanted = [file for file in _files_under(path) if not _excluded(str(file.relative_to(root)), rules)]
                if _excluded(relative, rules) and not wanted:
                    raise CheckFailed(
                        f"line {command.start_line}: expected the COPY source {source!r} to be in the "
                        "build context, but .dockerignore excludes it"
                    )
                checked += 1
        return f"{checked} sources, none excluded by .dockerignore"

    def symlinks() -> str:
        """A symlink copied into the image must point at what the same stage copies to that place."""
        rules = _dockerignore_rules(root)
        checked = 0
        for copies in checker.stage_copies():
            for copy in copies:
                if not copy.source.is_dir():
                    continue
                for folder, directories, files in os.walk(copy.source):
                    for name in directories + files:
                        link = Path(folder) / name
                        if not link.is_symlink() or _excluded(str(link.relative_to(root)), rules):
                            continue
                        checked += 1
                        target = os.readlink(link)
                        relative = link.relative_to(root)
                        if os.path.isabs(target):
                            raise CheckFailed(
                                f"line {copy.line}: expected {relative} to link inside the build context, "
                                f"but it links to the absolute path {target}"
                            )
                        wanted = Path(os.path.normpath(link.parent / target))
                        link_in_image = _in_image(link, copies)
                        assert link_in_image is not None
                        expected = PurePosixPath(os.path.normpath(link_in_image.parent / target))
                        if (
                            not wanted.exists()
                            or _excluded(str(wanted.relative_to(root)), rules)
                            or (_in_image(wanted, copies) != expected)
                        ):
                            raise CheckFailed(
                                f"line {copy.line}: {relative} is a symlink to {target}; in the image it points "
                                f"at {expected}, but no COPY of that stage puts "
                                f"{os.path.relpath(wanted, root)} there"
                            )
        return f"symlinks checked: {checked}, each resolves to a copied path"

    def user() -> str:
        users = [command for command in checker.final_stage() if command.cmd == "USER"]
        if not users:
            raise CheckFailed("expected a USER in the runtime stage (the services run as non-root), but there is none")
        name = users[-1].value[0].split(":")[0]
        if name in ("root", "0"):
            raise CheckFailed(f"line {users[-1].start_line}: expected a non-root USER, but it is {name!r}")
        return f"USER {users[-1].value[0]}"

    def ports() -> str:
        exposed = {
            port.split("/")[0] for command in checker.final_stage() if command.cmd == "EXPOSE" for port in command.value
        }
        missing = SERVICE_PORTS - exposed
        if missing:
            raise CheckFailed(
                f"expected EXPOSE of the api and health ports {sorted(SERVICE_PORTS)}, "
                f"but {sorted(missing)} are missing"
            )
        return f"EXPOSE {' '.join(sorted(exposed))}"

    checker.check("Dockerfile: parses (BuildKit's parser)", parses)
    checker.check("Dockerfile: hadolint", hadolint)
    checker.check("Dockerfile: multi-stage, runtime base satisfies requires-python", stages)
    checker.check("Dockerfile: ENTRYPOINT is a console script of pyproject.toml", entrypoint)
    checker.check("Dockerfile: CMD is a stepstream subcommand", cmd)
    checker.check("Dockerfile: COPY sources exist in the build context", copy_sources)
    checker.check("Dockerfile: symlinks in copied folders resolve inside the image", symlinks)
    checker.check("Dockerfile: runs as a non-root user", user)
    checker.check("Dockerfile: exposes the api and health ports", ports)


def check_compose(checker: Checker) -> None:
    compose = checker.root / "compose.yaml"

    def config() -> str:
        if not compose.exists():
            raise CheckFailed(f"expected {compose}, but it does not exist")
        done = checker.run([checker.tool("docker-compose"), "-f", str(compose), "config", "-q"])
        if done.returncode != 0:
            raise CheckFailed(*(done.stderr + done.stdout).strip().splitlines())
        return "docker-compose v2.40.3"

    def schema() -> str:
        done = checker.run([checker.tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose)])
        if done.returncode != 0:
            raise CheckFailed(*(done.stdout + done.stderr).strip().splitlines())
        return "vendor.compose-spec"

    def commands() -> str:
        done = checker.run([checker.tool("docker-compose"), "-f", str(compose), "config", "--format", "json"])
        if done.returncode != 0:
            raise CheckFailed("expected docker-compose to render compose.yaml, but it failed (see above)")
        services = json.loads(done.stdout)["services"]
        image_paths = checker.image_paths()
        seen = []
        for name, service in sorted(services.items()):
            if service.get("image") != IMAGE_TAG and "build" not in service:
                continue
            entrypoint = service.get("entrypoint")
            if entrypoint:
                if "uvicorn" in entrypoint:
                    _uvicorn(
                        checker, entrypoint, image_paths, service.get("environment") or {}, f"compose service {name}"
                    )
                    seen.append(f"{name}: uvicorn")
                continue
            words = service.get("command") or _dockerfile_cmd(checker)
            checker.subcommand(list(words), f"compose service {name}")
            seen.append(f"{name}: {shlex.join(words)}")
        if not seen:
            raise CheckFailed(f"expected services running the {IMAGE_TAG} image, but found none")
        return "; ".join(seen)

    checker.check("compose.yaml: docker-compose config", config)
    checker.check("compose.yaml: compose-spec schema", schema)
    checker.check("compose.yaml: commands are stepstream subcommands, the example app imports", commands)


def _dockerfile_cmd(checker: Checker) -> list[str]:
    commands = [command for command in checker.final_stage() if command.cmd == "CMD"]
    return list(commands[-1].value) if commands else []


def _uvicorn(checker: Checker, argv: list[str], image_paths: dict[str, Path], env: dict[str, str], where: str) -> None:
    """An `uvicorn module:app --app-dir DIR` command: DIR is copied into the image and the target imports."""
    words = argv[argv.index("uvicorn") + 1 :]
    targets = [word for word in words if re.fullmatch(r"[\w.]+:[\w.]+", word)]
    if not targets:
        raise CheckFailed(f"{where}: expected a module:attribute target in {shlex.join(argv)}, but found none")
    app_dir = words[words.index("--app-dir") + 1] if "--app-dir" in words[:-1] else "/app"
    source = image_paths.get(app_dir.rstrip("/"))
    if source is None:
        raise CheckFailed(
            f"{where}: expected --app-dir {app_dir} to be copied into the image, but no COPY puts "
            f"anything there (copied: {', '.join(sorted(image_paths)) or 'nothing'})"
        )
    checker.imports(targets[0], source, {key: str(value) for key, value in env.items() if value is not None}, where)


def _pod_specs(document: Any) -> Iterator[dict[str, Any]]:
    if isinstance(document, dict):
        if isinstance(document.get("containers"), list):
            yield document
        for value in document.values():
            yield from _pod_specs(value)
    elif isinstance(document, list):
        for value in document:
            yield from _pod_specs(value)


# -- custom resources ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomSchema:
    """A custom kind's schema, as JSON Schema, from a vendored CRD."""

    schema: dict[str, Any]
    source: str  # such as "prometheus-operator 0.93.0"
    unchecked_rules: int  # CEL rules (x-kubernetes-validations) in it: only an API server evaluates them


# The ObjectMeta of Kubernetes' own schemas (those of the pinned kubernetes-validate), for the
# metadata of custom resources, which a CRD's schema leaves as a bare object.
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def _kubernetes_definitions() -> dict[str, Any]:
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions: dict[str, Any] = json.loads(
        (folder / f"v{KUBERNETES_VERSION}-local-strict" / "_definitions.json").read_text()
    )
    return definitions


def _strict(node: Any) -> tuple[Any, int]:
    """An openAPIV3Schema as the API server applies it with strict field validation: an object with
    declared properties takes no others (unless x-kubernetes-preserve-unknown-fields), nullable allows
    null. Returns the schema and how many CEL rules it holds, which JSON Schema cannot evaluate."""
    if isinstance(node, list):
        converted = [_strict(item) for item in node]
        return [schema for schema, _ in converted], sum(count for _, count in converted)
    if not isinstance(node, dict):
        return node, 0
    rules = len(node.get("x-kubernetes-validations", []))
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            converted = {name: _strict(child) for name, child in value.items()}
            result[key] = {name: schema for name, (schema, _) in converted.items()}
            rules += sum(count for _, count in converted.values())
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf") and isinstance(
            value, dict | list
        ):
            result[key], count = _strict(value)
            rules += count
        elif key == "pattern" and "(?i)" in value and not value.startswith("(?i)"):
            # Go's regexp takes a flag anywhere; Python's re only at the start.
            result[key] = "(?i)" + value.replace("(?i)", "")
        else:
            result[key] = value
    if node.get("nullable") and isinstance(node.get("type"), str):
        result["type"] = [node["type"], "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result, rules


def custom_schemas(root: Path) -> dict[tuple[str, str], CustomSchema]:
    """The schemas of the CRDs in deploy/crds/, by (apiVersion, kind), for each served version."""
    schemas: dict[tuple[str, str], CustomSchema] = {}
    for path in sorted((root / "deploy" / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        if crd.get("kind") != "CustomResourceDefinition":
            raise CheckFailed(f"expected {path.name} to be a CustomResourceDefinition, but it is a {crd.get('kind')}")
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        version = crd["metadata"].get("annotations", {}).get("operator.prometheus.io/version", "unknown")
        for served in crd["spec"]["versions"]:
            if not served.get("served"):
                continue
            api_version = f"{group}/{served['name']}"
            schema, rules = _strict(served["schema"]["openAPIV3Schema"])
            schema["properties"]["apiVersion"] = {"const": api_version}
            schema["properties"]["kind"] = {"const": kind}
            schema["properties"]["metadata"] = {"$ref": OBJECT_META}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
            schemas[(api_version, kind)] = CustomSchema(schema, f"prometheus-operator {version}", rules)
    return schemas


def validate_custom(documents: list[dict[str, Any]], schemas: dict[tuple[str, str], CustomSchema]) -> list[str]:
    """Each custom resource against its CRD's schema: the problems found, one line each."""
    registry: Registry[Any] = Resource.from_contents(_kubernetes_definitions()) @ Registry()
    problems = []
    for document in documents:
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
        custom = schemas.get((str(document.get("apiVersion")), str(document.get("kind"))))
        if custom is None:
            known = ", ".join(f"{kind} ({api_version})" for api_version, kind in sorted(schemas)) or "none"
            problems.append(
                f"{name}: expected a kind with a schema in deploy/crds/ ({known}), "
                f"but got {document.get('kind')} ({document.get('apiVersion')})"
            )
            continue
        validator = jsonschema.Draft202012Validator(custom.schema, registry=registry)
        for error in sorted(validator.iter_errors(document), key=lambda error: list(error.absolute_path)):
            where = ".".join(str(part) for part in error.absolute_path) or "(the object)"
            problems.append(f"{name}: expected it to match the {custom.source} schema, but at {where}: {error.message}")
    return problems


def check_chart(checker: Checker) -> None:
    chart = checker.root / "helm" / "stepstream"
    rendered: dict[str, str] = {}

    for values_name in VALUES_FILES:
        values = checker.root / "helm" / "ci" / f"{values_name}-values.yaml"

        def present(values: Path = values) -> None:
            if not (chart / "Chart.yaml").exists():
                raise CheckFailed(f"expected the chart at {chart}, but it has no Chart.yaml")
            if not values.exists():
                raise CheckFailed(f"expected the CI values file {values}, but it does not exist")

        def lint(values: Path = values) -> str:
            present(values)
            done = checker.run([checker.tool("helm"), "lint", "--strict", str(chart), "-f", str(values)])
            if done.returncode != 0:
                findings = [
                    line
                    for line in (done.stdout + done.stderr).splitlines()
                    if "[ERROR]" in line or "[WARNING]" in line or line.startswith("Error")
                ]
                raise CheckFailed(*(findings or (done.stdout + done.stderr).strip().splitlines()))
            return "no findings"

        def template(values: Path = values, values_name: str = values_name) -> str:
            present(values)
            done = checker.run(
                [
                    checker.tool("helm"),
                    "template",
                    "stepstream",
                    str(chart),
                    "-f",
                    str(values),
                    "--namespace",
                    "stepstream",
                    "--kube-version",
                    KUBERNETES_VERSION,
                ]
            )
            if done.returncode != 0:
                raise CheckFailed(*done.stderr.strip().splitlines())
            rendered[values_name] = done.stdout
            documents = [document for document in yaml.safe_load_all(done.stdout) if document]
            custom = [document for document in documents if str(document.get("apiVersion")).startswith(CUSTOM_GROUPS)]
            builtin = [document for document in documents if document not in custom]
            validated = checker.run(
                [checker.tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, "-"],
                stdin=yaml.safe_dump_all(builtin, sort_keys=False) if custom else done.stdout,
            )
            output = (validated.stdout + validated.stderr).splitlines()
            bad = [line for line in output if "WARN" in line or "ERROR" in line]
            if validated.returncode != 0 or bad:
                raise CheckFailed(*(bad or output or [f"kubernetes-validate exited {validated.returncode}"]))
            passed = [line for line in output if "passed for resource" in line]
            if len(passed) != len(builtin):
                raise CheckFailed(
                    f"expected kubernetes-validate to pass each of the {len(builtin)} rendered "
                    f"resources, but it passed {len(passed)}:",
                    *output,
                )
            kinds = sorted({str(document.get("kind")) for document in builtin})
            note = f"{len(passed)} resources valid for Kubernetes {KUBERNETES_VERSION}: {', '.join(kinds)}"
            if custom:
                schemas = custom_schemas(checker.root)
                problems = validate_custom(custom, schemas)
                if problems:
                    raise CheckFailed(*problems)
                used = [schemas[key] for key in {(str(doc["apiVersion"]), str(doc["kind"])) for doc in custom}]
                sources = sorted({schema.source for schema in used})
                unchecked = sum(schema.unchecked_rules for schema in used)
                custom_kinds = ", ".join(sorted({str(document["kind"]) for document in custom}))
                note += (
                    f"; {len(custom)} valid against the {', '.join(sources)} CRDs in deploy/crds/: {custom_kinds}"
                    + (f" ({unchecked} CEL rules left to the API server)" if unchecked else "")
                )
            return note

        checker.check(f"helm lint --strict with helm/ci/{values_name}-values.yaml", lint)
        checker.check(f"helm template with helm/ci/{values_name}-values.yaml | kubernetes-validate --strict", template)

    def monitoring() -> str:
        """The PrometheusRule and the dashboard ConfigMap carry the chart's files as they are: one copy."""
        if not rendered:
            raise CheckFailed("expected rendered manifests, but no values file rendered (see above)")
        rules = yaml.safe_load((chart / "files" / "alerts.yaml").read_text())
        dashboard = json.loads((chart / "files" / "grafana-dashboard.json").read_text())
        seen = set()
        for values_name, manifests in rendered.items():
            for document in yaml.safe_load_all(manifests):
                if not document:
                    continue
                where = f"{document.get('kind')}/{document.get('metadata', {}).get('name')} ({values_name} values)"
                if document.get("kind") == "PrometheusRule":
                    if document["spec"]["groups"] != rules["groups"]:
                        raise CheckFailed(f"{where}: expected the groups of files/alerts.yaml, but they differ")
                    seen.add("PrometheusRule")
                elif document.get("kind") == "ConfigMap" and (document.get("metadata", {}).get("labels") or {}).get(
                    "grafana_dashboard"
                ):
                    held = [json.loads(value) for value in (document.get("data") or {}).values()]
                    if held != [dashboard]:
                        raise CheckFailed(
                            f"{where}: expected files/grafana-dashboard.json, but it holds something else"
                        )
                    seen.add("dashboard ConfigMap")
        missing = {"PrometheusRule", "dashboard ConfigMap"} - seen
        if missing:
            raise CheckFailed(
                "expected a CI values file to turn the monitoring objects on, "
                f"but none rendered {', '.join(sorted(missing))}"
            )
        return "the PrometheusRule holds files/alerts.yaml, the ConfigMap files/grafana-dashboard.json"

    checker.check("helm chart: monitoring objects carry the chart's rules and dashboard files", monitoring)

    def commands() -> str:
        if not rendered:
            raise CheckFailed("expected rendered manifests, but no values file rendered (see above)")
        image_paths = checker.image_paths()
        seen: set[str] = set()
        for values_name, manifests in rendered.items():
            for document in yaml.safe_load_all(manifests):
                if not document:
                    continue
                where = f"{document.get('kind')}/{document.get('metadata', {}).get('name')} ({values_name} values)"
                for spec in _pod_specs(document):
                    for container in spec.get("containers", []) + spec.get("initContainers", []):
                        command = container.get("command") or []
                        args = [str(arg) for arg in container.get("args") or []]
                        image = str(container.get("image", ""))
                        if command and "uvicorn" in command + args:
                            env = {
                                item["name"]: str(item.get("value", ""))
                                for item in container.get("env", [])
                                if "name" in item
                            }
                            env.setdefault("STEPSTREAM_SIGNING_KEYS", "key-for-the-import-check")
                            _uvicorn(checker, [*command, *args], image_paths, env, where)
                            seen.add("uvicorn")
                        elif command and Path(str(command[0])).name == "stepstream":
                            checker.subcommand([*command[1:], *args], where)
                            seen.add(shlex.join([*command[1:], *args]))
                        elif not command and "stepstream" in image and args:
                            checker.subcommand(args, where)
                            seen.add(shlex.join(args))
        if not seen:
            raise CheckFailed("expected containers running the stepstream image with args, but found none")
        return "; ".join(sorted(seen))

    checker.check("helm chart: container commands are stepstream subcommands", commands)


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent.parent
    root = Path(argv[0]).resolve() if argv else here
    venv_candidates = [Path(os.environ["STEPSTREAM_CHECK_VENV"])] if os.environ.get("STEPSTREAM_CHECK_VENV") else []
    venv_candidates += [root / ".venv", here / ".venv"]
    venv = next(
        (candidate for candidate in venv_candidates if (candidate / "bin" / "stepstream").exists()), venv_candidates[0]
    )
    tools = Path(os.environ["STEPSTREAM_TOOLS_DIR"])
    print(f"check-deploy: checking {root}")
    print("  (no Docker engine and no cluster here: the image is not built and nothing is deployed; the Dockerfile")
    print("  is parsed and linted, its commands, COPY sources and example app are checked against the source,")
    print("  compose.yaml is checked by docker-compose and its schema, the chart by helm and the Kubernetes schemas)")
    print(f"  commands are tried with {venv / 'bin' / 'stepstream'}")
    checker = Checker(root=root, tools=tools, venv=venv)
    check_dockerfile(checker)
    check_compose(checker)
    check_chart(checker)
    failed = [name for name, ok in checker.results if not ok]
    if failed:
        print(f"check-deploy: {len(failed)} of {len(checker.results)} checks FAILED: {'; '.join(failed)}")
        return 1
    print(f"check-deploy: all {len(checker.results)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
