# syntax=docker/dockerfile:1
#
# breakwater's container image.
#
#   docker build -t breakwater:0.1.0 .
#   docker run --rm -v "$PWD/config:/etc/breakwater:ro" breakwater:0.1.0 --config /etc/breakwater/compose.yaml
#
# Three stages: `deps` installs the production dependencies only, `build` compiles the TypeScript
# with the dev dependencies, and the runtime stage gets node_modules from the first and dist/ from
# the second: no compiler, no dev dependency, no source, no package manager.
#
# The base is Node.js 24 "Krypton", an LTS line (maintenance until April 2028), on Debian 13 slim:
# the line CI runs the test suite on. Node.js 26 became the active LTS on 2026-10-28; move
# NODE_VERSION to 26 once CI tests on it too. Pin the base by digest in your own build
# (node:24-trixie-slim@sha256:...) to make builds repeatable.
ARG NODE_VERSION=24

FROM node:${NODE_VERSION}-trixie-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# No install scripts: none of the production dependencies needs one.
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:${NODE_VERSION}-trixie-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

FROM node:${NODE_VERSION}-trixie-slim
LABEL org.opencontainers.image.title="breakwater" \
      org.opencontainers.image.description="A resilience sidecar reverse proxy" \
      org.opencontainers.image.licenses="Apache-2.0"
# No package manager at run time: npm, npx, corepack and yarn are removed (nothing in the image
# needs them, and they are the largest attack surface of the base image). The user breakwater
# (10001:10001) owns nothing in the image: the application files stay root's and read-only to it.
RUN rm -rf /usr/local/lib/node_modules /usr/local/bin/npm /usr/local/bin/npx \
        /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg /opt/yarn-* \
    && groupadd --gid 10001 breakwater \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin breakwater \
    && mkdir -p /var/lib/breakwater && chown 10001:10001 /var/lib/breakwater && chmod 0700 /var/lib/breakwater
# /var/lib/breakwater: the embedded store (data_dir) of deferred deliveries and saga logs, the one
# directory the process writes; mount a volume there to keep it across containers.
# NODE_OPTIONS: a young generation of 8 MiB semi-spaces instead of Node's 16 MiB: about 15 MiB less
# resident memory under load for no measurable GC cost (4 MiB and less cost more scavenging than they
# save); one V8 worker thread instead of four (a sidecar has about one core): 5-8 MiB less, CPU the
# same. See test/bench/README.md. Set NODE_OPTIONS in the pod to change it (that replaces this one).
ENV NODE_ENV=production \
    NODE_OPTIONS="--max-semi-space-size=8 --v8-pool-size=1" \
    BREAKWATER_CONFIG=/etc/breakwater/breakwater.yaml \
    BREAKWATER_DATA_DIR=/var/lib/breakwater
WORKDIR /app
COPY package.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# The default config (listener 127.0.0.1:15001 -> 127.0.0.1:8080, admin 127.0.0.1:9901): what a
# pod sidecar needs when the app listens on 8080. Mount a directory over /etc/breakwater (a
# Kubernetes ConfigMap, a compose volume) to replace it; hot reload follows changes there.
COPY config/breakwater.yaml /etc/breakwater/breakwater.yaml
USER 10001:10001
# 15001: the outbound listener the app calls; 9901: admin (health, metrics, config, state).
EXPOSE 15001 9901
# For docker and compose; Kubernetes ignores it and uses the probes of k8s/deployment.yaml.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["node", "-e", "fetch('http://127.0.0.1:9901/health/live').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# node is PID 1 and gets SIGTERM itself (exec form, no shell, no npm): breakwater drains and exits 0.
# It starts no child process, so there is nothing for an init to reap.
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD []
