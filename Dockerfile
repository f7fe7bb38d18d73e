# syntax=docker/dockerfile:1
# pitr as a container: the sidecar (`pitr run`), plus the PostgreSQL server
# binaries that restores and test restores need, for one major version.
#
#   docker build --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t pitr:pg17 .
#   docker build --build-arg PG_MAJOR=18 --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t pitr:pg18 .
#   docker run -v ./pitr.toml:/etc/pitr/pitr.toml:ro -e PITR_REPOSITORY_RECIPIENTS=age1... pitr:pg17
#
# Stages: `build` (the binary, profile `dist`: LTO, stripped), `postgres`
# (PGDG's server packages, pruned to what restores run), `runtime` (Debian
# slim, the two copied in, an entrypoint that runs pitr as uid 10001).
# `.ci/dockerfile-check` checks this file's structure, runs the build
# stage's commands on the host, and applies the postgres stage's file list
# to every major whose binaries are on the host and runs the result; see
# README "Container image" for what was and was not checked.

# PG_MAJOR: any major pitr supports, 14 to 18 (PGDG has each for bookworm).
# A restore starts the server of the backup's major, so the image must carry
# the major of the database it backs up: build one image per major you run.
# The default is 17: a current major (supported upstream until November
# 2029), widely deployed, and the first with incremental base backups from
# the server (`summarize_wal`), which pitr takes; 14 to 16 have none. 18,
# the newest, has them too but has been out a year less (September 2025).
ARG PG_MAJOR=17
ARG DEBIAN_RELEASE=bookworm

# --- build -------------------------------------------------------------------
FROM rust:1-slim-bookworm AS build
ARG GIT_COMMIT=unknown
# rusqlite builds SQLite from C; ring needs a C compiler too.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
# LIBSQLITE3_FLAGS: the SQLite watcher needs the sqlite_dbpage table.
COPY .cargo ./.cargo
COPY src ./src
COPY bench ./bench
COPY tests ./tests
# BUILD: the same command .ci/dockerfile-check runs.
RUN GIT_COMMIT="$GIT_COMMIT" cargo build --profile dist --locked --bin pitr \
 && cp target/dist/pitr /usr/local/bin/pitr \
 && /usr/local/bin/pitr --version

# --- postgres ----------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS postgres
ARG PG_MAJOR
# PGDG carries every supported major for every Debian release; its setup
# script (from postgresql-common) adds the repository and its signing key.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates postgresql-common \
 && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
 && apt-get install -y --no-install-recommends "postgresql-${PG_MAJOR}" \
 && rm -rf /var/lib/apt/lists/*
# Only what restores run: the server, initdb/pg_ctl, the checkers, the
# tools the runbook uses, and the dump tools `[[command]]` snapshot sources
# run (docs/SNAPSHOTS.md). No JIT (llvmjit and its bitcode are most of the
# size and recovery never uses them), no pgxs.
RUN set -eu; \
    src="/usr/lib/postgresql/${PG_MAJOR}"; out="/out${src}"; \
    mkdir -p "$out/bin" "/out/usr/share/postgresql"; \
    for b in postgres initdb pg_ctl pg_amcheck pg_checksums pg_controldata \
             pg_waldump pg_verifybackup pg_isready psql \
             pg_dump pg_dumpall pg_restore; do \
      cp -a "$src/bin/$b" "$out/bin/"; \
    done; \
    cp -a "$src/lib" "$out/lib"; \
    rm -rf "$out/lib/bitcode" "$out/lib/llvmjit"* "$out/lib/pgxs"; \
    cp -a "/usr/share/postgresql/${PG_MAJOR}" "/out/usr/share/postgresql/"; \
    rm -rf "/out/usr/share/postgresql/${PG_MAJOR}/man"; \
    mkdir -p /out/pgdg-keyring /out/pgdg-sources /out/certs; \
    cp -L /etc/ssl/certs/ca-certificates.crt /out/certs/; \
    cp -a /usr/share/postgresql-common/pgdg/apt.postgresql.org.* /out/pgdg-keyring/; \
    cp -a /etc/apt/sources.list.d/pgdg.* /out/pgdg-sources/

# --- runtime -----------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG PG_MAJOR
ARG DEBIAN_RELEASE
# The shared libraries the PostgreSQL binaries link (ldd), without the
# packages that pull LLVM and Perl; libpq from PGDG, matching the binaries.
# The CA bundle is copied rather than installed: the ca-certificates package
# pulls the openssl binary, which nothing here runs. glibc's iconv modules
# (8 MB of Debian slim) go but for the Unicode and ISO 8859 ones: nothing
# here calls iconv for other charsets (PostgreSQL converts encodings with its
# own modules and hands libxml2 UTF-8), and the image must stay under 150 MB.
COPY --from=postgres /out/pgdg-keyring/ /usr/share/postgresql-common/pgdg/
COPY --from=postgres /out/pgdg-sources/ /etc/apt/sources.list.d/
# Before apt runs: it reaches PGDG over https with this bundle.
COPY --from=postgres /out/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      tzdata libpq5 libicu72 libxml2 libssl3 libldap-2.5-0 \
      libgssapi-krb5-2 liblz4-1 libzstd1 libsystemd0 libreadline8 libpam0g \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && find /usr/lib -path '*/gconv/*.so' ! -name 'UTF-*' ! -name 'UNICODE.so' ! -name 'ISO8859-*' -delete \
 && iconvconfig
COPY --from=postgres /out/usr/ /usr/
COPY --from=build /usr/local/bin/pitr /usr/local/bin/pitr
COPY deploy/config/postgres.toml /etc/pitr/pitr.toml
COPY deploy/config/postgres-storacha.toml deploy/config/sqlite.toml /etc/pitr/
COPY deploy/image/pitr-entrypoint /usr/local/bin/pitr-entrypoint
# pitr runs as 10001:10001, numerically (no name to resolve, and what
# Kubernetes' runAsUser / fsGroup and `docker run --user` name): PostgreSQL
# refuses root, and a restore then runs the server as this user. The image
# itself starts as root, for one step only: Akash mounts persistent volumes
# owned by root, with no fsGroup and no way to pick the user, so the
# entrypoint gives the state directory to 10001:10001 and then drops to it
# for good with setpriv (util-linux, in Debian slim) before pitr starts.
# Started as 10001 (Kubernetes runAsUser + fsGroup: 10001, `--user
# 10001:10001`) it is never root at all. One-off commands in a running
# container go through it too: `docker exec <c> pitr-entrypoint list -c ...`.
RUN groupadd --system --gid 10001 pitr \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/pitr --shell /usr/sbin/nologin pitr \
 && mkdir -p /var/lib/pitr /var/lib/pitr/restore \
 && chown -R 10001:10001 /var/lib/pitr \
 && chmod 0700 /var/lib/pitr
ENV PATH="/usr/lib/postgresql/${PG_MAJOR}/bin:${PATH}" \
    PITR_LOG_FORMAT=json
WORKDIR /var/lib/pitr
VOLUME ["/var/lib/pitr"]
EXPOSE 9187
# `pitr probe` instead of curl: 0 on a 2xx from /health, 1 otherwise.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["pitr", "probe", "http://127.0.0.1:9187/health"]
ENTRYPOINT ["pitr-entrypoint"]
CMD ["run", "-c", "/etc/pitr/pitr.toml"]
