"""Launcher: ``python tune.py ...`` or ``deepspeed [--num_gpus N] tune.py --ds_config ds_configs/z2.json ...``."""

import sys

from tsloss_harness.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
