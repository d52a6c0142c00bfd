# The cache sidecar's image where no registry can be reached: redis-server from Debian 12's
# own package (Redis 7.0) on the base scripts/images.sh makes with debootstrap. The operator
# runs `redis-server` for an image whose repository name says redis (spec.cache.image).
ARG BASE=localhost/scalable-api-operator/debian-base:bookworm
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
USER 65532:65532
EXPOSE 6379
ENTRYPOINT ["redis-server"]
CMD ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
