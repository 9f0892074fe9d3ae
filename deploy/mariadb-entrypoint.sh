#!/bin/sh
# Entry point of the MariaDB image (deploy/mariadb.Dockerfile), running as the `mysql` user.
#
# On the first start of an empty data directory: initialise it, then create MARIADB_DATABASE and MARIADB_USER
# (password MARIADB_PASSWORD, from any host of the compose network) with all privileges on that database only.
# The server's administrators are root and mysql through the Unix socket only (no root password exists; nothing
# administrative is reachable over TCP). Later starts keep the data and ignore the three variables, like the
# official image. Then the server runs in the foreground on port 3306 of every interface of the container.
set -eu

: "${MARIADB_DATABASE:?set MARIADB_DATABASE}" "${MARIADB_USER:?set MARIADB_USER}"
: "${MARIADB_PASSWORD:?set MARIADB_PASSWORD (no default password)}"
case "$MARIADB_DATABASE$MARIADB_USER" in
  *[!A-Za-z0-9_]*) echo "MARIADB_DATABASE and MARIADB_USER take letters, digits and _ only" >&2; exit 2 ;;
esac

datadir=/var/lib/mysql
if [ ! -d "$datadir/mysql" ]; then
  echo "penguins-mariadb: initialising $datadir and creating database $MARIADB_DATABASE, user $MARIADB_USER"
  # (As a non-root user it warns that it cannot chown the PAM helper: harmless, PAM is not used.)
  mariadb-install-db --user=mysql --datadir="$datadir" --auth-root-authentication-method=socket \
    --skip-test-db >/tmp/install-db.log 2>&1 || { cat /tmp/install-db.log >&2; exit 1; }
  socket=/run/mysqld/init.sock
  mariadbd --datadir="$datadir" --skip-networking --socket="$socket" &
  pid=$!
  tries=0
  until mariadb-admin --socket="$socket" ping >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 60 ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "penguins-mariadb: the server did not start for initialisation" >&2
      exit 1
    fi
    sleep 1
  done
  # A SQL string literal: backslashes and single quotes escaped.
  password=$(printf '%s' "$MARIADB_PASSWORD" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g")
  # Anonymous accounts (if any) would shadow the user for connections from the container itself: dropped.
  mariadb --socket="$socket" <<SQL
DELETE FROM mysql.global_priv WHERE User = '';
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';
SQL
  mariadb-admin --socket="$socket" shutdown
  wait "$pid" || true
  echo "penguins-mariadb: initialised"
fi

exec mariadbd --datadir="$datadir" --bind-address=0.0.0.0 --port=3306 --skip-name-resolve "$@"
