"""Print pip's configured package sources (`pip config list`: index URLs, find-links, constraints) as uv
arguments, one per line, so that `uv pip install` reads the same wheels and caps as `pip install` here."""

import shlex
import subprocess
import sys

FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}

listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                        check=True).stdout
seen = set()
for line in listed.splitlines():
    key, _, value = line.partition("=")
    flag = FLAGS.get(key.rpartition(".")[2])
    for item in shlex.split(value)[0].split() if flag and value else []:
        if (flag, item) not in seen:
            seen.add((flag, item))
            print(flag)
            print(item)
