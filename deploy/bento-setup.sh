#!/bin/sh
# Runs as root while `bentoml containerize` builds the API image (bentofile.yaml: docker.setup_script).
# The mount points of the model-store and log volumes exist in the image, owned by the image's user (uid/gid 1034):
# an empty named volume takes the ownership of the directory it is first mounted on, so the volumes end up owned by
# 1034 whichever container (api, trainer, jupyter; all uid 1034) mounts them first. No world-writable directories.
set -eu
mkdir -p /home/bentoml/models /home/bentoml/logs
chown 1034:1034 /home/bentoml/models /home/bentoml/logs
chmod 0750 /home/bentoml/models /home/bentoml/logs
