#!/bin/sh
# Entry point of the Airflow image (deploy/airflow.Dockerfile): log-in credentials from the environment, then
# `airflow <command>` (default `standalone`).
#
# Airflow's simple auth manager gets one user, AIRFLOW_ADMIN_USER (default admin) with the admin role, whose
# password is AIRFLOW_ADMIN_PASSWORD (required: there is no default and no generated password). It is written to
# the auth manager's password file (mode 0600, in AIRFLOW_HOME) at every start, so changing the variable and
# restarting the container changes the password.
#
# The DAG's database: PENGUINS_DATABASE_URL when set, else mysql+pymysql://PENGUINS_DB_USER:PENGUINS_DB_PASSWORD@
# PENGUINS_DB_HOST/PENGUINS_DB_NAME (user and password percent-encoded; the password is required).
set -eu

: "${AIRFLOW_ADMIN_PASSWORD:?set AIRFLOW_ADMIN_PASSWORD (the Airflow UI password; there is no default)}"
user=${AIRFLOW_ADMIN_USER:-admin}
case "$user" in
  "" | *[!A-Za-z0-9_.-]*) echo "AIRFLOW_ADMIN_USER takes letters, digits, '.', '_' and '-' only" >&2; exit 2 ;;
esac
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="$user:admin"

passwords=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/passwords.json}
mkdir -p "$AIRFLOW_HOME"
(
  umask 077
  python -c 'import json, os, sys; print(json.dumps({sys.argv[1]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}))' \
    "$user" >"$passwords"
)

if [ -z "${PENGUINS_DATABASE_URL:-}" ]; then
  : "${PENGUINS_DB_PASSWORD:?set PENGUINS_DB_PASSWORD (the MariaDB penguins user's password) or PENGUINS_DATABASE_URL}"
  PENGUINS_DATABASE_URL=$(python -c '
import os
from urllib.parse import quote

env = os.environ.get
user, password = quote(env("PENGUINS_DB_USER", "penguins"), safe=""), quote(env("PENGUINS_DB_PASSWORD"), safe="")
host, name = env("PENGUINS_DB_HOST", "mariadb"), env("PENGUINS_DB_NAME", "penguins")
print(f"mysql+pymysql://{user}:{password}@{host}/{name}")
')
  export PENGUINS_DATABASE_URL
fi

exec airflow "$@"
