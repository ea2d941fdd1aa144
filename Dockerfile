FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PARLEY_HOME=/data
WORKDIR /app

COPY pyproject.toml README.md ./
COPY services ./services
COPY agents ./agents
COPY db ./db
RUN pip install --no-cache-dir . && useradd --create-home --uid 10001 parley && mkdir -p /data \
    && chown parley /data

USER parley
EXPOSE 8080
# DATABASE_URL and REDIS_URL point at your servers; without DATABASE_URL an embedded PostgreSQL
# keeps its data in /data (mount a volume there).
CMD ["parley", "serve", "--host", "0.0.0.0", "--port", "8080"]
