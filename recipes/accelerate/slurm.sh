#!/usr/bin/env bash
# Multi-node training under SLURM: one accelerate launcher per node, each starting one process per GPU.
#   sbatch --nodes=2 --gpus-per-node=8 recipes/accelerate/slurm.sh recipes/qwen2.5/7b.yaml [key=value ...]
# ACCELERATE_CONFIG (default recipes/accelerate/multi_node.yaml; zero3.yaml and fsdp2.yaml work too) and
# GPUS_PER_NODE (default 8) may be set in the environment.
#SBATCH --job-name=finetune
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --output=logs/%x-%j.out
set -euo pipefail
RECIPE=${1:?usage: sbatch slurm.sh RECIPE [key=value ...]}
shift
CONFIG=${ACCELERATE_CONFIG:-recipes/accelerate/multi_node.yaml}
GPUS=${GPUS_PER_NODE:-8}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export HF_HUB_ENABLE_HF_TRANSFER=${HF_HUB_ENABLE_HF_TRANSFER:-0}
mkdir -p logs
srun --kill-on-bad-exit=1 bash -c "
  .venv/bin/accelerate launch --config_file $CONFIG \
    --num_machines $SLURM_NNODES --num_processes $((SLURM_NNODES * GPUS)) \
    --machine_rank \$SLURM_PROCID --main_process_ip $MAIN_IP --main_process_port 29500 \
    --rdzv_backend c10d \
    -m finetune run $RECIPE $*
"
