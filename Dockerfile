# tallygate: the dashboard built with Node, then the gateway on a slim Python.
#
#   docker build -t tallygate .
#   docker run -p 5611:5611 -v tallygate-data:/data tallygate
#
# Configuration: environment variables (TALLYGATE_<SECTION>__<KEY> and the
# classic DATABASE_URL, TOKEN_DAILY_BUDGET_USD, ...), and a TOML file mounted
# at /config/config.toml, read because /config is the working directory (or
# anywhere else, named by TALLYGATE_CONFIG). Without a database URL the
# gateway runs its embedded PostgreSQL in the /data volume.

FROM node:20-slim AS dashboard
WORKDIR /src/dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY dashboard/ ./
# vite writes the page to ../gateway/static/dashboard, i.e. /src/gateway/static/dashboard.
RUN npm run build

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY sql/ sql/
COPY --from=dashboard /src/gateway/static/dashboard gateway/static/dashboard
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The embedded PostgreSQL refuses to run as root: the gateway runs as its own user.
RUN groupadd --system --gid 10001 tallygate \
    && useradd --system --uid 10001 --gid tallygate --create-home tallygate \
    && mkdir -p /data /config \
    && chown tallygate:tallygate /data
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV TALLYGATE_DATABASE__DATA_DIR=/data \
    TALLYGATE_SERVER__HOST=0.0.0.0
USER tallygate
WORKDIR /config
VOLUME /data
EXPOSE 5611
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TALLYGATE_SERVER__PORT', '5611'), timeout=4)"]
ENTRYPOINT ["tallygate"]
CMD ["serve"]
