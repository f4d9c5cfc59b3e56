#!/usr/bin/env bash
# Render every ```mermaid block of README.md and docs/*.md with the Mermaid CLI; a parse error fails.
#
# Needs npm (the npm registry) and a Chromium from the distribution (Debian: apt-get install chromium):
# puppeteer's own browser download is skipped (PUPPETEER_SKIP_DOWNLOAD) and pointed at that Chromium.
# The CLI is installed once into tools/.mermaid (git-ignored). Exit 0 all parse, 1 one does not,
# 3 a prerequisite is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/tools/.mermaid"
version=11.17.0
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -z "$chromium" ]; then echo "check_mermaid: no chromium (Debian: apt-get install chromium)" >&2; exit 3; fi
if [ ! -x "$dir/node_modules/.bin/mmdc" ]; then
  command -v npm > /dev/null || { echo "check_mermaid: no npm" >&2; exit 3; }
  mkdir -p "$dir"
  (cd "$dir" && PUPPETEER_SKIP_DOWNLOAD=1 npm install --no-audit --no-fund --silent "@mermaid-js/mermaid-cli@$version")
fi
printf '{"executablePath": "%s", "args": ["--no-sandbox", "--headless=new"]}\n' "$chromium" > "$dir/puppeteer.json"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in "$root/README.md" "$root"/docs/*.md; do
  awk -v out="$tmp" -v base="$(basename "$f" .md)" '
    /^```mermaid/ { n++; file = sprintf("%s/%s-%d.mmd", out, base, n); inblock = 1; next }
    /^```/ { if (inblock) { inblock = 0; close(file) } next }
    inblock { print > file }' "$f"
done
status=0
count=0
for m in "$tmp"/*.mmd; do
  [ -e "$m" ] || continue
  count=$((count + 1))
  if ! "$dir/node_modules/.bin/mmdc" -q -p "$dir/puppeteer.json" -i "$m" -o "${m%.mmd}.svg" > "$m.log" 2>&1; then
    echo "check_mermaid: $(basename "$m" .mmd): $(grep -m1 -A1 'Error' "$m.log" | tr '\n' ' ')" >&2
    status=1
  fi
done
echo "check_mermaid: $count diagram(s), $([ $status = 0 ] && echo 'all parse' || echo 'FAILED')"
exit $status
