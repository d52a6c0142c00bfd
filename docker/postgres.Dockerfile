# PostgreSQL for examples/postgres-dev.yaml where no registry can be reached: Debian 12's own
# postgresql-15 on the base scripts/images.sh makes with debootstrap, with the part of the
# official image's contract that example uses (POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB, PGDATA, arguments passed to postgres, uid 999, pg_isready on PATH).
ARG BASE=localhost/scalable-api-operator/debian-base:bookworm
FROM ${BASE}
# uid and gid 999 like the official image, so the example's runAsUser fits; made before the
# package so it reuses them.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
 && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/sh postgres \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER 999:999
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
