"""`transferability <stage>`: the one entry point that Snakemake rules and DVC stages call."""

from __future__ import annotations

import argparse
import errno
import signal
import sys

from transferability import params as params_mod
from transferability import runs, stages
from transferability.errors import UserError
from transferability.training.allocator import keep_freed_memory
from transferability.training.devices import usable_cores

DISK_ERRORS = {
    errno.ENOSPC: "free some space on that disk and run the stage again",
    errno.EDQUOT: "free some of your quota and run the stage again",
    errno.EROFS: "the file system is read-only: run from a writable copy of the project",
    errno.EACCES: "make the folder writable for this user, or run from a writable copy",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transferability", description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="cores this job uses: torch and BLAS threads, image-decoding processes (default: every "
                        "core this process may use; Snakemake passes the threads it gave the job, which "
                        "compute.threads asks for). Recorded in a network's metrics.json: it changes the last "
                        "bits of the float sums")
    sub = p.add_subparsers(dest="stage", required=True)
    sub.add_parser("check", help="validate the params file and exit")
    r = sub.add_parser("resolve", help="write the whole params a profile stands for (DVC reads params.yaml alone)")
    r.add_argument("--out", metavar="FILE", help="the file to write, atomically, e.g. params.yaml (default: print "
                   "it; a shell redirect onto params.yaml would empty it before it is read)")
    sub.add_parser("plan", help="list every network the params ask for")
    sub.add_parser("prepare", help="turn the dataset source into the store under data/prepared/")
    s = sub.add_parser("split", help="write class halves A and B of one split to data/splits/")
    s.add_argument("--split", required=True)
    s.add_argument("--lists", nargs="+", metavar="LIST",
                   help="instead: write the split as the study's list files, from ILSVRC-2012 lists 'FILE IDX' "
                        "(e.g. whole_valid_files.txt, shipped), to data/splits/lists/<split><half>/")
    t = sub.add_parser("train", help="train one network (a base or a transfer variant)")
    t.add_argument("--split", required=True)
    t.add_argument("--seed", type=int, required=True)
    t.add_argument("--variant", required=True, help="baseA, baseB, or XnY[-ft], e.g. AnB-ft")
    t.add_argument("--n", type=int, default=None, help="units copied, 1..L-1 (AlexNet: 1..7; transfer variants)")
    for stage, text in (("features", "dump every layer's activations of a trained network on a target"),
                        ("embed", "Full-Network Embedding, fc6/fc7 baselines and per-layer probes on a dump")):
        f = sub.add_parser(stage, help=text)
        f.add_argument("--split", required=True)
        f.add_argument("--seed", type=int, required=True)
        f.add_argument("--network", required=True, help="baseA, baseB, A3B-ft, ...")
        f.add_argument("--target", required=True, choices=["A", "B", "digits"])
    e = sub.add_parser("estimate", help="transferability estimators per layer on one replicate's feature dumps")
    e.add_argument("--split", required=True)
    e.add_argument("--seed", type=int, required=True)
    sub.add_parser("estimators", help="the estimators against the measured AnB / AnB+ curves, under reports/")
    sub.add_parser("report", help="tables, Figure 2, decomposition and HTML under reports/")
    return p


class Interrupted(BaseException):
    """Ctrl-C, or the SIGTERM with which Snakemake, Slurm and Kubernetes stop a job."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    keep_freed_memory()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    try:
        params = params_mod.load(args.params)
        if args.stage == "resolve":  # as the file says, before --threads sets this job's compute.threads
            if args.out:
                params_mod.write_resolved(params, args.params, args.out)
            else:
                sys.stdout.write(params_mod.resolved_text(params, args.params))
            return 0
        if args.threads is not None and args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        # what this job runs with, so the stages use it and a network's metrics.json records it
        params["compute"]["threads"] = args.threads or usable_cores()
        if args.stage == "check":
            print(f"{args.params}: valid; {len(runs.networks(params))} networks planned")
        elif args.stage == "plan":
            for net in runs.networks(params):
                print(f"{net.split}\tseed{net.seed}\t{net.name}\t{net.dir}")
        elif args.stage == "prepare":
            stages.prepare(params)
        elif args.stage == "split" and args.lists:
            stages.split_lists(params, args.split, args.lists)
        elif args.stage == "split":
            stages.split(params, args.split)
        elif args.stage == "train":
            stages.train_network(params, args.split, args.seed, args.variant, args.n)
        elif args.stage in ("features", "embed"):
            getattr(stages, args.stage)(params, args.split, args.seed, args.network, args.target)
        elif args.stage == "estimate":
            from transferability.estimators.prediction import estimate

            estimate(params, args.split, args.seed)
        elif args.stage == "estimators":
            from transferability.report.estimators import compare

            compare(params)
        elif args.stage == "report":
            from transferability.report.page import build_report

            build_report(params)
    except Interrupted as exc:
        print(f"interrupted ({signal.Signals(exc.signum).name}): the work so far is kept (finished epochs, "
              "shards and outputs); run the same command again to resume", file=sys.stderr)
        return 128 + exc.signum
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise
        where = exc.filename or "an output file"
        print(f"error: cannot write {where}: {exc.strerror}; {DISK_ERRORS[exc.errno]} "
              "(earlier outputs are untouched: every file is written to a temporary name first)", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
