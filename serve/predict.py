"""``mlp predict`` (also ``mlp-predict``): score a file of rows or a folder of images with a registry version.

    mlp predict --input rows.parquet --output scored/            # latest of the default registry
    mlp predict --serve.version champion --input s3://bucket/new/ --output s3://bucket/scored/

Runs on the cluster in ``RAY_ADDRESS`` (or a local one) with Ray Data (``serve.batch``);
prints Ray Data's progress, then the rows scored and rows/s.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from mlp.console import console_script, run_command
from mlp.options import make_parser, parse_config


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = make_parser(
        "mlp-predict",
        "Score new rows with a promoted model, across the cluster with Ray Data: a Parquet or CSV table\n"
        "(a file, folder, glob or URI) for a model trained on a table, a folder of PNG/JPEG images for an\n"
        "image model. Writes Parquet: the input's columns, prediction, class_name, probabilities.",
        sections=("serve", "registry"),
    )
    parser.add_argument("--input", required=True, metavar="PATH_OR_URI", help="the rows (or images) to score")
    parser.add_argument("--output", required=True, metavar="FOLDER_OR_URI", help="a new folder for the Parquet output")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="rows per model call (default 256)")
    cfg, args = parse_config(parser, argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mlp.distributed.trainer import init_ray
    from serve.batch import plan, run
    from serve.predictor import ModelSource

    def score() -> None:
        job = plan(ModelSource.from_config(cfg), args.input, args.output, cfg.serve.max_image_pixels)
        init_ray()
        done = run(job, args.batch_size)
        print(f"scored {done['rows']} rows with {done['version']} in {done['seconds']:.1f} s "
              f"({done['rows_per_s']:,.0f} rows/s): {done['output']}")

    return run_command(parser.prog, score)


cli = console_script(main)


if __name__ == "__main__":
    cli()
