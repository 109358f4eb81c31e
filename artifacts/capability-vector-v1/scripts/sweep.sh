#!/usr/bin/env bash
set -euo pipefail
for a in 2 4 6 8; do python scripts/steer.py --layer 22 --alpha "$a"; done
