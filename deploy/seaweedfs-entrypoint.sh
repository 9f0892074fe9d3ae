#!/bin/sh
# The repository container (docker-compose.yml, profile s3): one `weed server` (master, volume, filer and the S3
# gateway) on /data, whose S3 port 8333 alone listens beyond the container; one identity, the stack's
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the same variables the clients use), written to a file only this user
# reads; the bucket PENGUINS_S3_BUCKET (default penguins) created once the server answers. Healthy (/tmp/ready) after.
set -eu
: "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID (scripts/deploy up generates one into .env for the s3 profile)}"
: "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY (scripts/deploy up generates one into .env)}"
bucket=${PENGUINS_S3_BUCKET:-penguins}
rm -f /tmp/ready
umask 077
python3 - >/tmp/s3.json <<'PY'
import json, os
identity = {
    "name": "penguins",
    "credentials": [{"accessKey": os.environ["AWS_ACCESS_KEY_ID"], "secretKey": os.environ["AWS_SECRET_ACCESS_KEY"]}],
    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
}
print(json.dumps({"identities": [identity]}))
PY
weed server -dir=/data -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3 -s3.ip.bind=0.0.0.0 -s3.port=8333 \
  -s3.config=/tmp/s3.json -s3.port.iceberg=0 -s3.port.lance=0 -master.volumeSizeLimitMB=256 -volume.max=0 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server"; exit 0' TERM INT
# The bucket: a folder under the filer's /buckets (through the filer's HTTP API, which listens in here only).
until python3 - "$bucket" <<'PY'
import sys, urllib.request, uuid
url = f"http://127.0.0.1:8888/buckets/{sys.argv[1]}/.created"
boundary = uuid.uuid4().hex
body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n\r\n--{boundary}--\r\n'
try:
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    urllib.request.urlopen(urllib.request.Request(url, body.encode(), headers, method="POST"), timeout=5)
    urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=5)
except Exception:
    sys.exit(1)
PY
do
  kill -0 "$server" 2>/dev/null || { echo "seaweedfs: weed server exited" >&2; exit 1; }
  sleep 1
done
echo "seaweedfs: S3 on :8333, bucket $bucket" >&2
touch /tmp/ready
wait "$server"
