#!/bin/sh
# docker-entrypoint.sh of the e2e cluster's PostgreSQL stand-in image (scripts/k8s-images.sh):
# the part of the official postgres image's contract the chart relies on. On an empty PGDATA it
# runs initdb with POSTGRES_USER as the superuser and POSTGRES_PASSWORD as its password, creates
# POSTGRES_DB, listens on every address and requires a password (scram-sha-256) from the
# network; then it runs its arguments (`postgres -c ...`), as the official image does.
set -eu

if [ "${1#-}" != "$1" ]; then
	set -- postgres "$@"
fi

if [ "$1" = postgres ]; then
	: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
	POSTGRES_USER=${POSTGRES_USER:-postgres}
	POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
	PGDATA=${PGDATA:-/var/lib/postgresql/data}
	mkdir -p "$PGDATA"
	chmod 700 "$PGDATA"
	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		pwfile=$(mktemp)
		printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
		initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
			--auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA"
		rm -f "$pwfile"
		printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
		printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
		if [ "$POSTGRES_DB" != postgres ]; then
			printf 'CREATE DATABASE "%s";\n' "$POSTGRES_DB" |
				postgres --single -D "$PGDATA" -j postgres >/dev/null
		fi
		echo "PostgreSQL init process complete; ready for start up."
	fi
fi

exec "$@"
