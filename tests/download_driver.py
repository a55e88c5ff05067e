"""Runs the archbench CLI against a stand-in for the official CIFAR-10 archive (download tests).

Usage: python download_driver.py MD5S.json archbench-args...
MD5S.json holds {"archive": md5, "batches": {name: md5}} of the stand-in archive, which a
local server on 127.0.0.1 serves at $ARCHBENCH_CIFAR10_URL. Only the expected checksums are
replaced; the download, its checks and everything after run as they do for a user.
"""

import dataclasses
import json
import sys

from archbench.cli import main
from archbench.data import datasets

md5s = json.loads(open(sys.argv[1]).read())
datasets.DATASETS["cifar10"] = dataclasses.replace(
    datasets.CIFAR10, archive_md5=md5s["archive"], file_md5=md5s["batches"]
)
sys.exit(main(sys.argv[2:]))
