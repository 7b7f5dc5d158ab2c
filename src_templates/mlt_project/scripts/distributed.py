"""Print this node's rendezvous variables for docker/entrypoint.sh to eval.

    python -m mlt_project.scripts.distributed [--params params.yaml]

prints `export NAME=value` lines: nothing on a single machine, and MASTER_ADDR, MASTER_PORT and
NODE_RANK on each node of a multi-node AWS Batch job (deploy/aws/cluster.py maps Batch's variables).
"""

from __future__ import annotations

import os

from ..base import cli
from ..base.config import load_config
from ..deploy.aws.cluster import node_env, shell_exports


def main(argv: list[str] | None = None) -> int:
    args = cli.parser(__doc__).parse_args(argv)

    def run() -> None:
        num_nodes = load_config(args.params).training.num_nodes
        print(shell_exports(node_env(os.environ, num_nodes)), end="")

    return cli.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
