"""`make upload`: upload a compiled package to KFP, as a new version when the name exists.

`kfp pipeline upload` fails when a pipeline of that name exists; this uploads the first
package as the pipeline and every later one as a new version of it (which KFP makes the
default version, so `make run` runs it). The same on a cluster and on `covertype serve`.

    python -m pipeline.kfp_upload --endpoint URL --name NAME [--version-name V] PACKAGE
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from pipeline.errors import one_line


def upload(client, package: str, name: str, version_name: str = "") -> str:
    """Upload `package` as pipeline `name`, or as a version of it; returns what was done.

    Args:
        client: a `kfp.Client` of the KFP endpoint.
        package: the compiled package (.yaml, .zip or .tar.gz).
        name: the pipeline's name.
        version_name: the new version's name (default: NAME-YYYYmmdd-HHMMSS, UTC).
    """
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(package, name)
        return f"Uploaded pipeline {name}: pipeline id {pipeline.id}"
    version_name = version_name or f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    version = client.upload_pipeline_version(package, version_name, pipeline_id=pipeline_id)
    return (f"Uploaded version {version.name} of pipeline {name}: version id {version.id}, "
            f"pipeline id {pipeline_id} (now its default version)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.kfp_upload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", required=True, help="the KFP API endpoint (host)")
    parser.add_argument("--name", required=True, help="the pipeline's name")
    parser.add_argument("--version-name", default="", help="name of a new version")
    parser.add_argument("package", help="the compiled pipeline package")
    args = parser.parse_args(argv)
    import kfp
    import kfp_server_api
    import urllib3

    try:
        print(upload(kfp.Client(host=args.endpoint), args.package, args.name,
                     args.version_name))
    except kfp_server_api.ApiException as error:
        print(f"error: KFP at {args.endpoint} refused the upload (HTTP {error.status}): "
              f"{_api_message(error)}", file=sys.stderr)
        return 1
    except (OSError, ValueError, urllib3.exceptions.HTTPError) as error:
        print(f"error: cannot upload to KFP at {args.endpoint}: {one_line(error)}",
              file=sys.stderr)
        return 1
    return 0


def _api_message(error) -> str:
    """The message of a KFP error body (grpc-gateway or upload server shape)."""
    try:
        body = json.loads(error.body or "")
    except ValueError:
        return one_line(error.body or error.reason or "")
    if not isinstance(body, dict):
        return one_line(str(body))
    return one_line(body.get("error_message") or body.get("error") or body.get("message")
                    or json.dumps(body))


if __name__ == "__main__":
    sys.exit(main())
