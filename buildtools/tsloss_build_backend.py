"""PEP 517 build backend: setuptools, plus one start-up file in the wheel's root.

lm-eval 0.4.13 discovers no plugins, so the model ``tsprompt`` must be registered in every Python
process that might run lm-eval. A ``.pth`` file in site-packages does that (``site`` executes its
``import`` line at start-up; ``tsloss_harness/_lm_eval_hook.py`` keeps that line cheap). setuptools
cannot place a file in site-packages itself, for regular or for editable (PEP 660) installs, so
this backend lets setuptools build the wheel and then adds ``tsloss_harness_lm_eval.pth`` at the
wheel's root, recording it in ``RECORD``; pip installs it with the package and removes it on
uninstall. Everything else is setuptools' own backend, unchanged.

The file name sorts after setuptools' ``__editable__.*.pth`` (site reads .pth files in sorted
order), so in editable installs the package is importable by the time this line runs.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every other hook unchanged)

PTH_NAME = "tsloss_harness_lm_eval.pth"
PTH_LINE = "import tsloss_harness._lm_eval_hook; tsloss_harness._lm_eval_hook.install()\n"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    add_file_to_wheel(os.path.join(wheel_directory, name), PTH_NAME, PTH_LINE.encode())
    return name


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    add_file_to_wheel(os.path.join(wheel_directory, name), PTH_NAME, PTH_LINE.encode())
    return name


def add_file_to_wheel(wheel_path: str, arcname: str, data: bytes) -> None:
    """Rewrite ``wheel_path`` with ``arcname`` added at its root and listed in ``*.dist-info/RECORD``."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    tmp_path = wheel_path + ".tmp"
    with zipfile.ZipFile(wheel_path) as src, zipfile.ZipFile(tmp_path, "w", zipfile.ZIP_DEFLATED) as dst:
        records = [n for n in src.namelist() if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise RuntimeError(f"{wheel_path}: expected one .dist-info/RECORD, found {len(records)}")
        for info in src.infolist():
            if info.filename == arcname:
                continue
            content = src.read(info.filename)
            if info.filename == records[0]:
                keep = [
                    line
                    for line in content.decode().splitlines()
                    if not line.startswith((f"{arcname},", f"{records[0]},"))
                ]
                lines = [*keep, f"{arcname},sha256={digest},{len(data)}", f"{records[0]},,"]
                content = ("\n".join(lines) + "\n").encode()
            dst.writestr(info, content)
        dst.writestr(zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    os.replace(tmp_path, wheel_path)
