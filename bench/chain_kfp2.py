"""The orchestration benchmark's pipeline for KFP v2, run with `kfp.local`'s SubprocessRunner.

Runs in bench/.venv-kfp2 (kfp 2.x cannot share the project's venv with kfp 1.8):
`python bench/chain_kfp2.py --root FOLDER --out RESULT.json`. Ten lightweight components, each
adding 1, passing outputs as parameters (KFP v2's own way). `install_kfp_package=False` and
`use_venv=False`: the steps run in this venv, which already has kfp, instead of pip-installing
kfp into a fresh venv at every step (KFP's default), which would only make KFP look slower.
"""
import argparse
import json
import time

from kfp import dsl, local

CHAIN_LENGTH = 10


@dsl.component(install_kfp_package=False)
def add_one(number: int) -> int:
    """The number plus one."""
    return number + 1


@dsl.pipeline(name="add-one-chain")
def add_one_chain(start: int = 0) -> int:
    """start + 1, ten times over."""
    link = add_one(number=start)
    for _ in range(CHAIN_LENGTH - 1):
        link = add_one(number=link.output)
    return link.output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="pipeline root (outputs go there)")
    parser.add_argument("--out", required=True, help="JSON file for the result")
    args = parser.parse_args()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=args.root)
    start = time.perf_counter()
    task = add_one_chain(start=0)
    seconds = time.perf_counter() - start
    with open(args.out, "w") as stream:
        json.dump({"value": task.output, "run_s": seconds}, stream)
