"""The orchestration benchmark's pipeline for kfp 1.8: ten lightweight components, each adding 1.

Step 1 takes the pipeline parameter `start` (0); steps 2-10 read the previous step's output
file (an `InputPath`), because kfp 1.8's LocalClient passes outputs between steps only as files
(it leaves `{{pipelineparam}}` placeholders of output parameters unresolved). The same function
is compiled with `dsl-compile` for `covertype run --local` and handed to
`kfp.run_pipeline_func_locally`, so both runners execute the same ten programs. Self-contained
(kfp only): `dsl-compile --py bench/chain_kfp1.py` imports it as a file.

`project_id` and `gcs_root` are unused: `covertype run --local` refuses a package without them
(it fills them in for every run) until the runner takes pipelines it has never seen.
"""
from kfp import dsl
from kfp.components import InputPath, func_to_container_op

CHAIN_LENGTH = 10
PIPELINE_NAME = "add-one-chain"


def add_one(number: int) -> int:
    """The first link: the parameter plus one."""
    return number + 1


def add_one_to_file(number_path: InputPath(int)) -> int:
    """Every other link: the previous link's output file plus one."""
    with open(number_path) as stream:
        return int(stream.read()) + 1


add_one_op = func_to_container_op(add_one, base_image="python:3.11-slim")
add_one_to_file_op = func_to_container_op(add_one_to_file, base_image="python:3.11-slim")


@dsl.pipeline(name=PIPELINE_NAME, description="ten trivial steps in a chain")
def add_one_chain(start: int = 0, project_id: str = "", gcs_root: str = ""):
    """start + 1, ten times over."""
    link = add_one_op(start)
    for _ in range(CHAIN_LENGTH - 1):
        link = add_one_to_file_op(link.output)
