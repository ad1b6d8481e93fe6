# The MLflow tracking server of docker-compose.yml: MLflow and the PostgreSQL driver
# its backend store needs (the official MLflow image has no driver). Same MLflow
# version as the workers' client.
FROM python:3.11-slim-bookworm

ARG MLFLOW_VERSION=3.17.2
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg2-binary>=2.9" \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /mlartifacts && chown mlflow /mlartifacts
USER mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
