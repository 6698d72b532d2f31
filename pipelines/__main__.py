"""``python -m pipelines compile --out dldc.pipeline.yaml``: the one way to compile the Kubeflow pipeline.

Run it in a dldc source checkout (``components/`` and ``pipelines/`` are not in the wheel or the
image); ``DLDC_IMAGE`` / ``DLDC_GPU_IMAGE`` choose the images the tasks run (components/images.py).
"""

import argparse
from pathlib import Path

from pipelines.dldc_pipeline import compile_pipeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    compile_cmd = commands.add_parser("compile", help="compile the pipeline to IR YAML")
    compile_cmd.add_argument("--out", required=True, type=Path, help="IR YAML file to write")
    args = parser.parse_args(argv)
    print(f"wrote {compile_pipeline(args.out)}")


if __name__ == "__main__":
    main()
