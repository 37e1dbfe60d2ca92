#!/bin/bash
# add_sub over HTTP with curl: v2 JSON in, JSON out; then the same through the BLS model.
# usage: bash curl.sh [HOST:PORT]    (default localhost:8000)
set -euo pipefail
url=${1:-localhost:8000}
body='{"inputs": [
  {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]},
  {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}'
curl -sf "$url/v2/models/add_sub/infer" -d "$body"
echo
curl -sf "$url/v2/models/add_sub_bls/infer" -d "$body"
echo
