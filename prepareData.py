"""Convert interaction data into a LightGNN dataset (``<data_dir>/sparse_NAME/``, docs/method.md#data).

    python prepareData.py --input PATH [--test PATH] --format {lightgcn,recbole,csv,synthetic} \\
        --name NAME [--data_dir Datasets] [--kcore 3] [--min_rating R] [--split {random,time}] [--seed S]

Examples::

    # LightGCN train.txt/test.txt: the given split is kept, validation is carved from train
    python prepareData.py --format lightgcn --input gowalla/train.txt --test gowalla/test.txt --name gowalla
    # RecBole atomic file, ratings >= 4 as positives, split per user by time
    python prepareData.py --format recbole --input ml-100k/ml-100k.inter --name ml100k --min_rating 4 --split time
    # CSV/TSV (separator and header detected; or --sep/--header/--user_col/--item_col/...)
    python prepareData.py --format csv --input ratings.csv --name ml --min_rating 4
    # the embedded demo dataset (nothing to download)
    python prepareData.py --format synthetic --name demo

Pipeline: rating threshold -> dedupe (user, item) -> k-core (iterated; of the train file only when
``--test`` gives the split, whose test interactions are all kept) -> reindex -> split 70/5/25 -> ``trnMat.pkl``/``valMat.pkl``/``tstMat.pkl`` + ``idmap.json`` + ``stats.json``,
written atomically (see :mod:`Utils.data.Convert`). Errors in the input are reported as
``error: FILE:LINE: ...`` on stderr with exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from Utils.data.Convert import FORMATS, Options, prepare
from Utils.runtime.Errors import OneLineErrorParser, UserError, report_user_error


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="prepareData.py", description="Convert interaction data into Datasets/sparse_NAME/{trn,val,tst}Mat.pkl.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", metavar="PATH", help="interaction file (train.txt for --format lightgcn)")
    parser.add_argument("--test", metavar="PATH",
                        help="test file of a given split (kept as is; validation is carved from --input)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="input format")
    parser.add_argument("--name", required=True, help="dataset name: writes DATA_DIR/sparse_NAME/")
    parser.add_argument("--data_dir", default="./Datasets", metavar="DIR", help="where datasets live")
    parser.add_argument("--kcore", type=int, default=3, metavar="K",
                        help="keep users and items with >= K interactions, iterated until stable (0 disables); "
                             "with --test it counts and filters the train file only, the given test split is kept")
    parser.add_argument("--min_rating", type=float, default=None, metavar="R",
                        help="implicit feedback: keep interactions rated >= R (needs a rating column)")
    parser.add_argument("--split", choices=("random", "time"), default="random",
                        help="random per interaction, or per user by timestamp (earliest train, latest test)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing DATA_DIR/sparse_NAME/ (without it, an existing dataset is an error)")
    parser.add_argument("--seed", type=int, default=2025, help="seed of the split and of the synthetic data")
    parser.add_argument("--val_ratio", type=float, default=0.05, help="share of all interactions in validation")
    parser.add_argument("--test_ratio", type=float, default=0.25, help="share of all interactions in test")

    cols = parser.add_argument_group("columns (csv; recbole fields are found by name)")
    cols.add_argument("--sep", default=None, help="csv separator (one character, 'tab' or 'space'); sniffed if absent")
    cols.add_argument("--header", choices=("auto", "yes", "no"), default="auto", help="csv: is line 1 a header")
    for role, names in (("user", "user/userId/user_id/uid"), ("item", "item/itemId/item_id/movieId/asin"),
                        ("rating", "rating/score/stars"), ("time", "timestamp/time/ts")):
        cols.add_argument(f"--{role}_col", default=None, metavar="NAME|INDEX",
                          help=f"{role} column: header name or 0-based index ('none' to ignore); "
                               f"default: a column named {names}, else by position")

    syn = parser.add_argument_group("synthetic data (--format synthetic)")
    syn.add_argument("--n_users", type=int, default=3000)
    syn.add_argument("--n_items", type=int, default=2000)
    syn.add_argument("--n_groups", type=int, default=20, help="latent groups of users and items")
    syn.add_argument("--per_user", type=float, default=20.0, help="mean interactions per user")
    syn.add_argument("--in_group", type=float, default=0.8, help="share of a user's interactions in their group")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = prepare(Options(**vars(args)))
    except UserError as err:
        return report_user_error(err)
    for label, count in result.steps:
        print(f"  {label:<28} {count:>12,}")
    for note in result.notes:
        print(f"warning: {note}", file=sys.stderr)
    print(f"{'replaced' if result.replaced else 'wrote'} {result.directory}/ "
          f"({', '.join(sorted(os.listdir(result.directory)))})")
    print(result.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
