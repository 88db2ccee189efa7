# The router as a container: gunicorn + gevent workers, non-root, config mounted, secrets from env.
#   docker build -t generative-api-router .
#   docker run -p 8082:8082 -e OPENAI_API_KEY=sk-... \
#     -v "$PWD/configs:/app/configs:ro" generative-api-router
# Keys never go into the image (.dockerignore drops configs/credentials.json): the mounted
# credentials.json names them as ${OPENAI_API_KEY}-style references, filled from the environment.
# docker-compose.yml runs it behind nginx. Built with podman and run from the image by
# tests/integration/test_docker_image.py; read by tests/integration/test_docker.py.

# The Python minor version the tests run on. For reproducible builds pin a digest:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8082 \
    # Prometheus multiprocess files: a tmpfs-friendly path the non-root user can write.
    PROMETHEUS_MULTIPROC_DIR=/tmp/router-metrics

WORKDIR /app
RUN groupadd --system router && useradd --system --gid router --home-dir /app --no-create-home router

# Dependencies first, so code changes do not reinstall them. Versions are pinned in the file.
COPY requirements.txt .
# Bytecode is compiled here, once: the non-root user could not write it at run time.
RUN pip install -r requirements.txt

COPY app ./app
COPY configs ./configs
COPY wsgi.py gunicorn.conf.py ./

USER router
EXPOSE 8082
# /health touches no vendor: it says the worker is serving, nothing more.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8082'), timeout=2)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
