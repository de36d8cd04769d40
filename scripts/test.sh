#!/usr/bin/env bash
# Runs the whole suite (unit and kernel tests) and ends with one plain line,
# `N passed, N failed, N skipped`, computed by test/summary-reporter.ts.
set -uo pipefail
cd "$(dirname "$0")/.."
npx vitest run --reporter=default --reporter=./test/summary-reporter.ts "$@"
