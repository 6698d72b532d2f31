"""The Kubeflow pipeline's commands (run in a dldc source checkout; ``components/`` and ``pipelines/`` are
not in the wheel or the image):

    python -m pipelines compile --out dldc.pipeline.yaml
    python -m pipelines submit --host https://kubeflow.example.com/pipeline [--param n_images=400]...
    python -m pipelines run-local --root kfp-local [--param dataset_uri=/data/rsicd]...

``DLDC_IMAGE_REPO`` / ``DLDC_IMAGE_TAG`` choose the images the tasks run (components/images.py),
``DLDC_TRACKING_SECRET`` the secret they read the MLflow server from, ``pipelines/resources.json``
where each task runs. ``submit`` compiles (or takes ``--package``) and starts a run through
``kfp.Client``, with the client's usual credentials (in-cluster service account, ``KF_PIPELINES_*``
variables, or the kube config).
"""

import argparse
import tempfile
from pathlib import Path

import yaml

from pipelines.dldc_pipeline import compile_pipeline


def parse_params(items: list[str]) -> dict:
    """``key=value`` pairs, values read as YAML scalars or lists (``select_ratios=[0.0, 0.2]``).

    Example:
        >>> parse_params(["n_images=40", "select_ratios=[0.0, 0.2]", "export_precision=fp32"])
        {'n_images': 40, 'select_ratios': [0.0, 0.2], 'export_precision': 'fp32'}
    """
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param {item!r}: expected key=value")
        params[key] = yaml.safe_load(value)
    return params


def submit(args: argparse.Namespace) -> str:
    """Start a run of the pipeline on a Kubeflow Pipelines server; returns the run id."""
    import kfp

    package = args.package
    if package is None:
        package = compile_pipeline(Path(tempfile.mkdtemp(prefix="dldc-pipeline-")) / "dldc.pipeline.yaml")
    client = kfp.Client(host=args.host, namespace=args.namespace)
    run = client.create_run_from_pipeline_package(
        str(package),
        arguments=parse_params(args.param),
        run_name=args.run_name,
        experiment_name=args.experiment,
        namespace=args.namespace,
        # None keeps each task's own setting (promote is never cached); True would override them all.
        enable_caching=False if args.no_cache else None,
    )
    return run.run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    compile_cmd = commands.add_parser("compile", help="compile the pipeline to IR YAML")
    compile_cmd.add_argument("--out", required=True, type=Path, help="IR YAML file to write")
    submit_cmd = commands.add_parser("submit", help="start a run on a Kubeflow Pipelines server")
    submit_cmd.add_argument("--host", required=True, help="the KFP API endpoint, e.g. https://HOST/pipeline")
    submit_cmd.add_argument("--namespace", default=None, help="the Kubeflow profile namespace (multi-user)")
    submit_cmd.add_argument("--experiment", default="dldc", help="experiment to file the run under [dldc]")
    submit_cmd.add_argument("--run-name", default=None, help="the run's name [KFP's default]")
    submit_cmd.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                            help="a pipeline parameter (repeatable), e.g. settings='[\"profile=paper\"]'")
    submit_cmd.add_argument("--package", type=Path, default=None, help="an already compiled pipeline [compile now]")
    submit_cmd.add_argument("--no-cache", action="store_true", help="run every task again (KFP's cache off)")
    local_cmd = commands.add_parser("run-local", help="run the pipeline here with kfp.local (no cluster)")
    local_cmd.add_argument("--root", required=True, type=Path, help="folder for the run's artifacts")
    local_cmd.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a pipeline parameter")
    args = parser.parse_args(argv)
    if args.command == "compile":
        print(f"wrote {compile_pipeline(args.out)}")
    elif args.command == "run-local":
        from pipelines import local

        local.init(args.root)
        local.run(**parse_params(args.param))
        print(f"finished; artifacts under {args.root}")
    else:
        print(f"started run {submit(args)} on {args.host}")


if __name__ == "__main__":
    main()
