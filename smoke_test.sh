#!/usr/bin/env bash
# Post one job to a /runsync URL and check that the reply decodes to a PNG of the asked size.
#
#   bash smoke_test.sh                      # the local API: handler_volume_optimized.py --rp_serve_api ...
#   bash smoke_test.sh http://127.0.0.1:8000/runsync
#   ENDPOINT_ID=abc123 RUNPOD_API_KEY=... bash smoke_test.sh    # a deployed endpoint
#
# WIDTH, HEIGHT and STEPS set the job (default 512x512, 4 steps). A local server still starting is waited for
# (up to 2 minutes). Exit 0 when the image checks out.
set -euo pipefail

width=${WIDTH:-512}
height=${HEIGHT:-512}
steps=${STEPS:-4}
headers=(-H "Content-Type: application/json")
if [[ $# -ge 1 ]]; then
  url=$1
elif [[ -n ${ENDPOINT_ID:-} ]]; then
  if [[ -z ${RUNPOD_API_KEY:-} ]]; then
    echo "smoke_test.sh: ENDPOINT_ID is set but RUNPOD_API_KEY is not" >&2
    exit 2
  fi
  url="https://api.runpod.ai/v2/${ENDPOINT_ID}/runsync"
  headers+=(-H "Authorization: Bearer ${RUNPOD_API_KEY}")
else
  url="http://127.0.0.1:8000/runsync"
fi
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "smoke_test.sh: $tool is required" >&2; exit 2; }
done

# A local API still loading the model refuses connections: wait for it to answer anything. (A remote endpoint is
# not waited for, and its POST is never retried: a retried POST could run the job twice.)
if [[ $url == http://127.0.0.1:* || $url == http://localhost:* ]]; then
  for _ in $(seq 120); do
    if curl --silent --output /dev/null --max-time 2 "$url"; then break; fi
    sleep 1
  done
fi
body=$(printf '{"input": {"prompt": "smoke test: a lighthouse at dusk", "width": %d, "height": %d, "num_inference_steps": %d, "seed": 1}}' \
  "$width" "$height" "$steps")
echo "POST $url (${width}x${height}, ${steps} steps)"
reply_file=$(mktemp)
trap 'rm -f "$reply_file"' EXIT
curl --silent --show-error --max-time 600 -X POST "${headers[@]}" --data "$body" --output "$reply_file" "$url"

python3 - "$width" "$height" "$reply_file" <<'PY'
import base64, json, struct, sys

width, height = int(sys.argv[1]), int(sys.argv[2])
text = open(sys.argv[3], encoding="utf-8", errors="replace").read()
try:
    reply = json.loads(text)
except json.JSONDecodeError:
    sys.exit(f"❌ reply is not JSON: {text[:300]}")
status = reply.get("status")
if status != "COMPLETED":
    sys.exit(f"❌ status {status}: {reply.get('error') or reply}")
output = reply["output"]
png = base64.b64decode(output["images"][0])
if png[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit("❌ the image is not a PNG")
got = struct.unpack(">II", png[16:24])
if got != (width, height):
    sys.exit(f"❌ image is {got[0]}x{got[1]}, asked {width}x{height}")
timings = output.get("timings", {})
print(f"✅ {got[0]}x{got[1]} PNG, {len(png):,} bytes, seed {output.get('seed')}, model {output.get('model')}, "
      f"timings {timings}")
PY
