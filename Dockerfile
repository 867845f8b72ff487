# llmgw in a FROM-scratch image: one static binary (x86_64, musl, BearSSL for
# TLS), a CA bundle and a config, nothing else.
#   docker build -t llmgw .
#   docker run --rm -p 8080:8080 llmgw
#   docker run --rm -p 8080:8080 -v $PWD/my.ini:/etc/llmgw/llmgw.ini:ro llmgw
# The final stage's tree is exactly what `make rootfs` assembles in
# build/rootfs; tests/rootfs.sh (suite `rootfs` of tests/run.sh) runs it
# with chroot, so the image's content is tested without a Docker engine.
# BearSSL is fetched by vendor/bearssl.sh through apt (checksum-pinned); a
# vendor/bearssl-src/ already present in the build context is reused.

FROM debian:12-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev make musl-tools binutils xz-utils ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make rootfs ROOTFS_LISTEN=0.0.0.0:8080 \
 && /src/build/rootfs/llmgw -t -c /src/build/rootfs/etc/llmgw/llmgw.ini

FROM scratch
COPY --from=build /src/build/rootfs/ /
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/llmgw"]
CMD ["-c", "/etc/llmgw/llmgw.ini"]
