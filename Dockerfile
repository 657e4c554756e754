# One image for every role: the command picks it, for example `cemsplit server` or
# `cemsplit health --address server:50051`. docker-compose.yml runs it as each service.
#
# Build arguments:
#   BASE_IMAGE  an image with Python 3.10 or newer and its venv module.
#               Default python:3.11-slim-bookworm; scripts/docker_e2e.sh builds a local
#               Debian bookworm image instead, because its machine reaches no image registry.
#   WHEELS      folder inside the build context. When it contains wheels, pip installs every
#               dependency from them alone (--no-index), so the build needs no network;
#               when it contains none, pip uses the package index. Default docker/wheels.
#   TORCH       cpu (default) pins PyTorch with constraints/cpu.txt (torch==2.13.0); pip picks
#               the CPU build when the wheel folder or an extra index offers it. any lets pip
#               choose PyTorch, which on Linux x86_64 is a CUDA build: use it for GPU hosts.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG WHEELS=docker/wheels
ARG TORCH=cpu
# An image made with `docker import` has no PATH of its own, so every stage sets one.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

COPY docker/pip_install.sh /usr/local/bin/cemsplit-pip-install
COPY ${WHEELS} /wheels
COPY constraints /src/constraints

# PyTorch is most of the install, so it gets its own layer, which source changes do not
# invalidate.
RUN python3 -m venv /opt/cemsplit && cemsplit-pip-install torch

COPY pyproject.toml README.md /src/
COPY proto /src/proto
COPY shared /src/shared
COPY client /src/client
COPY server /src/server
COPY attacker /src/attacker
COPY cli /src/cli
RUN cemsplit-pip-install /src && /opt/cemsplit/bin/cemsplit --help >/dev/null

FROM ${BASE_IMAGE}
ENV PATH=/opt/cemsplit/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

COPY --from=build /opt/cemsplit /opt/cemsplit
COPY configs /etc/cemsplit/

# The roles run as an unprivileged user. Named volumes mounted on these folders start with the
# image's owner, so the user can write runs, checkpoints and the traffic log.
RUN useradd --system --uid 10001 --user-group --home-dir /runs --no-create-home --shell /usr/sbin/nologin cemsplit \
    && mkdir -p /runs/server/checkpoints /runs/client/checkpoints /runs/attacker/traffic /certs \
    && chown -R cemsplit:cemsplit /runs /certs

USER cemsplit
WORKDIR /runs
EXPOSE 50051 50052
ENTRYPOINT ["cemsplit"]
CMD ["--help"]
