#!/usr/bin/env bash
# Stand-ins for the images the chart names by default, which cannot be pulled here (no
# registry is reachable): built from what this machine has, under the official names, so
# that the chart's default values run unchanged on the e2e cluster.
#
#   scripts/k8s-images.sh postgres   docker.io/library/postgres:15 from Debian's PostgreSQL 15
#   scripts/k8s-images.sh pulsar     docker.io/apachepulsar/pulsar:4.0.8 from the Apache Pulsar
#                                    distribution infra.sh fetches and Debian's OpenJDK 17
#
# Each prints the path of an OCI archive (`scripts/k8s-cluster.sh import` loads it into every
# node), built once and cached outside the repository under a key of its inputs.
#
# What they keep of the official images' contracts, and so what the e2e proves of the chart:
#   postgres  ENTRYPOINT docker-entrypoint.sh, CMD postgres; POSTGRES_USER/PASSWORD/DB and
#             PGDATA on first start (scripts/e2e/postgres-entrypoint.sh), password auth from
#             the network, port 5432, pg_isready on PATH, /var/run/postgresql for the socket,
#             runs as any uid with a writable PGDATA (the chart: 999)
#   pulsar    WORKDIR /pulsar, bin/pulsar standalone, data under /pulsar/data, ports 6650 and
#             8080, runs as uid 10000 in group 0 with /pulsar group-writable
# What only the official images can prove: their own entrypoints' other paths (initdb
# scripts, POSTGRES_INITDB_ARGS, the image's locale), their JVM and OS, their size and pull.
#
# Environment knobs:
#   AEROPARTNERS_CACHE  cache root (default: ~/.cache/aeropartners)
set -euo pipefail
shopt -s inherit_errexit

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
CACHE_DIR=${AEROPARTNERS_CACHE:-${HOME}/.cache/aeropartners}
IMAGE_CACHE=${CACHE_DIR}/images
PG_MAJOR=15
PG_HOME=/usr/lib/postgresql/${PG_MAJOR}
PULSAR_VERSION=4.0.8
PULSAR_DIST=${CACHE_DIR}/apache-pulsar-${PULSAR_VERSION}
JAVA_HOME_DIR=/usr/lib/jvm/java-17-openjdk-amd64

log() { printf '[k8s-images] %s\n' "$*" >&2; }

# Build trees removed however the script ends (a rootfs holds hundreds of MB).
TEMPORARY=()
cleanup() { ((${#TEMPORARY[@]} == 0)) || rm -rf "${TEMPORARY[@]}"; }
trap cleanup EXIT
# temporary_dir NAME: a directory under the cache in $TEMPORARY_DIR, removed on exit (not
# printed: a command substitution's subshell could not add it to TEMPORARY).
temporary_dir() {
	TEMPORARY_DIR=$(mktemp -d "${IMAGE_CACHE}/.$1.XXXXXX")
	TEMPORARY+=("${TEMPORARY_DIR}")
}
die() {
	log "error: $*"
	exit 1
}

# copy_libraries ROOTFS FILE...: the shared libraries each FILE links (ldd), and the loader.
copy_libraries() {
	local rootfs=$1 lib
	shift
	# ldd of several files names each first ("file:"); only its "=> /path" and loader lines.
	for lib in $(ldd "$@" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' | sort -u); do
		[[ -e "${rootfs}${lib}" ]] && continue
		mkdir -p "${rootfs}$(dirname "${lib}")"
		cp -L "${lib}" "${rootfs}${lib}"
	done
}

# system_libraries ROOTFS PACKAGE...: every shared library Debian's PACKAGEs install (for what
# loads libraries ldd cannot see: the JVM's JNI libraries, unpacked at run time).
system_libraries() {
	local rootfs=$1 lib
	shift
	for lib in $(dpkg -L "$@" | grep -E '\.so(\.[0-9]+)*$'); do
		[[ -f "${lib}" ]] || continue
		mkdir -p "${rootfs}$(dirname "${lib}")"
		cp -L "${lib}" "${rootfs}${lib}"
	done
}

# busybox ROOTFS: a static busybox and its applets (sh, grep, mkdir, ...) in /bin, /usr/bin/env.
busybox() {
	local rootfs=$1
	mkdir -p "${rootfs}/bin" "${rootfs}/usr/bin" "${rootfs}/tmp"
	chmod 1777 "${rootfs}/tmp"
	cp /bin/busybox "${rootfs}/bin/busybox"
	local applet
	for applet in $(/bin/busybox --list); do
		[[ -e "${rootfs}/bin/${applet}" ]] || ln -s busybox "${rootfs}/bin/${applet}"
	done
	ln -sf /bin/busybox "${rootfs}/usr/bin/env"
}

# archive NAME REF ROOTFS KEY BUILDAH_CONFIG...: the OCI archive of ROOTFS as REF, cached as
# NAME-KEY.tar; prints its path.
archive() {
	local name=$1 ref=$2 rootfs=$3 key=$4 storage container archive
	shift 4
	archive=${IMAGE_CACHE}/${name}-${key}.tar
	temporary_dir buildah
	storage=${TEMPORARY_DIR}
	local buildah=(buildah --root "${storage}/root" --runroot "${storage}/run" --storage-driver vfs)
	container=$("${buildah[@]}" from scratch)
	"${buildah[@]}" copy --quiet "${container}" "${rootfs}" / >/dev/null
	"${buildah[@]}" config "$@" "${container}"
	"${buildah[@]}" commit --quiet --rm "${container}" "${ref}" >/dev/null
	"${buildah[@]}" push --quiet "${ref}" "oci-archive:${archive}.tmp:${ref}"
	"${buildah[@]}" rmi --force "${ref}" >/dev/null
	# vfs layers belong to root and may be read-only: buildah removes them best.
	"${buildah[@]}" rm --all >/dev/null 2>&1 || true
	# Only the newest build of each image is kept.
	rm -f "${IMAGE_CACHE}/${name}"-*.tar
	mv -f "${archive}.tmp" "${archive}"
	printf '%s\n' "${archive}"
}

# cached NAME KEY: the archive's path when it was built before.
cached() {
	local archive=${IMAGE_CACHE}/$1-$2.tar
	[[ -s "${archive}" ]] || return 1
	printf '%s\n' "${archive}"
}

key_of() { cat "$@" | sha256sum | cut -c1-16; }

build_postgres() {
	[[ -x "${PG_HOME}/bin/postgres" ]] || "${SCRIPT_DIR}/infra.sh" deps >&2
	local key rootfs
	key=$(printf '%s\n' "$(dpkg-query -W -f '${Version}' "postgresql-${PG_MAJOR}")" |
		key_of - "${BASH_SOURCE[0]}" "${SCRIPT_DIR}/e2e/postgres-entrypoint.sh")
	cached postgres "${key}" && return 0
	log "building the PostgreSQL ${PG_MAJOR} stand-in image (once; cached in ${IMAGE_CACHE})"
	temporary_dir postgres-rootfs
	rootfs=${TEMPORARY_DIR}
	busybox "${rootfs}"
	mkdir -p "${rootfs}${PG_HOME}" "${rootfs}/usr/share/postgresql" "${rootfs}/usr/share/zoneinfo" \
		"${rootfs}/usr/local/bin" "${rootfs}/etc" "${rootfs}/var/run/postgresql" \
		"${rootfs}/var/lib/postgresql/data"
	cp -a "${PG_HOME}/bin" "${PG_HOME}/lib" "${rootfs}${PG_HOME}/"
	cp -a "/usr/share/postgresql/${PG_MAJOR}" "${rootfs}/usr/share/postgresql/"
	cp -a /usr/share/zoneinfo/. "${rootfs}/usr/share/zoneinfo/"
	# The C.UTF-8 locale initdb gives the database (UTF-8 character classes, not ASCII's).
	mkdir -p "${rootfs}/usr/lib/locale"
	cp -a /usr/lib/locale/C.utf8 "${rootfs}/usr/lib/locale/"
	copy_libraries "${rootfs}" "${PG_HOME}"/bin/* "${PG_HOME}"/lib/*.so
	cp "${SCRIPT_DIR}/e2e/postgres-entrypoint.sh" "${rootfs}/usr/local/bin/docker-entrypoint.sh"
	printf 'root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh\n' \
		>"${rootfs}/etc/passwd"
	printf 'root:x:0:\npostgres:x:999:\n' >"${rootfs}/etc/group"
	chown -R 999:999 "${rootfs}/var/run/postgresql" "${rootfs}/var/lib/postgresql"
	chmod 3777 "${rootfs}/var/run/postgresql"
	archive postgres docker.io/library/postgres:${PG_MAJOR} "${rootfs}" "${key}" \
		--entrypoint '["docker-entrypoint.sh"]' --cmd '["postgres"]' --user 999:999 \
		--env "PATH=${PG_HOME}/bin:/usr/local/bin:/bin:/usr/bin" --env PGDATA=/var/lib/postgresql/data \
		--env LANG=C.UTF-8 --port 5432
}

build_pulsar() {
	[[ -f "${PULSAR_DIST}/.unpacked" ]] || "${SCRIPT_DIR}/infra.sh" deps >&2
	[[ -x "${JAVA_HOME_DIR}/bin/java" ]] || die "no JDK 17 in ${JAVA_HOME_DIR} (infra.sh deps installs it)"
	local key rootfs
	key=$(printf '%s %s\n' "${PULSAR_VERSION}" "$("${JAVA_HOME_DIR}/bin/java" -version 2>&1 | head -1)" |
		key_of - "${BASH_SOURCE[0]}")
	cached pulsar "${key}" && return 0
	log "building the Apache Pulsar ${PULSAR_VERSION} stand-in image (once; cached in ${IMAGE_CACHE})"
	temporary_dir pulsar-rootfs
	rootfs=${TEMPORARY_DIR}
	busybox "${rootfs}"
	mkdir -p "${rootfs}/pulsar" "${rootfs}/usr/lib/jvm" "${rootfs}/etc"
	cp -a "${PULSAR_DIST}/bin" "${PULSAR_DIST}/conf" "${PULSAR_DIST}/lib" "${PULSAR_DIST}/instances" \
		"${rootfs}/pulsar/"
	mkdir -p "${rootfs}/pulsar/data" "${rootfs}/pulsar/logs"
	# Debian's JDK, with the configuration its symlinks point at.
	cp -a "${JAVA_HOME_DIR}" "${rootfs}/usr/lib/jvm/"
	cp -a /etc/java-17-openjdk "${rootfs}/etc/"
	cp -L /bin/bash "${rootfs}/bin/bash"
	local libraries
	mapfile -t libraries < <(find "${JAVA_HOME_DIR}/lib" -name '*.so')
	copy_libraries "${rootfs}" /bin/bash "${JAVA_HOME_DIR}/bin/java" "${libraries[@]}"
	# RocksDB's and Netty's native libraries, unpacked from jars at run time, link these.
	system_libraries "${rootfs}" libc6 libstdc++6 libgcc-s1 zlib1g
	printf 'root:x:0:0:root:/root:/bin/sh\npulsar:x:10000:0:Pulsar:/pulsar:/bin/sh\n' >"${rootfs}/etc/passwd"
	printf 'root:x:0:\n' >"${rootfs}/etc/group"
	# As the official image: uid 10000 in group 0, which may write everything under /pulsar.
	chmod -R g+w "${rootfs}/pulsar"
	archive pulsar "docker.io/apachepulsar/pulsar:${PULSAR_VERSION}" "${rootfs}" "${key}" \
		--workingdir /pulsar --user 10000:0 --env "JAVA_HOME=${JAVA_HOME_DIR}" \
		--env "PATH=${JAVA_HOME_DIR}/bin:/pulsar/bin:/bin:/usr/bin" --port 6650 --port 8080
}

mkdir -p "${IMAGE_CACHE}"
command -v buildah >/dev/null || "${SCRIPT_DIR}/infra.sh" test-deps >&2
exec 9>"${IMAGE_CACHE}/.lock"
flock 9
case "${1:-}" in
postgres) build_postgres ;;
pulsar) build_pulsar ;;
*) die "usage: $0 postgres | pulsar" ;;
esac
