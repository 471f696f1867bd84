"""Launcher: ``python tune.py ...`` or ``deepspeed [--num_gpus N] tune.py --ds_config ds_configs/z2.json ...``."""

import sys

from tsloss_harness.cli import main

if __name__ == "__main__":
    code = main(["tune", *sys.argv[1:]])
    # A rank that exits with its process group alive can abort at interpreter teardown: Gloo's worker
    # threads still hold work ("terminate called without an active exception", pytorch/pytorch#190489).
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(code)
