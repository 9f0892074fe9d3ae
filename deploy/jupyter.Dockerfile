# JupyterLab (and the one-shot trainer) on the penguins package, installed with uv from uv.lock.
#
# Runs as the same user as the BentoML image (`bentoml`, uid/gid 1034): BentoML saves model folders owner-only
# (0700), so the API can read what this container trains, and this container can add versions next to the API's
# files, without any world-writable directory. The model store is a volume at $BENTOML_HOME/models, the same path
# as in the API image.
FROM python:3.11-slim

ARG BENTO_USER_UID=1034
ARG BENTO_USER_GID=1034

ENV LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    BENTOML_HOME=/home/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    MPLCONFIGDIR=/home/bentoml/.config/matplotlib \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_PROGRESS=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH

RUN pip install --no-cache-dir "uv==0.13.9" \
 && groupadd -g "$BENTO_USER_GID" bentoml \
 && useradd -m -u "$BENTO_USER_UID" -g "$BENTO_USER_GID" bentoml \
 && mkdir -p /app /home/bentoml/models /home/bentoml/logs \
 && chown bentoml:bentoml /app /home/bentoml/models /home/bentoml/logs \
 && chmod 0750 /home/bentoml/models /home/bentoml/logs

WORKDIR /app

# Third-party packages first (a layer that only changes with pyproject.toml or uv.lock), then the project itself
# (README.md is the package's readme: copied with it, so that editing it does not reinstall every dependency).
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --group jupyter --no-install-project --no-cache
COPY README.md ./
COPY penguins ./penguins
COPY train.py service.py ./
RUN uv sync --locked --no-dev --group jupyter --no-cache
COPY --chown=bentoml:bentoml notebooks ./notebooks

USER bentoml
EXPOSE 8888
# The token comes from JUPYTER_TOKEN (docker-compose.yml refuses to start without one).
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--ServerApp.root_dir=/app"]
