#!/usr/bin/env bash
set -euo pipefail
python -m terminus_runner --model abliterated --tasks all --parallel 6
