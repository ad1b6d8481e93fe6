#!/bin/sh
# Runs once, when the PostgreSQL data volume is first initialised: the image creates
# POSTGRES_DB (the Optuna study storage); this adds MLflow's backend store.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"$MLFLOW_DB\""
