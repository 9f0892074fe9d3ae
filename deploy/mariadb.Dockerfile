# MariaDB for the compose `pipeline` profile: Debian bookworm's mariadb-server on the project's base image (no image
# is pulled). The penguins database and its user are created from the environment on the first start of an empty
# data volume (deploy/mariadb-entrypoint.sh); the server runs as Debian's `mysql` user, never as root.
FROM python:3.11-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mariadb-server \
 && rm -rf /var/lib/apt/lists/* \
 && rm -rf /var/lib/mysql \
 && mkdir -p /var/lib/mysql /run/mysqld \
 && chown mysql:mysql /var/lib/mysql /run/mysqld \
 && chmod 0750 /var/lib/mysql

COPY deploy/mariadb-entrypoint.sh /usr/local/bin/penguins-mariadb

USER mysql
EXPOSE 3306
VOLUME /var/lib/mysql
ENTRYPOINT ["penguins-mariadb"]
