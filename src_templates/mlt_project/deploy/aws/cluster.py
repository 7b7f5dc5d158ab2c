"""Which machine am I? AWS Batch's multi-node variables -> the rendezvous Lightning's DDP reads.

On each node of a multi-node parallel job: MASTER_ADDR, MASTER_PORT and NODE_RANK; nothing on a
single machine. Lightning's default cluster environment reads those three and takes the number
of machines from `training.num_nodes`, which must equal the number of nodes Batch started.
`python -m mlt_project.scripts.distributed` prints them for docker/entrypoint.sh.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from ...base.errors import PipelineError

NODE_INDEX = "AWS_BATCH_JOB_NODE_INDEX"
NUM_NODES = "AWS_BATCH_JOB_NUM_NODES"
MAIN_NODE_INDEX = "AWS_BATCH_JOB_MAIN_NODE_INDEX"
# Set by Batch on the child nodes only, not on the main node.
MAIN_NODE_ADDRESS = "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"
BATCH_VARIABLES = (NODE_INDEX, NUM_NODES, MAIN_NODE_INDEX)
DEFAULT_PORT = "29500"  # torch.distributed's usual port; set MASTER_PORT in the job to change it
SUBMIT_HINT = "python -m mlt_project.scripts.batch submit"


def node_env(environ: Mapping[str, str], num_nodes: int) -> dict[str, str]:
    """MASTER_ADDR, MASTER_PORT and NODE_RANK for this node; {} outside a multi-node job.

    Raises PipelineError when Batch's variables are partly set or disagree with num_nodes.
    """
    present = [name for name in BATCH_VARIABLES if name in environ]
    if not present:
        if num_nodes > 1:
            raise PipelineError(
                f"training.num_nodes is {num_nodes} but this is not a node of a multi-node Batch "
                f"job ({NUM_NODES} is not set): set training.num_nodes: 1 in params.yaml, or "
                f"submit the multi-node job with `{SUBMIT_HINT}`"
            )
        return {}
    missing = [name for name in BATCH_VARIABLES if name not in environ]
    if missing:
        raise PipelineError(
            f"multi-node variables partly set ({', '.join(missing)} missing): set all of "
            f"{', '.join(BATCH_VARIABLES)} (AWS Batch does on multi-node jobs) or none"
        )
    index, nodes, main = (_number(environ, name) for name in BATCH_VARIABLES)
    if nodes != num_nodes:
        raise PipelineError(
            f"Batch started {nodes} node(s) but training.num_nodes is {num_nodes}: set "
            f"training.num_nodes: {nodes} in params.yaml, or register and submit again with "
            f"`python -m mlt_project.scripts.batch register` (it takes numNodes from params.yaml)"
        )
    if not (index < nodes and main < nodes):
        raise PipelineError(
            f"{NODE_INDEX}={index} and {MAIN_NODE_INDEX}={main} must both be below "
            f"{NUM_NODES}={nodes}: fix the variables"
        )
    if index == main:
        # Rank 0 runs here, and its rendezvous store listens on every interface.
        address = environ.get(MAIN_NODE_ADDRESS, "127.0.0.1")
    elif MAIN_NODE_ADDRESS in environ:
        address = environ[MAIN_NODE_ADDRESS]
    else:
        raise PipelineError(
            f"{MAIN_NODE_ADDRESS} is not set on child node {index}: set it to the main node's "
            "private IPv4 address (AWS Batch does on multi-node jobs)"
        )
    port = environ.get("MASTER_PORT", DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise PipelineError(f"MASTER_PORT={port!r} is not a port number: set it to 1-65535")
    # Lightning's global rank 0 must be on the main node, whatever index Batch gave that node.
    return {"MASTER_ADDR": address, "MASTER_PORT": port, "NODE_RANK": str((index - main) % nodes)}


def _number(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    if not value.isdigit():
        raise PipelineError(f"{name}={value!r} is not a number: fix the variable")
    return int(value)


def shell_exports(env: Mapping[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
