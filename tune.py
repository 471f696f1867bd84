"""Launcher: ``python tune.py ...`` or ``deepspeed [--num_gpus N] tune.py --ds_config ds_configs/z2.json ...``."""

import sys

from tsloss_harness.cli import run_as_process

if __name__ == "__main__":
    run_as_process(["tune", *sys.argv[1:]])
