# Apache Airflow 3 for the compose `pipeline` profile: the package with the `airflow` and `mysql` extras, installed
# with uv from uv.lock, and this repository's dags/ (DAG penguins_retrain). `airflow standalone` runs the API server
# (UI on 8080), scheduler, DAG processor and triggerer in one container with LocalExecutor; Airflow's own metadata
# database is SQLite in AIRFLOW_HOME (a volume), the penguin tables live in the MariaDB service.
#
# Runs as the BentoML image's user (`bentoml`, uid/gid 1034), like the jupyter image: the models the DAG saves into
# the shared store (owner-only folders) are readable by the API, and the DAG can add versions next to the API's.
# A task's calls to Airflow's execution API get 30 s, not 5: on a loaded machine the API server answers late, and a
# timed-out call fails the task.
FROM python:3.11-slim

ARG BENTO_USER_UID=1034
ARG BENTO_USER_GID=1034

ENV LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    BENTOML_HOME=/home/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    AIRFLOW_HOME=/home/bentoml/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/app/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False \
    AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=/home/bentoml/airflow/passwords.json \
    AIRFLOW__API__WORKERS=1 \
    AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT=30 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_PROGRESS=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH

RUN pip install --no-cache-dir "uv==0.13.9" \
 && groupadd -g "$BENTO_USER_GID" bentoml \
 && useradd -m -u "$BENTO_USER_UID" -g "$BENTO_USER_GID" bentoml \
 && mkdir -p /app /home/bentoml/models /home/bentoml/airflow \
 && chown bentoml:bentoml /app /home/bentoml/models /home/bentoml/airflow \
 && chmod 0750 /home/bentoml/models /home/bentoml/airflow

WORKDIR /app

# Third-party packages first (a layer that only changes with pyproject.toml or uv.lock), then the project.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --extra airflow --extra mysql --no-install-project --no-cache
COPY README.md ./
COPY penguins ./penguins
RUN uv sync --locked --no-dev --extra airflow --extra mysql --no-cache
COPY deploy/airflow-entrypoint.sh /usr/local/bin/penguins-airflow
COPY dags ./dags

USER bentoml
EXPOSE 8080
ENTRYPOINT ["penguins-airflow"]
CMD ["standalone"]
