#!/usr/bin/env bash
# The peer of bench/llm_oneshot.py: llmcompressor in its own venv (it pins an older transformers than fisherfast uses).
# Usage: bash bench/make_llmcompressor_venv.sh [venv dir, default bench/.venv-llmcompressor]; about 3 minutes, 6 GB.
set -euo pipefail
dir=${1:-"$(dirname "$0")/.venv-llmcompressor"}
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import llmcompressor" 2>/dev/null; then echo "$dir: ready"; exit 0; fi
python3 -m venv "$dir"
"$dir/bin/pip" install --quiet --upgrade pip
"$dir/bin/pip" install --quiet llmcompressor datasets
"$dir/bin/python" -c "import llmcompressor, transformers; print('llmcompressor', llmcompressor.__version__, 'transformers', transformers.__version__)"
