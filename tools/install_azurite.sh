#!/usr/bin/env bash
# Install Azurite (the Azure Storage emulator) once into tools/.azurite (git-ignored), from the npm
# registry, for the landing tests on Azure storage (tests/servers/azurite.py starts it).
# Exit 0 installed, 3 a prerequisite (npm) is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/tools/.azurite"
version=3.37.0
if [ ! -x "$dir/node_modules/.bin/azurite-blob" ] || ! grep -q "\"version\": \"$version\"" "$dir/node_modules/azurite/package.json"; then
  command -v npm > /dev/null || { echo "install_azurite: no npm (Debian: apt-get install npm)" >&2; exit 3; }
  mkdir -p "$dir"
  (cd "$dir" && npm install --no-audit --no-fund --silent "azurite@$version")
fi
echo "install_azurite: azurite $version in tools/.azurite"
