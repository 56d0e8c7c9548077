#!/usr/bin/env bash
# Type-checks the rbee package with mypy. The editable install maps rbee.control, rbee.dataplane
# and rbee.tui onto control/, dataplane/ and tui/ through an import hook that static tools cannot
# follow, so this builds the same layout as symlinks under build/typecheck (ignored by git) and
# checks the package there under its real name. Settings: [tool.mypy] in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

MYPY="${MYPY:-.venv/bin/mypy}"
tree=build/typecheck
mkdir -p "$tree/rbee"
: > "$tree/rbee/__init__.py"
for part in control dataplane tui; do
    ln -sfn "../../../$part" "$tree/rbee/$part"
done

exec "$MYPY" "$@" -p rbee
