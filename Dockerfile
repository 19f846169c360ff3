# RoomOS edge agent in a container: the same program and contract as the systemd unit
# (systemd/edge-agent.service), with the container runtime doing what systemd does there:
#   - an unprivileged user (uid 10001), never root;
#   - the store in the volume /var/lib/edge-agent ($STATE_DIRECTORY, as StateDirectory=);
#   - secrets as files in /run/secrets ($CREDENTIALS_DIRECTORY, as LoadCredential=), which is
#     where Compose and Swarm secrets are mounted: the config names them exactly as under
#     systemd (password_file = "device-password", secret_file = "webhook-secret");
#   - the config read-only at /etc/edge-agent/agent.toml (mount it);
#   - SIGTERM drains the outbox and exits 0 (give it 30 s: `docker stop -t 30`);
#   - HEALTHCHECK on the local API's /healthz.
# Nothing secret is baked in: no credentials, no config, no database (see .dockerignore).
#
#   docker build -t roomos-edge-agent .
#   docker run -d --name edge-agent \
#     -v /etc/edge-agent/agent.toml:/etc/edge-agent/agent.toml:ro \
#     -v edge-agent-state:/var/lib/edge-agent \
#     -v /etc/edge-agent/credentials:/run/secrets:ro \
#     roomos-edge-agent
#
# BASE: any Debian-based image with Python >= 3.11 (python3 -m venv) in it.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edge_agent ./edge_agent
COPY device_sim ./device_sim
COPY calendar_sim ./calendar_sim
RUN python3 -m venv /opt/edge-agent/.venv \
    && /opt/edge-agent/.venv/bin/pip install --no-cache-dir --no-compile . \
    && /opt/edge-agent/.venv/bin/edge-agent --version

FROM ${BASE}
LABEL org.opencontainers.image.title="roomos-edge-agent" \
      org.opencontainers.image.description="On-prem agent that buffers Cisco RoomOS device bookings and forwards them to the cloud" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/edge-agent/.venv /opt/edge-agent/.venv
# A fixed uid/gid (not a name lookup at run time), so a bind-mounted volume can be chown'ed
# to it: `chown -R 10001:10001 /srv/edge-agent-state`.
RUN groupadd --system --gid 10001 edge-agent \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/edge-agent \
    && install -d -m 0755 /etc/edge-agent
ENV PATH=/opt/edge-agent/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STATE_DIRECTORY=/var/lib/edge-agent \
    CREDENTIALS_DIRECTORY=/run/secrets \
    EDGE_AGENT_HEALTHZ_URL=http://127.0.0.1:9780/healthz
VOLUME ["/var/lib/edge-agent"]
USER 10001:10001
WORKDIR /var/lib/edge-agent
# The local API ([api] listen, default 127.0.0.1:9780). Publishing it needs listen =
# "0.0.0.0:9780" in the config, and then a firewall: its read routes have no authentication.
EXPOSE 9780
# /healthz answers while the event loop runs. If [api] listen moves, set EDGE_AGENT_HEALTHZ_URL.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['EDGE_AGENT_HEALTHZ_URL'], timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["edge-agent"]
CMD ["run", "-c", "/etc/edge-agent/agent.toml"]
