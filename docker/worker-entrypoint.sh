#!/bin/sh
# A worker container: `mlflow run . -e search --env-manager local` with the given
# arguments, on a GPU of its own. Compose gives every replica of a scaled service
# the same device reservation (it cannot assign GPUs per replica), so the workers
# of a host share the GPUs out themselves: each takes the first GPU whose lock file,
# in the /cache volume they all mount, no other worker holds, and holds it while
# it runs. Workers beyond the number of GPUs see them all; TensorFlow puts them
# on the first.
set -eu
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
i=0
while [ "$i" -lt "$gpus" ]; do
  exec 9>"${LEUKOML_CACHE_DIR:-/cache}/gpu-$i.lock"
  if flock --nonblock 9; then
    export CUDA_VISIBLE_DEVICES="$i"
    echo "worker: GPU $i of $gpus" >&2
    break
  fi
  exec 9>&-
  i=$((i + 1))
done
exec mlflow run . -e search --env-manager local "$@"
